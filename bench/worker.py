"""One load-generating process of a benchmark: ``python -m bench.worker ROLE SPEC_JSON``.

The coordinator starts a few of these so that the load generator is not what is
measured. Protocol on stdin/stdout, one JSON object a line: the worker sets up (connects
its clients), prints ``{"ready": true}``, waits for a ``go`` line, runs, and prints
``{"result": ...}``. Times are ``time.time()`` (one machine, one clock), so the
coordinator can compare them across processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from floatkey.agent import Agent
from floatkey.broker import BrokerOptions, connect
from floatkey.config import load_agent_config
from floatkey.logs import configure_logging

if TYPE_CHECKING:
    from collections.abc import Iterator

    import aiomqtt


def say(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


async def wait_for_go() -> None:
    line = await asyncio.to_thread(sys.stdin.readline)
    if line.strip() != "go":
        raise SystemExit(f"expected 'go', got {line!r}")


def _options(spec: dict[str, Any]) -> BrokerOptions:
    return BrokerOptions(**spec["broker"])


@contextlib.contextmanager
def profiled(spec: dict[str, Any]) -> Iterator[None]:
    """cProfile the measured phase when FLOATKEY_BENCH_PROFILE names a directory."""
    directory = os.environ.get("FLOATKEY_BENCH_PROFILE")
    if not directory:
        yield
        return
    profile = cProfile.Profile()
    profile.enable()
    try:
        yield
    finally:
        profile.disable()
        profile.dump_stats(Path(directory) / f"{spec['prefix']}.prof")


# --- floatkey agents -------------------------------------------------------------------


def _agents(spec: dict[str, Any]) -> list[Agent]:
    loaded = load_agent_config(Path(spec["agent_config"]))
    prefix = spec["prefix"]
    return [Agent(loaded, app="bench", client_id=f"{prefix}-{i}") for i in range(spec["count"])]


async def checkout_agents(spec: dict[str, Any]) -> dict[str, Any]:
    """Each agent: request and release a seat ``rounds`` times in turn; grant latencies."""
    agents = _agents(spec)
    await asyncio.gather(*(a.__aenter__() for a in agents))
    await asyncio.gather(*(a.release() for a in agents))
    say(ready=True)
    await wait_for_go()
    latencies: list[float] = []
    granted = 0

    async def run(agent: Agent) -> None:
        nonlocal granted
        for _ in range(spec["rounds"]):
            started = time.perf_counter()
            if await agent.request_seat():
                granted += 1
            latencies.append(time.perf_counter() - started)
            await agent.release()

    started = time.time()
    await asyncio.gather(*(run(a) for a in agents))
    elapsed = time.time() - started
    await asyncio.gather(*(a.__aexit__(None, None, None) for a in agents))
    return {"latencies": latencies, "granted": granted, "elapsed": elapsed}


async def storm_agents(spec: dict[str, Any]) -> dict[str, Any]:
    """All agents start at once (connect and request); when each had its answer."""
    agents = _agents(spec)
    say(ready=True)
    await wait_for_go()
    started = time.time()
    answered: list[float] = []

    async def enter(agent: Agent) -> None:
        await agent.__aenter__()
        answered.append(time.time())

    await asyncio.gather(*(enter(a) for a in agents))
    granted = sum(a.has_seat for a in agents)
    denied = sum(a.denial is not None and a.denial.reason == "seats_exhausted" for a in agents)
    say(answered=True)
    await wait_for_go()  # hold the seats until the coordinator has counted them
    await asyncio.gather(*(a.__aexit__(None, None, None) for a in agents))
    return {"started": started, "answered": answered, "granted": granted, "denied": denied}


async def unlock_agents(spec: dict[str, Any]) -> dict[str, Any]:
    """Connected, seated agents; when each learned of the new license and released."""
    agents = _agents(spec)
    await asyncio.gather(*(a.__aenter__() for a in agents))
    informed: list[float] = []
    released: list[float] = []

    async def watch(agent: Agent) -> None:
        reason = await agent.shutdown_requested
        informed.append(reason.requested_at)  # when the agent read the event
        await agent.release()
        released.append(time.time())

    watchers = [asyncio.create_task(watch(a)) for a in agents]
    say(ready=True, seated=sum(a.has_seat for a in agents))
    with profiled(spec):
        await asyncio.wait_for(asyncio.gather(*watchers), spec.get("timeout", 120))
    await asyncio.gather(*(a.__aexit__(None, None, None) for a in agents))
    return {"informed": informed, "released": released}


async def soak_agents(spec: dict[str, Any]) -> dict[str, Any]:
    """Agents that hold their seats (renewing) until told ``go``."""
    agents = _agents(spec)
    await asyncio.gather(*(a.__aenter__() for a in agents))
    leases = {a.client_id: a._grant.lease if a._grant else None for a in agents}  # noqa: SLF001
    say(ready=True)
    await wait_for_go()
    lost = sum(
        1
        for a in agents
        if (a._grant.lease if a._grant else None)  # noqa: SLF001
        != leases[a.client_id]
    )
    seated = sum(a.has_seat and not a.shutdown_requested.is_set() for a in agents)
    await asyncio.gather(*(a.__aexit__(None, None, None) for a in agents))
    return {"count": len(agents), "renewals_lost": lost, "still_seated": seated}


# --- the raw MQTT baselines --------------------------------------------------------------


async def echo_responder(spec: dict[str, Any]) -> dict[str, Any]:
    """The baseline's 'daemon': read requests one at a time, answer each with QoS 1.

    Replies are pipelined the way floatkeyd pipelines them (queued, published in
    batches without waiting for each PUBACK), so the baseline is the best plain MQTT
    request/response can do, not a strawman.
    """
    pad = b"x" * spec["reply_size"]
    outbox: asyncio.Queue[str] = asyncio.Queue()
    answered = 0

    async def send(client: aiomqtt.Client) -> None:
        while True:
            batch = [await outbox.get()]
            while not outbox.empty():
                batch.append(outbox.get_nowait())
            await asyncio.gather(*(client.publish(topic, pad, qos=1) for topic in batch))

    async with connect(
        _options(spec),
        identifier=spec["prefix"] + "-responder",
        base=Path.cwd(),
        max_queued_incoming=100_000,
        max_in_flight=2_000,  # pipelined like the daemon's replies
    ) as client:
        await client.subscribe(f"{spec['root']}/+/req", qos=1)
        sender = asyncio.create_task(send(client))
        say(ready=True)
        async for message in client.messages:
            client_id = message.topic.value.split("/")[-2]
            outbox.put_nowait(f"{spec['root']}/{client_id}/resp")
            answered += 1
        sender.cancel()
    return {"answered": answered}


async def signing_responder(spec: dict[str, Any]) -> dict[str, Any]:
    """The renewal-cost baseline: a bare responder that answers each renewal, sealed.

    It reads each renewal from ``{root}/seats/+/+/renew``, decodes it, seals a real
    ``seat.renewed`` for the client's reply topic (``Signer.seal``, as the daemon: the same
    envelope, the same size) and publishes it, pipelined as floatkeyd pipelines its
    replies (one queue, batches of up to 1,000, QoS 1 without waiting for each PUBACK).
    Everything the daemon does beyond this (the checks, the ledger, the store) is what
    the ratio measures. Its public key is in the ``ready`` line, to verify the replies.
    """
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (  # noqa: PLC0415
        Ed25519PrivateKey,
    )

    from floatkey import protocol  # noqa: PLC0415
    from floatkey.envelope import Signer  # noqa: PLC0415
    from floatkey.signing import public_key_text  # noqa: PLC0415

    key = Ed25519PrivateKey.generate()
    signer = Signer(key)
    lease_ms = spec["lease_ms"]
    prefix = f"{spec['root']}/clients/"
    outbox: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
    answered = 0

    async def send(client: aiomqtt.Client) -> None:
        while True:
            batch = [await outbox.get()]
            while not outbox.empty() and len(batch) < 1_000:
                batch.append(outbox.get_nowait())
            await asyncio.gather(*(client.publish(t, p, qos=1) for t, p in batch))

    async with connect(
        _options(spec),
        identifier=spec["prefix"] + "-signer",
        base=Path.cwd(),
        max_queued_incoming=50_000,
        max_in_flight=2_000,  # as the daemon's link
    ) as client:
        await client.subscribe(f"{spec['root']}/seats/+/+/renew", qos=1)
        sender = asyncio.create_task(send(client))
        say(ready=True, pid=os.getpid(), public_key=public_key_text(key.public_key()))
        async for message in client.messages:
            renew = protocol.decode(bytes(message.payload), protocol.SeatRenew)
            topic = prefix + renew.client
            body = protocol.SeatRenewed(lease=renew.lease, expires_at=protocol.now_ms() + lease_ms)
            outbox.put_nowait((topic, signer.seal(topic, protocol.encode(body))))
            answered += 1
        sender.cancel()
    return {"answered": answered}


async def _echo_client(spec: dict[str, Any], index: int) -> tuple[aiomqtt.Client, str]:
    client_id = f"{spec['prefix']}-{index}"
    client = connect(_options(spec), identifier=client_id, base=Path.cwd())
    await client.__aenter__()
    await client.subscribe(f"{spec['root']}/{client_id}/resp", qos=1)
    return client, client_id


async def _round_trip(
    spec: dict[str, Any], client: aiomqtt.Client, client_id: str, payload: bytes
) -> None:
    await client.publish(f"{spec['root']}/{client_id}/req", payload, qos=1)
    await anext(aiter(client.messages))


async def echo_clients(spec: dict[str, Any]) -> dict[str, Any]:
    """Plain request/response round trips at the agents' concurrency; latencies."""
    clients = await asyncio.gather(*(_echo_client(spec, i) for i in range(spec["count"])))
    payload = b"x" * spec["request_size"]
    say(ready=True)
    await wait_for_go()
    latencies: list[float] = []

    async def run(client: aiomqtt.Client, client_id: str) -> None:
        for _ in range(spec["rounds"]):
            started = time.perf_counter()
            await _round_trip(spec, client, client_id, payload)
            latencies.append(time.perf_counter() - started)

    started = time.time()
    await asyncio.gather(*(run(c, i) for c, i in clients))
    elapsed = time.time() - started
    await asyncio.gather(*(c.__aexit__(None, None, None) for c, _ in clients))
    return {"latencies": latencies, "elapsed": elapsed}


async def echo_storm(spec: dict[str, Any]) -> dict[str, Any]:
    """All plain clients connect and make one round trip at once."""
    payload = b"x" * spec["request_size"]
    say(ready=True)
    await wait_for_go()
    started = time.time()
    answered: list[float] = []
    clients: list[aiomqtt.Client] = []

    async def one(index: int) -> None:
        client, client_id = await _echo_client(spec, index)
        clients.append(client)
        await _round_trip(spec, client, client_id, payload)
        answered.append(time.time())

    await asyncio.gather(*(one(i) for i in range(spec["count"])))
    say(answered=True)
    await wait_for_go()
    await asyncio.gather(*(c.__aexit__(None, None, None) for c in clients))
    return {"started": started, "answered": answered}


async def fanout_subscribers(spec: dict[str, Any]) -> dict[str, Any]:
    """Plain subscribers of one topic; when each received the one message."""

    async def subscriber(index: int) -> aiomqtt.Client:
        client = connect(_options(spec), identifier=f"{spec['prefix']}-{index}", base=Path.cwd())
        await client.__aenter__()
        await client.subscribe(spec["topic"], qos=1)
        return client

    clients = await asyncio.gather(*(subscriber(i) for i in range(spec["count"])))
    say(ready=True)
    received: list[float] = []

    async def receive(client: aiomqtt.Client) -> None:
        await anext(aiter(client.messages))
        received.append(time.time())

    with profiled(spec):
        await asyncio.wait_for(
            asyncio.gather(*(receive(c) for c in clients)), spec.get("timeout", 60)
        )
    await asyncio.gather(*(c.__aexit__(None, None, None) for c in clients))
    return {"received": received}


ROLES = {
    "checkout-agents": checkout_agents,
    "storm-agents": storm_agents,
    "unlock-agents": unlock_agents,
    "soak-agents": soak_agents,
    "echo-responder": echo_responder,
    "signing-responder": signing_responder,
    "echo-clients": echo_clients,
    "echo-storm": echo_storm,
    "fanout-subscribers": fanout_subscribers,
}


def main() -> None:
    configure_logging("error", "json")
    role, spec = sys.argv[1], json.loads(sys.argv[2])
    result = asyncio.run(ROLES[role](spec))
    say(result=result)


if __name__ == "__main__":
    main()
