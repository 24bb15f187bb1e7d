"""The benchmark scenarios: floatkey and its raw-MQTT baseline, one after the other.

Each takes the broker kind and its sizes, and returns a :class:`~bench.harness.Results`
with the figures, the baselines, the ratios against the targets of docs/PERFORMANCE.md,
and exactness checks (which the test suite's small-N smoke run asserts).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import TYPE_CHECKING

from bench.harness import (
    NAME,
    ORG,
    Environment,
    Results,
    Row,
    cpu_seconds,
    issue_key,
    percentile,
    rss_bytes,
    sampled,
    split,
)
from floatkey import protocol
from floatkey.agent import Agent
from floatkey.broker import BrokerOptions, connect
from floatkey.config import load_agent_config
from floatkey.envelope import open_envelope
from floatkey.signing import key_id, parse_public_key
from floatkeyd.admin_client import AdminSession

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

# Sizes of what the daemon actually sends and receives, for a fair baseline.
REQUEST_SIZE = 140
REPLY_SIZE = 420


async def _run_workers(
    env: Environment, role: str, spec: dict[str, object], total: int, procs: int
) -> list[dict[str, object]]:
    workers = [
        env.worker(role, {**spec, "count": n, "prefix": f"{spec['prefix']}{i}"})
        for i, n in enumerate(split(total, procs))
    ]
    for worker in workers:
        await worker.expect("ready")
    for worker in workers:
        worker.go()
    return [await worker.result() for worker in workers]


async def checkout(broker: str, agents: int = 100, rounds: int = 20, procs: int = 2) -> Results:
    """N agents each request and release a seat ``rounds`` times; vs a plain echo."""
    results = Results(broker)
    env = Environment(broker)
    try:
        env.start_daemon()
        await env.unlock(issue_key(seats=agents))
        spec = {"agent_config": str(env.agent_config()), "rounds": rounds, "prefix": "co"}
        reports = await _run_workers(env, "checkout-agents", spec, agents, procs)
        latencies = [x for r in reports for x in r["latencies"]]  # type: ignore[attr-defined]
        granted = sum(r["granted"] for r in reports)  # type: ignore[misc]
        elapsed = max(r["elapsed"] for r in reports)  # type: ignore[type-var]

        echo = {
            "broker": env.broker_spec(),
            "root": f"floatkey/echo{time.time_ns()}",
            "prefix": "eco",
            "request_size": REQUEST_SIZE,
            "reply_size": REPLY_SIZE,
            "rounds": rounds,
        }
        responder = env.worker("echo-responder", {**echo, "prefix": "ecr"})
        await responder.expect("ready")
        baseline = await _run_workers(env, "echo-clients", echo, agents, procs)
        responder.stop()
        base_lat = [x for r in baseline for x in r["latencies"]]  # type: ignore[attr-defined]
        base_elapsed = max(r["elapsed"] for r in baseline)  # type: ignore[type-var]
    finally:
        env.close()
    p50, b50 = percentile(latencies, 0.5) * 1000, percentile(base_lat, 0.5) * 1000
    p99, b99 = percentile(latencies, 0.99) * 1000, percentile(base_lat, 0.99) * 1000
    results.rows += [
        Row(
            "checkout",
            "grant latency p50",
            p50,
            b50,
            "ms",
            "≤ 2.0×",
            p50 <= 2 * b50,
            lambda f, b: b is not None and f <= 2 * b,
        ),
        Row(
            "checkout",
            "grant latency p99",
            p99,
            b99,
            "ms",
            "≤ 3.0×",
            p99 <= 3 * b99,
            lambda f, b: b is not None and f <= 3 * b,
        ),
        Row("checkout", "grants per second", granted / elapsed, len(base_lat) / base_elapsed, "/s"),
    ]
    results.checks[f"checkout: {agents}×{rounds} requests, every one granted"] = (
        granted == agents * rounds == len(latencies)
    )
    return results


async def storm(
    broker: str,
    agents: int = 1000,
    procs: int = 2,
    seat_counts: tuple[int, ...] = (1000, 500),
    after: Callable[[Environment, dict[str, int]], Awaitable[None]] | None = None,
) -> Results:
    """N agents start at once against S seats; vs N plain clients doing one echo at once.

    Then the daemon's usage history must tell the peak and the denials the agents saw;
    ``after`` (for a test) gets the environment and those true figures before it closes.
    """
    results = Results(broker)
    env = Environment(broker)
    began = protocol.now_ms()
    truth = {"peak": 0, "denied": 0, "grants": 0, "demand": 0}
    try:
        env.start_daemon()
        config = str(env.agent_config())
        for round_number, seats in enumerate(seat_counts):
            await env.unlock(issue_key(seats=seats))
            spec = {"agent_config": config, "prefix": f"st{round_number}-"}
            workers = [
                env.worker("storm-agents", {**spec, "count": n, "prefix": f"{spec['prefix']}{i}"})
                for i, n in enumerate(split(agents, procs))
            ]
            for worker in workers:
                await worker.expect("ready")
            for worker in workers:
                worker.go()
            for worker in workers:
                await worker.expect("answered")
            in_use = (await env.status()).seats_in_use
            for worker in workers:
                worker.go()
            reports = [await worker.result() for worker in workers]
            started = min(r["started"] for r in reports)  # type: ignore[type-var]
            answered = [x for r in reports for x in r["answered"]]  # type: ignore[attr-defined]
            span = max(answered) - started
            granted = sum(r["granted"] for r in reports)  # type: ignore[misc]
            denied = sum(r["denied"] for r in reports)  # type: ignore[misc]
            expected = min(seats, agents)
            results.checks[
                f"storm {agents} agents / {seats} seats: {expected} granted, "
                f"{agents - expected} denied"
            ] = granted == expected == in_use and denied == agents - expected
            truth["peak"] = max(truth["peak"], granted)
            truth["denied"] += denied
            truth["grants"] += granted
            truth["demand"] = max(truth["demand"], granted + denied)  # all asked at once
            results.rows.append(
                Row("storm", f"{agents} agents / {seats} seats: all answered", span, None, "s")
            )
            results.rows.append(
                Row("storm", f"{seats} seats: answers per second", agents / span, None, "/s")
            )
            # Wait until the seats are back before the next round.
            deadline = time.monotonic() + 30
            while (await env.status()).seats_in_use and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
        await _check_usage(env, results, began, truth)
        if after is not None:
            await after(env, truth)

        echo = {
            "broker": env.broker_spec(),
            "root": f"floatkey/echo{time.time_ns()}",
            "prefix": "ess",
            "request_size": REQUEST_SIZE,
            "reply_size": REPLY_SIZE,
        }
        responder = env.worker("echo-responder", {**echo, "prefix": "esr"})
        await responder.expect("ready")
        workers = [
            env.worker("echo-storm", {**echo, "count": n, "prefix": f"ess{i}"})
            for i, n in enumerate(split(agents, procs))
        ]
        for worker in workers:
            await worker.expect("ready")
        for worker in workers:
            worker.go()
        for worker in workers:
            await worker.expect("answered")
        for worker in workers:
            worker.go()
        reports = [await worker.result() for worker in workers]
        responder.stop()
    finally:
        env.close()
    started = min(r["started"] for r in reports)  # type: ignore[type-var]
    base_span = max(x for r in reports for x in r["answered"]) - started  # type: ignore[attr-defined]
    base_rate = agents / base_span
    for row in results.rows:
        if row.unit == "/s":
            row.baseline, row.target = base_rate, "≥ 0.5×"
            row.passed = row.floatkey >= 0.5 * base_rate
            row.rule = lambda f, b: b is not None and f >= 0.5 * b
        else:
            row.baseline = base_span
    return results


async def _check_usage(
    env: Environment, results: Results, began: int, truth: dict[str, int]
) -> None:
    """The usage history (``admin.usage``) tells what the agents saw, exactly."""
    answer = await env.admin(
        protocol.AdminUsage(request_id=AdminSession.request_id(), since=began, bucket="hour")
    )
    summary = answer.usage.summary if answer.usage else None
    results.checks[
        f"storm: the usage history says peak {truth['peak']}, {truth['grants']} grants, "
        f"{truth['denied']} denied, {truth['demand']} seats would have served all"
    ] = summary is not None and (
        summary.peak,
        summary.grants,
        summary.denials.get("seats_exhausted", 0),
        summary.would_serve,
    ) == (truth["peak"], truth["grants"], truth["denied"], truth["demand"])


async def unlock(broker: str, agents: int = 1000, procs: int = 2) -> Results:
    """N connected agents; an unlock; when all are informed and all seats released."""
    results = Results(broker)
    env = Environment(broker)
    try:
        env.start_daemon()
        await env.unlock(issue_key(seats=agents))
        spec = {"agent_config": str(env.agent_config()), "prefix": "un"}
        workers = [
            env.worker("unlock-agents", {**spec, "count": n, "prefix": f"un{i}"})
            for i, n in enumerate(split(agents, procs))
        ]
        seated = sum([(await w.expect("ready"))["seated"] for w in workers])
        new_key = issue_key(seats=agents, features="dataflow,workflow")
        watch_options = BrokerOptions(**env.broker_spec())
        async with (
            env.session() as session,
            connect(watch_options, identifier="event-watch", base=Path.cwd()) as watcher,
        ):
            # A plain subscriber of the events topic: when the daemon had published.
            await watcher.subscribe(env.server.topics.events, qos=1)
            await session.unlock_key()  # asked before the clock starts, as a console would
            started = time.time()
            result = await session.send(
                protocol.AdminUnlock(
                    request_id=session.request_id(), name=NAME, organization=ORG, key=new_key
                )
            )
            await anext(aiter(watcher.messages))
            published = time.time() - started
        reports = [await w.result() for w in workers]
        informed = [x for r in reports for x in r["informed"]]
        released = [x for r in reports for x in r["released"]]
        deadline = time.monotonic() + 30
        while (await env.status()).awaiting_release and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        awaiting = (await env.status()).awaiting_release

        topic = f"floatkey/fanout{time.time_ns()}"
        spec = {"broker": env.broker_spec(), "topic": topic, "prefix": "fo"}
        subscribers = [
            env.worker("fanout-subscribers", {**spec, "count": n, "prefix": f"fo{i}"})
            for i, n in enumerate(split(agents, procs))
        ]
        for worker in subscribers:
            await worker.expect("ready")
        async with connect(
            BrokerOptions(**env.broker_spec()), identifier="fanout-pub", base=Path.cwd()
        ) as publisher:
            fan_started = time.time()
            await publisher.publish(topic, b"x" * 300, qos=1)
        fan = [x for w in subscribers for x in (await w.result())["received"]]
    finally:
        env.close()
    told = result.unlock.clients_told if result.unlock else -1
    t_informed = max(informed) - started
    t_released = max(released) - started
    t_fan = max(fan) - fan_started
    results.rows += [
        Row("unlock", "event published (one plain subscriber)", published * 1000, None, "ms"),
        Row(
            "unlock",
            f"{agents} agents informed",
            t_informed * 1000,
            t_fan * 1000,
            "ms",
            "≤ 1.5× + 50 ms",
            t_informed <= 1.5 * t_fan + 0.05,
            lambda f, b: b is not None and f <= 1.5 * b + 50,
        ),
        Row(
            "unlock",
            f"{agents} seats released",
            t_released * 1000,
            t_fan * 1000,
            "ms",
            "≤ 3×",
            t_released <= 3 * t_fan,
            lambda f, b: b is not None and f <= 3 * b,
        ),
    ]
    results.checks[f"unlock: {agents} seated, {agents} told, informed and released"] = (
        seated == agents == told == len(informed) == len(released) and awaiting == 0
    )
    return results


async def _lease_load(
    env: Environment,
    action: str,
    tokens: dict[str, str],
    count: int,
    *,
    topics: protocol.Topics | None = None,
    server_key: Ed25519PublicKey | None = None,
    ends: dict[str, int] | None = None,
) -> int:
    """Send ``count`` seat requests (or renewals of ``tokens``) over one raw connection;
    return how many were answered positively. Fills ``tokens`` from the grants, and
    ``ends`` (if given) with each lease's end as the last reply said.

    One connection speaks for all ``count`` clients (the seat topic names the client, and
    the daemon's own broker login may write every one), so 50,000 leases need no 50,000
    connections. With ``topics`` (another root) and ``server_key`` the renewals go to the
    signing responder of the baseline instead; its replies are verified and decoded alike.
    """
    topics = topics or env.server.topics
    key = server_key or env.server.server_key()
    trusted = {key_id(key): key}
    ok = 0
    async with connect(
        BrokerOptions(**env.broker_spec()),
        identifier=f"loader-{action}-{time.time_ns()}",
        base=Path.cwd(),
        max_queued_incoming=100_000,
        max_in_flight=1_000,  # a window of 500 requests in flight is the point
    ) as client:
        await client.subscribe(f"{topics.root}/clients/+", qos=1)
        ids = [f"lease-{i}" for i in range(count)]
        window = 500  # requests in flight at once, like many agents at once

        async def send() -> None:
            for start in range(0, count, window):
                batch = ids[start : start + window]
                await asyncio.gather(
                    *(
                        client.publish(
                            topics.seat(c, "request" if action == "request" else "renew"),
                            protocol.encode(
                                protocol.SeatRequest(client=c, nonce=c)
                                if action == "request"
                                else protocol.SeatRenew(client=c, lease=tokens[c])
                            ),
                            qos=1,
                        )
                        for c in batch
                    )
                )
                while answered < start:  # keep at most two windows outstanding
                    await asyncio.sleep(0.005)

        answered = 0
        sender = asyncio.create_task(send())
        async with asyncio.timeout(600):
            async for message in client.messages:
                answered += 1
                topic = message.topic.value
                reply = protocol.decode_to_client(
                    open_envelope(bytes(message.payload), topic, trusted)
                )
                if isinstance(reply, protocol.SeatGranted | protocol.SeatRenewed):
                    client_id = topic.rsplit("/", 1)[-1]
                    if isinstance(reply, protocol.SeatGranted):
                        tokens[client_id] = reply.lease
                    if ends is not None:
                        ends[client_id] = reply.expires_at
                    ok += 1
                if answered == count:
                    break
        await sender
    return ok


async def _signing_baseline(env: Environment, count: int) -> tuple[float, int]:
    """The renewal-cost baseline: as many renewals, answered by a bare signing responder.

    Run first, while the daemon holds no lease (the tokens are of a real token's size).
    Returns its CPU seconds per message, and how many were answered.
    """
    topics = protocol.Topics("floatkey", f"sign{time.time_ns()}")
    tokens = {f"lease-{i}": f"{i:043d}" for i in range(count)}
    responder = env.worker(
        "signing-responder",
        {
            "broker": env.broker_spec(),
            "root": topics.root,
            "prefix": "sig",
            "lease_ms": int(_DEFAULT_RENEW_S * 3 * 1000),
        },
    )
    ready = await responder.expect("ready")
    pid, key = ready["pid"], parse_public_key(ready["public_key"])
    with sampled(pid, "baseline-renew"):
        before = cpu_seconds(pid)
        answered = await _lease_load(env, "renew", tokens, count, topics=topics, server_key=key)
        await asyncio.sleep(0.5)  # as for the daemon: what it does after the last reply counts
    per_message = (cpu_seconds(pid) - before) / max(answered, 1)
    responder.stop()
    return per_message, answered


#: The default lease (``lease_seconds``): an agent renews every third of it.
_DEFAULT_RENEW_S = 120 / 3


async def scale(broker: str, leases: int = 50_000) -> Results:
    """The daemon holding N renewing leases: memory, CPU per renewal against a bare
    signing responder (the baseline, measured first), time to READY, the leases restored
    exactly (each lease's end before and after a clean restart)."""
    results = Results(broker)
    env = Environment(broker)
    try:
        env.start_daemon()
        await env.unlock(issue_key(seats=min(leases, 100_000)))
        await asyncio.sleep(0.5)
        rss_empty = rss_bytes(env.daemon_pid)
        # First: the daemon holds nothing yet, so the baseline shares the machine with an
        # idle daemon, not one holding N leases.
        base_cpu, base_answered = await _signing_baseline(env, leases)
        tokens: dict[str, str] = {}
        granted = await _lease_load(env, "request", tokens, leases)
        await asyncio.sleep(1)  # the write-behind flush
        rss_full = rss_bytes(env.daemon_pid)
        ends: dict[str, int] = {}
        with sampled(env.daemon_pid, "daemon-renew"):
            cpu_before = cpu_seconds(env.daemon_pid)
            renewed = await _lease_load(env, "renew", tokens, leases, ends=ends)
            await asyncio.sleep(0.5)  # the write-behind flush, if any, counts too
            cpu_per_renewal = (cpu_seconds(env.daemon_pid) - cpu_before) / max(renewed, 1)
        rss_renewed = rss_bytes(env.daemon_pid)
        in_use = (await env.status()).seats_in_use
        env.server.processes[-1].stop(10)
        started = time.monotonic()
        env.start_daemon()
        ready = time.monotonic() - started
        restored = (await env.status()).seats_in_use
        # Restored exactly: each lease's end as the daemon reads it back (its rows after
        # the start, which rewrites any row it extends) is the end its last reply said.
        with contextlib.closing(env.server.db()) as db:
            stored_ends = dict(db.execute("SELECT client, expires_at FROM leases"))
        exact = stored_ends == ends
        renewed_after = await _lease_load(env, "renew", tokens, leases)
    finally:
        env.close()
    per_lease = (rss_full - rss_empty) / max(leases, 1)
    share = leases / _DEFAULT_RENEW_S * cpu_per_renewal
    results.rows += [
        Row(
            "scale",
            f"daemon RSS with {leases} leases",
            rss_full / 2**20,
            None,
            "MiB",
            "≤ 150 MiB",
            rss_full <= 150 * 2**20,
            lambda f, _: f <= 150,
        ),
        Row(
            "scale",
            "RSS per lease",
            per_lease / 1024,
            None,
            "KiB",
            "≤ 2 KiB",
            per_lease <= 2048,
            lambda f, _: f <= 2,
        ),
        Row(
            "scale",
            f"daemon RSS after renewing {leases} leases",
            rss_renewed / 2**20,
            None,
            "MiB",
            "≤ 150 MiB",
            rss_renewed <= 150 * 2**20,
            lambda f, _: f <= 150,
        ),
        Row(
            "scale",
            "CPU per renewal (baseline: a bare responder sealing each reply)",
            cpu_per_renewal * 1e6,
            base_cpu * 1e6,
            "µs",
            "≤ 1.5×",
            cpu_per_renewal <= 1.5 * base_cpu,
            lambda f, b: b is not None and f <= 1.5 * b,
        ),
        Row(
            "scale",
            f"one core's share for {leases} agents renewing every {_DEFAULT_RENEW_S:g} s "
            "(extrapolated from the burst)",
            share * 100,
            None,
            "%",
            "≤ 50 %",
            share <= 0.5,
            lambda f, _: f <= 50,
        ),
        Row(
            "scale",
            f"start to READY with {leases} leases stored",
            ready * 1000,
            None,
            "ms",
            "≤ 2000 ms",
            ready <= 2.0,
            lambda f, _: f <= 2000,
        ),
    ]
    results.checks[f"scale: {leases} granted, renewed, held, restored and renewed again"] = (
        granted == renewed == in_use == restored == renewed_after == leases
    )
    results.checks[f"scale: each of the {leases} leases restored to its exact end"] = exact
    results.checks[f"scale: the baseline answered all {leases} renewals"] = base_answered == leases
    return results


async def _flood(env: Environment, flowing: asyncio.Event, stop: asyncio.Event) -> int:
    """One client sends seat requests as fast as the broker takes them, until ``stop``."""
    topic = env.server.topics.for_login("floatkey-agent").seat("flooder", "request")
    sent = 0
    async with connect(
        env.server.broker("floatkey-agent"), identifier="flooder", base=Path.cwd()
    ) as client:
        while not stop.is_set():
            await asyncio.gather(
                *(
                    client.publish(
                        topic,
                        protocol.encode(
                            protocol.SeatRequest(client="flooder", nonce=str(sent + i))
                        ),
                        qos=0,
                    )
                    for i in range(200)
                )
            )
            sent += 200
            flowing.set()
            await asyncio.sleep(0)  # let the coordinator read its workers
    return sent


async def flood(broker: str, agents: int = 50) -> Results:
    """N agents start at once while one client floods seat requests; vs the same start alone.

    The daemon runs with its default per-client rate limit, as in production.
    """
    results = Results(broker)
    env = Environment(broker, max_requests_per_client=None)
    spans: dict[bool, float] = {}
    seated: dict[bool, int] = {}
    rate = 0.0
    try:
        env.start_daemon()
        # One seat more than the agents: the flooder's first request is granted too.
        await env.unlock(issue_key(seats=agents + 1))
        config = str(env.agent_config())
        limited_before = (await env.status()).dropped.get("rate_limited", 0)
        for flooding in (False, True):
            worker = env.worker(
                "storm-agents",
                {"agent_config": config, "count": agents, "prefix": f"fl{int(flooding)}-"},
            )
            await worker.expect("ready")
            flowing, stop = asyncio.Event(), asyncio.Event()
            flooder = asyncio.create_task(_flood(env, flowing, stop)) if flooding else None
            if flooder is not None:
                await flowing.wait()
                flood_started = time.monotonic()
            worker.go()
            await worker.expect("answered")
            if flooder is not None:
                stop.set()
                rate = await flooder / (time.monotonic() - flood_started)
            worker.go()
            report = await worker.result()
            spans[flooding] = max(report["answered"]) - report["started"]
            seated[flooding] = report["granted"]
            # The agents released their seats on leaving; wait until they are back.
            deadline = time.monotonic() + 30
            while (await env.status()).seats_in_use > int(flooding) and (
                time.monotonic() < deadline
            ):
                await asyncio.sleep(0.2)
        limited = (await env.status()).dropped.get("rate_limited", 0) - limited_before
    finally:
        env.close()
    results.rows += [
        Row(
            "flood",
            f"{agents} agents starting at once, all answered during a flood "
            "(baseline: without the flood)",
            spans[True],
            spans[False],
            "s",
            "≤ 2 s",
            spans[True] <= 2.0,
            lambda f, _: f <= 2.0,
        ),
        Row("flood", "flood: seat requests sent by one client", rate, None, "/s"),
    ]
    results.checks[f"flood: all {agents} agents seated during the flood, and without"] = (
        seated[True] == seated[False] == agents
    )
    results.checks["flood: the flooder's requests were refused by the rate limit"] = limited > 0
    return results


async def queue_wake(broker: str, seats: int = 50) -> Results:
    """S seats held, S agents queued; each release wakes the next in line. Vs an echo.

    The time from a holder's release to the head of the queue's grant: a release to the
    daemon and a grant from it, two hops through the broker, like one plain MQTT request
    and response (the baseline, one client, ``seats`` round trips one after the other).
    """
    results = Results(broker)
    env = Environment(broker)
    granted: dict[str, float] = {}
    woken: dict[str, asyncio.Event] = {}
    order: list[str] = []
    latencies: list[float] = []
    try:
        env.start_daemon()
        await env.unlock(issue_key(seats=seats))
        config = load_agent_config(env.agent_config())

        def agent(name: str) -> Agent:
            made = Agent(config, app="bench", client_id=name, wait_for_seat=True)

            def took(_seat: object) -> None:
                if name not in granted:
                    granted[name] = time.perf_counter()
                    order.append(name)
                    woken.setdefault(name, asyncio.Event()).set()

            made.on_lease_change(took)
            return made

        async with contextlib.AsyncExitStack() as stack:
            holders = [await stack.enter_async_context(agent(f"qh{i}")) for i in range(seats)]
            # One after the other, so that the order of the line is known.
            waiters = [await stack.enter_async_context(agent(f"qw{i}")) for i in range(seats)]
            queued = all(w.queued is not None and not w.has_seat for w in waiters)
            for holder, waiter in zip(holders, waiters, strict=True):
                started = time.perf_counter()
                await holder.release()
                async with asyncio.timeout(30):
                    await woken.setdefault(waiter.client_id, asyncio.Event()).wait()
                latencies.append(granted[waiter.client_id] - started)

        echo = {
            "broker": env.broker_spec(),
            "root": f"floatkey/echo{time.time_ns()}",
            "prefix": "eqw",
            "request_size": REQUEST_SIZE,
            "reply_size": REPLY_SIZE,
            "rounds": seats,
        }
        responder = env.worker("echo-responder", {**echo, "prefix": "eqr"})
        await responder.expect("ready")
        baseline = await _run_workers(env, "echo-clients", echo, 1, 1)
        responder.stop()
        base_lat = [x for r in baseline for x in r["latencies"]]  # type: ignore[attr-defined]
    finally:
        env.close()
    p50, b50 = percentile(latencies, 0.5) * 1000, percentile(base_lat, 0.5) * 1000
    results.rows.append(
        Row(
            "queue_wake",
            "release to the next in line's grant p50",
            p50,
            b50,
            "ms",
            "≤ 2.0×",
            p50 <= 2 * b50,
            lambda f, b: b is not None and f <= 2 * b,
        )
    )
    waiter_names = [f"qw{i}" for i in range(seats)]
    results.checks[f"queue_wake: {seats} held, {seats} queued, woken in their order"] = (
        queued and order == [f"qh{i}" for i in range(seats)] + waiter_names
    )
    return results


SCENARIOS = {
    "checkout": checkout,
    "storm": storm,
    "unlock": unlock,
    "scale": scale,
    "flood": flood,
    "queue_wake": queue_wake,
}
