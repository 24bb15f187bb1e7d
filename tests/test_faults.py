"""Faults injected for real: fuzzed payloads, hostile clients, broker outages, crashes, soak.

Everything here runs against real brokers and real processes. The long versions sit
behind ``FLOATKEY_SLOW=1`` (a 10-minute soak); a short version of each always runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import signal
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import aiomqtt
import msgspec
import pytest
from bench.harness import rss_bytes as rss
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from conftest import command
from floatkey import protocol
from floatkey.envelope import Signer
from floatkey.signing import load_private_key
from licensing import NAME, ORG, issue, unlock
from servers import (
    answering,
    clients,
    daemon_report,
    eventually,
    free_port,
    make_agent,
    raw_client,
    read_retained,
    read_state,
    status,
    write_agent_config,
)

pytestmark = pytest.mark.broker
CONFIG = Path(__file__).resolve().parent.parent / "config"
SLOW = os.environ.get("FLOATKEY_SLOW") == "1"


def fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


# --- bad input ----------------------------------------------------------------------------


def hostile_payloads(rng: random.Random, topic: str, count: int, *, oversized: bool):  # noqa: C901
    """``count`` payloads a receiver on ``topic`` must survive and refuse."""
    stranger = Signer(Ed25519PrivateKey.generate())
    admin = Signer(load_private_key(CONFIG / "dev-admin.key"))
    genuine_body = protocol.encode(protocol.AdminStatus(request_id="fuzz"))
    kinds = [
        "bytes",
        "truncated",
        "nested",
        "types",
        "schema",
        "stranger",
        "version",
        "moved",
        "unicode",
    ]
    for i in range(count):
        kind = kinds[i % len(kinds)]
        if oversized and i % 2500 == 0:
            yield b"{" * (rng.randint(1, 4) * 1024 * 1024)  # several MB
        elif kind == "bytes":
            yield rng.randbytes(rng.randint(0, 2000))
        elif kind == "truncated":
            whole = admin.seal(topic, genuine_body)
            yield whole[: rng.randint(0, len(whole) - 1)]
        elif kind == "nested":
            depth = rng.randint(100, 5000)
            yield b"[" * depth + b"]" * depth
        elif kind == "types":
            yield json.dumps(
                {"type": "seat.request", "client": rng.randint(0, 9), "nonce": [], "ts": "now"}
            ).encode()
        elif kind == "schema":
            yield json.dumps({"hello": "world", "n": rng.random()}).encode()
        elif kind == "stranger":
            yield stranger.seal(topic, genuine_body)
        elif kind == "version":
            envelope = json.loads(admin.seal(topic, genuine_body))
            envelope["v"] = rng.choice([0, 2, 99, -1])
            yield json.dumps(envelope).encode()
        elif kind == "moved":
            yield admin.seal(topic + "/elsewhere", genuine_body)
        else:
            yield b'{"type": "seat.request", "client": "\xff\xfe"}'


@pytest.mark.parametrize("kind", ["mosquitto", "embedded"])
async def test_the_daemon_survives_10000_hostile_payloads_and_changes_nothing(
    server_factory,
    kind,
):
    server = server_factory(kind)
    daemon = server.start_daemon()
    assert unlock(server, issue(seats=3)).returncode == 0
    before = status(server)
    before_db = server.snapshot()
    rss_before = rss(daemon.process.pid)
    rng = random.Random(20261128)
    topics = server.topics
    targets = [
        topics.admin_request,
        topics.seat("fuzzer", "request"),
        topics.seat("fuzzer", "renew"),
        topics.seat("fuzzer", "release"),
        topics.state,
        topics.identity,
    ]
    sent = 0
    async with raw_client(server, "floatkeyd", "fuzzer") as client:
        for topic in targets:
            # Oversized payloads only through the embedded broker: Mosquitto (shipped
            # max_packet_size 256 KiB) cuts the sender off first, which is its job.
            for payload in hostile_payloads(rng, topic, 1700, oversized=kind == "embedded"):
                await client.publish(topic, payload, qos=0)
                sent += 1
                if sent % 500 == 0:
                    await asyncio.sleep(0.05)  # let a slow broker keep up
        await client.publish(topics.admin_request, b"marker", qos=1)
    assert sent >= 10_000

    # The topics are handled in no fixed order: wait until nearly all are counted.
    after = await eventually(
        lambda: sum((s := status(server))["dropped"].values()) >= 0.9 * sent and s, within=60
    )
    assert daemon.process.poll() is None
    for field in ("status", "generation", "license", "seats_in_use"):
        assert after[field] == before[field], field
    assert server.snapshot()["licenses"] == before_db["licenses"]
    assert server.snapshot()["meta"] == before_db["meta"]
    dropped = sum(after["dropped"].values())
    assert dropped >= 0.9 * sent, json.dumps(after["dropped"])
    assert after["dropped"].get("bad_body", 0) > 1000
    if kind == "embedded":
        assert after["dropped"].get("oversized", 0) >= 1
    assert rss(daemon.process.pid) - rss_before < 64 * 2**20
    assert "message dropped" in daemon.log()
    # ...and the retained state is still the daemon's own.
    assert (await read_state(server)).generation == before["generation"]
    assert daemon.stop() == 0


async def test_an_agent_survives_10000_hostile_payloads(server_factory, tmp_path):
    server = server_factory("mosquitto")
    server.start_daemon()
    assert unlock(server, issue()).returncode == 0
    async with make_agent(server, tmp_path, "sturdy") as agent:
        generation = agent.generation
        rng = random.Random(7)
        topics = [server.topics.events, server.topics.client(agent.client_id)]
        sent = 0
        async with raw_client(server, "floatkeyd", "agent-fuzzer") as client:
            for topic in topics:
                for payload in hostile_payloads(rng, topic, 4000, oversized=False):
                    await client.publish(topic, payload, qos=0)
                    sent += 1
        # The retained topics the agent reads at connect, through the same receive path.
        for topic in (server.topics.state, server.topics.identity):
            for payload in hostile_payloads(rng, topic, 1000, oversized=False):
                agent._handle(topic, payload)
                sent += 1
        assert sent >= 10_000
        await eventually(lambda: sum(agent.drops.values()) >= 0.9 * sent, within=60)
        assert agent.has_seat
        assert agent.generation == generation
        assert not agent.shutdown_requested.is_set()
        assert agent.is_enabled("dataflow")


# --- hostile clients ----------------------------------------------------------------


async def test_the_shipped_acl_confines_each_client_to_its_own_topics(server_factory, tmp_path):
    server = server_factory("mosquitto")
    server.start_daemon()
    assert unlock(server, issue(seats=2)).returncode == 0
    topics = server.topics
    as_agent = topics.for_login("floatkey-agent")  # the seat topics of mallory's login
    async with (
        make_agent(server, tmp_path, "victim") as victim,
        raw_client(server, "floatkeyd", "observer") as observer,
        raw_client(server, "floatkey-agent", "mallory") as mallory,
    ):
        await observer.subscribe(f"{topics.root}/#", qos=1)
        seen: list[str] = []

        async def watch() -> None:
            async for message in observer.messages:
                # Retained copies (identity, state) come with the subscription: not news.
                if not message.retain:
                    seen.append(message.topic.value)  # noqa: PERF401 - a live record

        watcher = asyncio.create_task(watch())
        # ...and may not read another client's replies; its own, it may.
        await mallory.subscribe(topics.client(victim.client_id), qos=1)
        await mallory.subscribe(topics.client("mallory"), qos=1)
        # Mallory may speak only as 'mallory': everything else is dropped by the broker.
        forged = protocol.encode(protocol.SeatRelease(client=victim.client_id))
        await mallory.publish(as_agent.seat(victim.client_id, "release"), forged, qos=1)
        await mallory.publish(
            as_agent.seat(victim.client_id, "request"),
            protocol.encode(protocol.SeatRequest(client=victim.client_id, nonce="x")),
            qos=1,
        )
        await mallory.publish(topics.state, b"forged state", qos=1, retain=True)
        await mallory.publish(topics.events, b"forged event", qos=1)
        await mallory.publish(topics.admin_request, b"forged command", qos=1)
        await mallory.publish(topics.client(victim.client_id), b"forged reply", qos=1)
        # The broker acknowledged all of those before the victim renews: whatever of them
        # it let through reaches the observer before the renewal's answer does.
        await victim._send(
            protocol.SeatRenew(client=victim.client_id, lease=victim._grant.lease), "renew"
        )
        await eventually(lambda: topics.client(victim.client_id) in seen)
        # Mallory's own request is answered after the victim's renewal (one daemon, in
        # order): if the broker let mallory read the victim's answer, it came first.
        await mallory.publish(
            as_agent.seat("mallory", "request"),
            protocol.encode(protocol.SeatRequest(client="mallory", nonce="m")),
            qos=1,
        )
        stolen: list[bytes] = []
        async with asyncio.timeout(10):
            async for message in mallory.messages:
                if message.topic.value == topics.client("mallory"):
                    break
                stolen.append(bytes(message.payload))
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        # The observer saw the victim's own renewal and its answer, nothing of mallory's.
        assert as_agent.seat(victim.client_id, "release") not in seen
        assert as_agent.seat(victim.client_id, "request") not in seen
        assert topics.state not in seen
        assert topics.events not in seen
        assert topics.admin_request not in seen
        assert seen.count(topics.client(victim.client_id)) == 1
        assert stolen == []
        assert victim.has_seat
        # Mallory can still use its own topics.
        listed = await asyncio.to_thread(clients, server)
        assert sorted(c["client"] for c in listed) == sorted([victim.client_id, "mallory"])


async def test_a_flooding_client_does_not_keep_the_others_out(server_factory, tmp_path):
    # How long the others wait during a flood is measured by `python -m bench flood`.
    server = server_factory("mosquitto")
    daemon = server.start_daemon()
    assert unlock(server, issue(seats=50)).returncode == 0
    flood_stop = asyncio.Event()

    async def flood() -> None:
        async with raw_client(server, "floatkey-agent", "flooder") as client:
            while not flood_stop.is_set():
                await asyncio.gather(
                    *(
                        client.publish(
                            server.topics.for_login("floatkey-agent").seat("flooder", "request"),
                            protocol.encode(protocol.SeatRequest(client="flooder", nonce=str(i))),
                            qos=0,
                        )
                        for i in range(200)
                    )
                )
                await asyncio.sleep(0.02)  # pacing: lets the agents in this loop run

    def rate_limited(report: dict) -> int:
        return report["dropped"].get("rate_limited", 0)

    flooder = asyncio.create_task(flood())
    try:
        # The flood is on once the daemon has started refusing it.
        await eventually(lambda: asyncio.to_thread(lambda: rate_limited(status(server)) > 0))
        limited_before = rate_limited(await asyncio.to_thread(status, server))
        for i in range(10):
            # Entering waits for the daemon's answer (connect_timeout) or raises NoAnswer.
            async with make_agent(server, tmp_path, f"polite{i}") as agent:
                assert agent.has_seat
        assert not flooder.done(), "the flood stopped before the agents were done"
        limited_after = rate_limited(await asyncio.to_thread(status, server))
    finally:
        flood_stop.set()
        await flooder
    # The flooder was being refused while every polite agent got its seat.
    assert limited_after > limited_before
    # Under the load the log stays what journald expects: JSON lines only, and no
    # line per pipelined reply from aiomqtt ("There are N pending publish calls").
    records = [json.loads(line) for line in daemon.log().splitlines()]
    assert records
    assert [r["event"] for r in records if r.get("logger") == "mqtt"] == []


# --- broker and network faults -----------------------------------------------------------


async def test_a_30_second_broker_outage_loses_nobody(server_factory, tmp_path):
    server = server_factory("mosquitto")
    server.start_daemon()
    assert unlock(server, issue(seats=5)).returncode == 0
    async with make_agent(server, tmp_path, "a1") as a1, make_agent(server, tmp_path, "a2") as a2:
        leases = {a1.client_id: a1._grant.lease, a2.client_id: a2._grant.lease}
        server.mosquitto.stop()
        await asyncio.sleep(30 if not os.environ.get("FLOATKEY_FAST_OUTAGE") else 5)
        server.mosquitto.start()
        # The agents and the daemon are back (how soon: the back-off cap, 4 s; these
        # deadlines only stop a test that would otherwise wait forever).
        await eventually(lambda: a1._connected.is_set() and a2._connected.is_set(), within=15)
        await eventually(lambda: asyncio.to_thread(answering, server), within=15)
        listed = await asyncio.to_thread(clients, server)
        assert sorted(c["client"] for c in listed) == sorted(leases)
        assert {a1.client_id: a1._grant.lease, a2.client_id: a2._grant.lease} == leases
        assert not a1.shutdown_requested.is_set()
        assert not a2.shutdown_requested.is_set()


class SupervisedAgent:
    """A real ``floatkey-agent run`` logging at debug level (JSON lines) into a file."""

    def __init__(self, server, tmp_path: Path, name: str, **config: object) -> None:
        self.app = tmp_path / name
        self.log = tmp_path / f"{name}.log"
        path = write_agent_config(server, tmp_path / f"{name}.toml", **config)
        argv = [command("floatkey-agent"), "run", "--config", str(path), "--app", name, "--"]
        argv += [sys.executable, str(Path(__file__).with_name("child_app.py")), str(self.app)]
        env = {**os.environ, "FLOATKEY_LOG_LEVEL": "debug"}
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)

    def records(self) -> list[dict[str, object]]:
        """The agent's log lines (the application's own output left out)."""
        lines = self.log.read_text(errors="replace").splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def events(self, *levels: str) -> list[str]:
        return [str(r["event"]) for r in self.records() if not levels or r["level"] in levels]

    def count(self, prefix: str) -> int:
        return sum(event.startswith(prefix) for event in self.events())

    async def started(self) -> None:
        await eventually(self.app.with_suffix(".env").exists, within=20)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(15)


UNREACHABLE = "license server unreachable; the application keeps running for up to "
BACK = "license server reachable again after "


def grace_left(event: str) -> int:
    match = re.fullmatch(re.escape(UNREACHABLE) + r"(\d+) s of offline grace", event)
    assert match, event
    return int(match.group(1))


async def test_a_broker_outage_is_one_warning_and_one_line_when_the_server_is_back(
    server_factory, tmp_path
):
    server = server_factory("mosquitto")
    server.start_daemon()
    agent = SupervisedAgent(server, tmp_path, "outage", offline_grace=300)
    try:
        await agent.started()
        await asyncio.to_thread(server.mosquitto.stop)
        # Reconnection attempts fail one after the other (capped back-off: about 4 s).
        await eventually(lambda: agent.count("license server still unreachable") >= 3, within=30)
        await asyncio.to_thread(server.mosquitto.start)
        await eventually(lambda: agent.count(BACK) == 1, within=30)
        assert agent.process.poll() is None  # the application ran on through it
    finally:
        assert await asyncio.to_thread(agent.stop) == 0, agent.log.read_text()
    warnings = agent.events("warning", "error", "critical")
    assert len(warnings) == 1, warnings
    assert 0 < grace_left(warnings[0]) <= 300
    infos = agent.events("info")
    assert infos[-1] == "seat released"  # (the stop of the test)
    started = infos.index("application started")
    assert infos[started + 1 : -1] == [e for e in infos if e.startswith(BACK)], infos
    assert agent.count("broker connection lost") == 0
    assert agent.count("cannot reach the broker") == 0  # it had reached it before


@contextlib.asynccontextmanager
async def forwarding(port: int, target: int):
    """A TCP port on loopback that forwards to ``target``, open while the context is."""

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", target)
        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

    server = await asyncio.start_server(forward, "127.0.0.1", port)
    async with server:
        yield


async def test_an_agent_started_before_its_broker_says_so_once_and_gets_its_seat(
    server_factory, tmp_path
):
    server = server_factory("mosquitto")
    server.start_daemon()
    # The daemon listens before the agent can reach the broker (through a port opened
    # later): its first request is not lost to a daemon that has not subscribed yet.
    await eventually(lambda: asyncio.to_thread(answering, server), within=15)
    port = free_port()
    broker = msgspec.structs.replace(server.broker(), port=port)
    agent = SupervisedAgent(server, tmp_path, "early", connect_timeout=60, broker=broker)
    try:
        await eventually(lambda: agent.count("broker not reachable yet") >= 2, within=30)
        async with forwarding(port, server.port):
            await agent.started()
            assert await asyncio.to_thread(agent.stop) == 0
    finally:
        assert await asyncio.to_thread(agent.stop) == 0, agent.log.read_text()
    assert agent.events("warning", "error", "critical") == [
        f"cannot reach the broker ({broker.describe()}) yet; retrying"
    ]
    assert agent.count("license server unreachable") == 0
    assert agent.count("broker connection lost") == 0


async def test_a_silent_daemon_behind_a_running_broker_is_one_warning_too(server_factory, tmp_path):
    server = server_factory("mosquitto")
    daemon = server.start_daemon()
    agent = SupervisedAgent(server, tmp_path, "quiet", connect_timeout=1, offline_grace=300)
    try:
        await agent.started()
        # A clean stop keeps the leases (30 s): back within them, the restarted daemon
        # renews the same one, and there is no "seat lost" to tell.
        assert await asyncio.to_thread(daemon.stop) == 0
        # A renewal (every ~10 s) goes unanswered for connect_timeout.
        await eventually(lambda: agent.count("license server unreachable") == 1, within=30)
        await asyncio.to_thread(server.start_daemon)
        await eventually(lambda: agent.count(BACK) == 1, within=30)
    finally:
        assert await asyncio.to_thread(agent.stop) == 0, agent.log.read_text()
    warnings = agent.events("warning", "error", "critical")
    assert len(warnings) == 1, warnings
    assert 0 < grace_left(warnings[0]) <= 300


async def test_a_broker_restarted_with_its_persistence_wiped_gets_the_state_back(
    server_factory,
    tmp_path,
):
    server = server_factory("mosquitto")
    server.start_daemon()
    assert unlock(server, issue()).returncode == 0
    genuine = await read_retained(server, server.topics.state)
    server.mosquitto.stop()
    server.mosquitto.wipe_persistence()
    server.mosquitto.start()
    # The daemon reconnects (it answers again) and publishes identity and state again.
    await eventually(lambda: answering(server), within=15)
    payload = await read_retained(server, server.topics.state)
    assert payload == genuine
    async with make_agent(server, tmp_path, "late") as late:
        assert late.has_seat
        assert late.license.status == "licensed"


async def test_a_connection_cut_without_disconnect_keeps_the_seat(server_factory, tmp_path):
    server = server_factory("mosquitto")
    server.start_daemon()
    assert unlock(server, issue(seats=1)).returncode == 0
    async with make_agent(server, tmp_path, "cut") as agent:
        lease = agent._grant.lease
        # A spy on the agent's seat replies: the answer to its renewal after the cut is
        # the moment to look (the daemon handled the will before it), not a pause.
        answers: list[object] = []
        take_reply = agent._take_reply

        def spy(reply: protocol.DaemonToClient) -> None:
            answers.append(reply)
            take_reply(reply)

        agent._take_reply = spy
        sock = agent._client._client.socket()
        sock.shutdown(socket.SHUT_RDWR)  # the TCP connection dies; no DISCONNECT is sent
        await eventually(lambda: not agent._connected.is_set(), within=5)
        await eventually(agent._connected.is_set, within=10)
        await eventually(
            lambda: any(isinstance(a, protocol.SeatRenewed | protocol.SeatLost) for a in answers)
        )
        assert agent._grant is not None
        assert agent._grant.lease == lease
        listed = await asyncio.to_thread(clients, server)
        assert [c["client"] for c in listed] == [agent.client_id]
        assert not agent.shutdown_requested.is_set()


# --- crash consistency -------------------------------------------------------------------


def check_database(server) -> dict:
    """Every invariant a crash must not break; returns the meta table."""
    with contextlib.closing(server.db()) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        meta = dict(db.execute("SELECT key, value FROM meta"))
        generation = int(meta["generation"])
        active = db.execute(
            "SELECT generation, seats, key_text, licensee FROM licenses WHERE active = 1"
        ).fetchall()
        assert len(active) <= 1
        if meta["status"] == "licensed":
            assert len(active) == 1
            _, seats, key_text, licensee = active[0]
            assert licensee == "Ada Lovelace"
            assert key_text.startswith("FK-")
            held = db.execute(
                "SELECT COUNT(*) FROM leases WHERE generation = ? AND licensed = 1 AND revoked = 0",
                (generation,),
            ).fetchone()[0]
            assert held <= seats, (held, seats)
        seqs = [row[0] for row in db.execute("SELECT seq FROM audit ORDER BY seq")]
        assert seqs == list(range(1, len(seqs) + 1)), "the audit log has a gap"
    return meta


async def unlock_in_background(server, key: str) -> None:
    """floatkeyctl unlock as a child process that dies with the cancelled worker.

    (In a thread it would outlive the cancellation, waiting for the killed daemon.)
    """
    process = await asyncio.create_subprocess_exec(
        command("floatkeyctl"),
        "unlock",
        "--name",
        NAME,
        "--organization",
        ORG,
        "--key",
        key,
        "--wait",
        "0",
        "--config",
        str(server.config_path),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


@pytest.mark.timeout(900 if SLOW else 120)  # 60 kills with FLOATKEY_SLOW=1
async def test_sigkill_at_random_moments_never_breaks_the_database(server_factory, tmp_path):
    server = server_factory("mosquitto")
    plan = random.Random(42)  # when to kill: after how many operations, and how much later
    operations = 0
    cycles = 12 if not SLOW else 60
    for cycle in range(cycles):
        daemon = server.start_daemon()
        meta = check_database(server)
        state = await read_state(server)
        assert (state.generation, state.revision) == (
            int(meta["generation"]),
            int(meta["revision"]),
        )
        assert state.status == meta["status"]

        stopping, reached = asyncio.Event(), asyncio.Event()
        target = operations + plan.randint(20, 40)

        async def operate(
            cycle: int, target: int, stopping: asyncio.Event, reached: asyncio.Event
        ) -> None:
            nonlocal operations
            rng = random.Random(cycle)  # what to do: its own seed, whatever the timing
            async with raw_client(server, "floatkeyd", f"load{cycle}") as client:
                # A flag, not only the cancellation: aiomqtt's acknowledgement waits can
                # lose a cancellation on Python 3.11 (see floatkey.broker.settled).
                while not stopping.is_set():
                    action = rng.random()
                    name = f"c{rng.randint(0, 30)}"
                    if action < 0.05:
                        await unlock_in_background(server, issue(seats=rng.randint(1, 8)))
                    elif action < 0.6:
                        body = protocol.SeatRequest(client=name, nonce=str(operations))
                        await client.publish(
                            server.topics.seat(name, "request"), protocol.encode(body), qos=1
                        )
                    elif action < 0.8:
                        body = protocol.SeatRenew(client=name, lease="x")
                        await client.publish(
                            server.topics.seat(name, "renew"), protocol.encode(body), qos=1
                        )
                    else:
                        body = protocol.SeatRelease(client=name)
                        await client.publish(
                            server.topics.seat(name, "release"), protocol.encode(body), qos=1
                        )
                    operations += 1
                    if operations >= target:
                        reached.set()  # the worker goes on: the kill lands mid-whatever
                    await asyncio.sleep(rng.random() * 0.01)

        worker = asyncio.create_task(operate(cycle, target, stopping, reached))
        waiter = asyncio.ensure_future(reached.wait())
        async with asyncio.timeout(60):
            await asyncio.wait({worker, waiter}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if worker.done():
            worker.result()  # the worker failed: show why
        await asyncio.sleep(plan.uniform(0, 0.3))
        daemon.kill()  # SIGKILL
        stopping.set()
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
            async with asyncio.timeout(15):
                await worker
    server.start_daemon()
    check_database(server)
    assert operations >= cycles * 20, operations


async def test_a_database_that_cannot_be_written_refuses_and_loses_nothing(
    server_factory, tmp_path
):
    """Disk full, or another program holding the database: refuse, retry, never crash."""
    server = server_factory("mosquitto")
    daemon = server.start_daemon()
    assert unlock(server, issue(seats=3)).returncode == 0
    before = await read_state(server)
    blocker = sqlite3.connect(server.state_dir / "floatkeyd.db", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # every write of the daemon now fails (busy)
    try:
        refused = await asyncio.to_thread(unlock, server, issue(seats=5))
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert "Refused (store_failed)" in refused.stderr
        assert "could not write its database" in refused.stderr
        # A seat granted meanwhile lives in memory; its write waits for the database.
        late = make_agent(server, tmp_path, "late")
        await late.__aenter__()
        assert late.has_seat
    finally:
        blocker.rollback()
        blocker.close()
    try:
        after = await read_state(server)
        assert (after.generation, after.license.seats) == (before.generation, 3)
        assert daemon.process.poll() is None

        def lease_written() -> bool:
            with contextlib.closing(server.db()) as db:
                rows = db.execute("SELECT client FROM leases").fetchall()
            return (late.client_id,) in rows

        await eventually(lease_written, within=15)
        again = await asyncio.to_thread(lambda: unlock(server, issue(seats=5)))
        assert again.returncode == 0  # and it works again
    finally:
        await late.__aexit__(None, None, None)


# --- soak ----------------------------------------------------------------------------------


@pytest.mark.timeout(900 if SLOW else 120)  # the long soak runs 10 minutes
async def test_soak_agents_renewing_keep_the_daemon_flat(server_factory):
    from bench.harness import Worker, split  # noqa: PLC0415

    server = server_factory("mosquitto", extra="max_requests_per_client = 100")
    config = server.config_path.read_text().replace("lease_seconds = 30", "lease_seconds = 10")
    server.config_path.write_text(config.replace('log_level = "debug"', 'log_level = "warning"'))
    daemon = server.start_daemon()
    agents = 1000 if SLOW else 300
    duration = 600 if SLOW else 60
    assert unlock(server, issue(seats=agents)).returncode == 0
    agent_config = write_agent_config(
        server, server.config_path.parent / "soak.toml", connect_timeout=120
    )
    workers = [
        Worker(
            "soak-agents",
            {
                "agent_config": str(agent_config),
                "count": n,
                "prefix": f"soak{i}-",
            },
        )
        for i, n in enumerate(split(agents, 2))
    ]
    try:
        for worker in workers:
            await worker.expect("ready", 300)
        pid = daemon.process.pid
        await asyncio.sleep(min(10, duration / 6))
        start = (rss(pid), fds(pid), (await daemon_report(server)).tasks)
        await asyncio.sleep(duration - min(10, duration / 6))
        end = (rss(pid), fds(pid), (await daemon_report(server)).tasks)
        current = status(server)
        for worker in workers:
            worker.go()
        reports = [await worker.result(120) for worker in workers]
    finally:
        for worker in workers:
            worker.stop()
    assert end[0] <= start[0] * 1.10, (start, end)
    assert end[1] <= start[1] + 5, (start, end)
    assert end[2] <= start[2] + 5, (start, end)
    assert current["seats_in_use"] == agents
    assert sum(r["renewals_lost"] for r in reports) == 0
    assert all(r["still_seated"] == r["count"] for r in reports)
    await eventually(lambda: status(server)["seats_in_use"] == 0, within=30)
    assert daemon.process.poll() is None
