"""Client agents against a real daemon on real brokers: seats, shutdown, trust, faults."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pty
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from structlog.testing import capture_logs

from conftest import command, run
from floatkey import protocol
from floatkey._supervisor import supervise
from floatkey.envelope import Signer
from floatkey.errors import FeatureNotLicensed, NoAnswer, ServerKeyChanged
from floatkey.signing import key_id, public_key_text
from licensing import NAME, ORG, ctl, issue, unlock
from servers import (
    clients,
    eventually,
    make_agent,
    raw_client,
    read_retained,
    read_terminal,
    write_agent_config,
)

pytestmark = pytest.mark.broker
CHILD = Path(__file__).with_name("child_app.py")

# floatkeyctl and floatkey-vendor are run with a blocking subprocess.run: while in-process
# agents live in the test's event loop, they are run in a thread, or they would freeze the
# agents' loop (no renewals, no keepalives) for as long as the command takes.


async def listed(server) -> list[dict[str, object]]:
    """``floatkeyctl clients``, without blocking the event loop."""
    return await asyncio.to_thread(clients, server)


async def eventually_listed(server, check, within: float = 10) -> list[dict[str, object]]:
    """Wait until ``check(floatkeyctl clients)`` holds; return the listing."""
    deadline = time.monotonic() + within
    while True:
        listing = await listed(server)
        if check(listing):
            return listing
        if time.monotonic() > deadline:
            raise AssertionError(f"clients not as expected within {within} s: {listing}")
        await asyncio.sleep(0.1)


def licensed(listing) -> list[dict[str, object]]:
    return [c for c in listing if c["seat"] == "licensed"]


# --- seats --------------------------------------------------------------------------


@pytest.mark.parametrize("server", ["mosquitto", "embedded", "rabbitmq"], indirect=True)
async def test_exactly_s_of_n_agents_get_a_seat_and_a_release_lets_one_in(server, tmp_path):
    server.start_daemon()
    assert unlock(server, issue(seats=3)).returncode == 0
    agents = [make_agent(server, tmp_path, f"a{i}") for i in range(6)]
    entered = await asyncio.gather(*(agent.__aenter__() for agent in agents))
    try:
        holders = [a for a in entered if a.has_seat]
        denied = [a for a in entered if not a.has_seat]
        assert len(holders) == 3
        assert len(denied) == 3
        for agent in denied:
            assert agent.denial is not None
            assert agent.denial.reason == "seats_exhausted"
            assert "All 3 seats are in use" in agent.denial.message
            assert agent.features == frozenset()
            with pytest.raises(FeatureNotLicensed, match="dataflow"):
                agent.require("dataflow")
        for agent in holders:
            assert agent.features == {"dataflow", "subflow", "workflow"}
            assert agent.is_enabled("workflow")
            agent.require("subflow")
            assert agent.license.status == "licensed"
            assert agent.license.seats == 3

        await holders[0].__aexit__(None, None, None)
        await eventually_listed(server, lambda listing: len(licensed(listing)) == 2)
        retry = make_agent(server, tmp_path, "retry")
        async with retry:
            assert retry.has_seat
            assert retry.is_enabled("dataflow")
    finally:
        for agent in entered[1:]:
            await agent.__aexit__(None, None, None)


async def test_many_agents_racing_for_the_last_seat_get_exactly_one(server, tmp_path):
    server.start_daemon()
    assert unlock(server, issue(seats=3)).returncode == 0
    async with make_agent(server, tmp_path, "h1"), make_agent(server, tmp_path, "h2"):
        racers = [make_agent(server, tmp_path, f"r{i}") for i in range(8)]
        entered = await asyncio.gather(*(agent.__aenter__() for agent in racers))
        try:
            assert sum(agent.has_seat for agent in entered) == 1
            assert len(licensed(await listed(server))) == 3
        finally:
            await asyncio.gather(*(agent.__aexit__(None, None, None) for agent in entered))


async def test_an_administrator_releasing_a_seat_stops_that_application(server, tmp_path):
    server.start_daemon()
    assert unlock(server, issue(seats=2)).returncode == 0
    async with (
        make_agent(server, tmp_path, "stuck") as stuck,
        make_agent(server, tmp_path, "fine") as fine,
    ):
        result = await asyncio.to_thread(ctl, server, "release", stuck.client_id)
        assert result.returncode == 0, result.stderr
        assert f"Released the seat of {stuck.client_id}" in result.stdout
        reason = await asyncio.wait_for(stuck.shutdown_requested.wait(), 10)
        assert reason.code == "seat.revoked"
        assert not fine.shutdown_requested.is_set()
        assert [c["client"] for c in await listed(server)] == [fine.client_id]
    with contextlib.closing(server.db()) as db:
        row = db.execute(
            "SELECT action, outcome, detail FROM audit WHERE action = 'admin.release'"
        ).fetchone()
    assert row[:2] == ("admin.release", "accepted")
    assert stuck.client_id in row[2]


async def test_agents_of_an_unlicensed_server_run_without_features(server, tmp_path):
    server.start_daemon()
    key = issue()
    async with make_agent(server, tmp_path, "early") as agent:
        assert agent.has_seat
        assert not agent.licensed
        assert agent.license.status == "unlicensed"
        assert agent.features == frozenset()
        assert not agent.is_enabled("dataflow")
        with pytest.raises(FeatureNotLicensed, match="no license yet"):
            agent.require("dataflow")
        listing = await listed(server)
        assert [c["client"] for c in listing] == [agent.client_id]
        assert listing[0]["seat"] == "unlicensed"

        hooks: list[str] = []

        async def save_work(reason):
            hooks.append(reason.code)

        agent.on_shutdown(save_work)
        result = await asyncio.to_thread(unlock, server, key)
        assert "1 connected client was told to shut down" in result.stdout
        reason = await asyncio.wait_for(agent.shutdown_requested.wait(), 10)
        assert reason.code == "license.activated"
        assert reason.generation == 1
        await eventually(lambda: hooks == ["license.activated"])
    # The hook ran before the seat was released; unlock waited for it.
    assert "The client has shut down; it can restart under the new license." in result.stdout


# --- lifecycle ----------------------------------------------------------------------


async def test_an_outer_timeout_during_the_exit_reaches_the_caller_and_the_agent_closes(
    server, tmp_path
):
    server.start_daemon()
    agent = make_agent(server, tmp_path, "hurried", hook_timeout=30)
    saving = asyncio.Event()

    async def save_slowly(_reason):
        saving.set()
        await asyncio.sleep(3600)

    agent.on_shutdown(save_slowly)
    loop = asyncio.get_running_loop()

    async def application():
        async with asyncio.timeout(None) as deadline:
            async with agent:
                agent.request_shutdown("offline", "The test stops the application.")
                await saving.wait()
                # Fires while the exit waits for the slow hook (up to hook_timeout).
                deadline.reschedule(loop.time() + 0.5)

    with pytest.raises(TimeoutError):
        await application()
    # Cut short, the exit still released the seat and ended every task of the agent.
    assert all(task.done() for task in agent._children)
    assert not agent.has_seat
    await eventually(lambda: clients(server) == [])


async def test_cancelling_the_application_inside_an_agent_reaches_the_application(server, tmp_path):
    server.start_daemon()
    agent = make_agent(server, tmp_path, "cancelled")
    entered = asyncio.Event()

    async def application():
        async with agent:
            entered.set()
            await agent.shutdown_requested

    task = asyncio.create_task(application())
    await asyncio.wait_for(entered.wait(), 20)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()
    assert all(child.done() for child in agent._children)
    await eventually(lambda: clients(server) == [])


async def test_a_failing_license_listener_is_logged_and_counted_and_the_agent_goes_on(
    server_factory, tmp_path
):
    server = server_factory("mosquitto")
    daemon = server.start_daemon()
    async with make_agent(server, tmp_path, "listened") as agent:
        seen = []

        def broken_listener(view):
            raise OSError(28, "No space left on device")

        agent.on_license_change(broken_listener)
        agent.on_license_change(seen.append)
        # A restarted daemon publishes a state with a newer revision; the agent reads it
        # when it reconnects (it follows only the events in between).
        assert await asyncio.to_thread(daemon.stop) == 0
        await asyncio.to_thread(server.start_daemon)
        with capture_logs() as logs:
            agent._client._client.socket().shutdown(socket.SHUT_RDWR)
            await eventually(lambda: seen, within=15)
        assert seen[0].status == "unlicensed"
        [(name, count)] = agent.listener_failures.items()
        assert name.endswith("broken_listener")
        assert count == 1
        failure = next(e for e in logs if e["event"] == "license listener failed")
        assert failure["listener"] == name
        assert failure["log_level"] == "error"
        # The connection goes on: the agent renews after reconnecting, and the daemon,
        # which kept the lease across its restart, answers.
        assert not agent._children[0].done()
        await eventually(agent._connected.is_set)
        assert agent.has_seat
        assert not agent.shutdown_requested.is_set()


# --- the seed's scenario, with real processes ------------------------------------------


def start_supervised(server, tmp_path: Path, name: str, *extra: str) -> subprocess.Popen[str]:
    config = write_agent_config(server, tmp_path / f"{name}.toml")
    argv = [
        command("floatkey-agent"),
        "run",
        "--config",
        str(config),
        "--app",
        "flowdesigner",
        "--",
        sys.executable,
        str(CHILD),
        str(tmp_path / name),
        *extra,
    ]
    with (tmp_path / f"{name}.out").open("ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)


def output(tmp_path: Path, name: str) -> str:
    return (tmp_path / f"{name}.out").read_text(errors="replace")


def child_env(tmp_path: Path, name: str) -> dict[str, str]:
    return json.loads((tmp_path / f"{name}.env").read_text())


@pytest.mark.parametrize("server", ["mosquitto", "embedded", "rabbitmq"], indirect=True)
async def test_unlock_shuts_down_supervised_clients_which_restart_with_the_features(
    server,
    tmp_path,
):
    server.start_daemon()
    names = ["c1", "c2", "c3"]
    procs = [start_supervised(server, tmp_path, n) for n in names]
    for n in names:
        await eventually(lambda n=n: (tmp_path / f"{n}.env").exists(), within=20)
        env = child_env(tmp_path, n)
        assert env["FLOATKEY_STATUS"] == "unlicensed"
        assert env["FLOATKEY_FEATURES"] == ""
    assert len(clients(server)) == 3

    result = unlock(server, issue(seats=5))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 connected clients were told to shut down" in result.stdout
    assert "All 3 clients have shut down" in result.stdout
    assert "Waiting for the clients to shut down: 3 of 3\n" in result.stdout
    assert "\r" not in result.stdout  # the live count is for terminals, not pipes or logs
    for n, proc in zip(names, procs, strict=True):
        assert proc.wait(15) == 75, output(tmp_path, n)
        assert (tmp_path / f"{n}.term").read_text() == str(int(signal.SIGTERM))
    assert clients(server) == []

    # systemd would restart them; here, by hand.
    for n in names:
        (tmp_path / f"{n}.env").unlink()
    procs = [start_supervised(server, tmp_path, n) for n in names]
    for n in names:
        await eventually(lambda n=n: (tmp_path / f"{n}.env").exists(), within=20)
        env = child_env(tmp_path, n)
        assert env["FLOATKEY_STATUS"] == "licensed"
        assert env["FLOATKEY_FEATURES"] == "dataflow,subflow,workflow"
        assert env["FLOATKEY_LICENSEE"] == "Ada Lovelace"
        assert env["FLOATKEY_GENERATION"] == "1"
        assert json.loads(env["license_file_contents"])["features"] == [
            "dataflow",
            "subflow",
            "workflow",
        ]
    for proc in procs:
        proc.send_signal(signal.SIGTERM)  # passed on to the child, which exits 0
        assert proc.wait(15) == 0
    await eventually(lambda: clients(server) == [])


async def test_unlock_on_a_terminal_counts_the_clients_down_live(server_factory, tmp_path):
    server = server_factory("mosquitto")
    server.start_daemon()
    assert unlock(server, issue(seats=3)).returncode == 0
    new_key = issue(seats=4)
    agents = [make_agent(server, tmp_path, f"tty{i}") for i in range(2)]
    for delay, agent in zip([1.0, 2.5], agents, strict=True):
        # Applications saving their work for a while: their seats come back one by one.
        agent.on_shutdown(lambda _reason, delay=delay: asyncio.sleep(delay))
    async with contextlib.AsyncExitStack() as stack:
        for agent in agents:
            await stack.enter_async_context(agent)
        assert all(agent.has_seat for agent in agents)

        primary, secondary = pty.openpty()
        process = await asyncio.create_subprocess_exec(
            command("floatkeyctl"),
            *("unlock", "--name", NAME, "--organization", ORG, "--key", new_key),
            *("--config", str(server.config_path)),
            stdout=secondary,
            stderr=secondary,
        )
        os.close(secondary)
        screen = await asyncio.to_thread(read_terminal, primary)
        assert await process.wait() == 0, screen
    # One sentence, one line rewritten in place as they go, one closing line.
    assert screen.count("told to shut down") == 1, screen
    assert "\rWaiting for the clients to shut down: 1 of 2" in screen
    assert "\rWaiting for the clients to shut down: 2 of 2" in screen
    assert screen.index("1 of 2") < screen.index("2 of 2") < screen.index("All 2 clients")
    # The terminal turns "\n" into "\r\n": the progress is one line, then the closing one.
    lines = screen.replace("\r\n", "\n").rstrip("\n").split("\n")
    assert lines[-2].startswith("\rWaiting for the clients to shut down: "), screen
    assert lines[-1] == "All 2 clients have shut down; they can restart under the new license."


async def test_the_supervisor_exits_with_the_childs_status_and_refuses_without_a_seat(
    server,
    tmp_path,
):
    server.start_daemon()
    assert unlock(server, issue(seats=1)).returncode == 0
    holder = start_supervised(server, tmp_path, "holder")
    await eventually((tmp_path / "holder.env").exists, within=20)

    refused = start_supervised(server, tmp_path, "refused")
    assert refused.wait(20) == 69
    assert "All 1 seats are in use" in output(tmp_path, "refused")
    assert not (tmp_path / "refused.env").exists()

    holder.send_signal(signal.SIGTERM)
    assert holder.wait(15) == 0
    await eventually(lambda: clients(server) == [])
    quitter = start_supervised(server, tmp_path, "quitter", "--exit", "3")
    assert quitter.wait(20) == 3
    await eventually(lambda: clients(server) == [])


async def test_a_child_that_ignores_sigterm_is_killed_after_the_grace(server, tmp_path):
    server.start_daemon()
    stubborn = start_supervised(server, tmp_path, "stubborn", "--ignore-term")
    await eventually((tmp_path / "stubborn.env").exists, within=20)
    assert unlock(server, issue(), "--wait", "0").returncode == 0
    assert stubborn.wait(20) == 75
    assert (tmp_path / "stubborn.term").read_text() == "ignored"
    assert "application ignored SIGTERM; killing it" in output(tmp_path, "stubborn")


async def test_the_supervisor_kills_a_child_ignoring_sigterm_even_if_the_hook_is_cut_short(
    server, tmp_path
):
    server.start_daemon()
    agent = make_agent(server, tmp_path, "cut-short")
    # The pair the config now refuses (a 5 s grace in a 1 s hook_timeout), set behind its
    # back: the hook that stops the application is cut short before its SIGKILL.
    agent.config.hook_timeout = 1
    program = [sys.executable, str(CHILD), str(tmp_path / "deaf"), "--ignore-term"]
    async with agent:
        supervisor = asyncio.create_task(supervise(agent, program, tmp_path))
        await eventually((tmp_path / "deaf.env").exists, within=20)
        agent.request_shutdown("license.activated", "The test stops the application.")
        # Bounded all the same: the grace, SIGKILL, and a bounded wait for the kill.
        assert await asyncio.wait_for(supervisor, 30) == 75
    assert (tmp_path / "deaf.term").read_text() == "ignored"


# --- failures -----------------------------------------------------------------------


@pytest.mark.parametrize("server", ["mosquitto", "embedded", "rabbitmq"], indirect=True)
async def test_a_killed_agent_frees_its_seat_through_its_will(server, tmp_path):
    server.start_daemon()
    assert unlock(server, issue(seats=1)).returncode == 0
    victim = start_supervised(server, tmp_path, "victim")
    await eventually((tmp_path / "victim.env").exists, within=20)
    assert len(clients(server)) == 1
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    # The application does not outlive its agent: Linux sends it SIGTERM (PDEATHSIG).
    term = tmp_path / "victim.term"
    await eventually(term.exists, within=10)
    assert term.read_text() == str(int(signal.SIGTERM))
    # The broker publishes the will as soon as it sees the connection gone.
    await eventually(lambda: clients(server) == [], within=15)


def short_leases(server, seconds: int = 10) -> None:
    text = server.config_path.read_text()
    assert "lease_seconds = 30" in text
    server.config_path.write_text(text.replace("lease_seconds = 30", f"lease_seconds = {seconds}"))


def forget_leases(server) -> None:
    """What a daemon restored from an old backup knows: no lease (the daemon is stopped)."""
    with contextlib.closing(server.db()) as db, db:
        assert db.execute("DELETE FROM leases").rowcount >= 1


async def test_an_agent_that_loses_its_seat_and_finds_none_free_stops_its_application(
    server_factory, tmp_path
):
    server = server_factory("mosquitto")
    short_leases(server)
    daemon = server.start_daemon()
    assert unlock(server, issue(seats=1)).returncode == 0
    loser = start_supervised(server, tmp_path, "loser")
    await eventually((tmp_path / "loser.env").exists, within=20)
    # Frozen, the agent cannot renew before another computer has taken its seat.
    os.kill(loser.pid, signal.SIGSTOP)
    try:
        assert daemon.stop() == 0
        forget_leases(server)
        server.start_daemon()
        winner = start_supervised(server, tmp_path, "winner")
        await eventually((tmp_path / "winner.env").exists, within=20)
    finally:
        os.kill(loser.pid, signal.SIGCONT)
    # Its renewal gets seat.lost, its new requests seats_exhausted; once the lease it was
    # given has run out, it stops its application (exit 75 for systemd to restart it).
    assert await asyncio.to_thread(loser.wait, 60) == 75, output(tmp_path, "loser")
    assert (tmp_path / "loser.term").read_text() == str(int(signal.SIGTERM))
    assert "lost its seat and none is free: All 1 seats are in use" in output(tmp_path, "loser")
    assert winner.poll() is None
    assert [c["app"] for c in clients(server)] == ["flowdesigner"]
    winner.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(winner.wait, 15) == 0


async def test_a_new_license_stops_an_agent_that_has_lost_its_seat(server_factory, tmp_path):
    server = server_factory("mosquitto")
    daemon = server.start_daemon()
    assert unlock(server, issue(seats=1)).returncode == 0
    key = issue(seats=2, features="dataflow")
    async with make_agent(server, tmp_path, "loser") as loser:
        assert loser.generation == 1
        # Its messages are lost on the way until another agent holds the only seat.
        send, cut_off = loser._send, True

        async def lossy_send(body, action):
            if not cut_off:
                await send(body, action)

        loser._send = lossy_send
        await asyncio.to_thread(daemon.stop)
        await asyncio.to_thread(forget_leases, server)
        await asyncio.to_thread(server.start_daemon)
        async with make_agent(server, tmp_path, "winner") as winner:
            assert winner.has_seat
            cut_off = False
            await eventually(lambda: loser.denial is not None, within=30)
            assert loser.denial.reason == "seats_exhausted"
            assert not loser.has_seat
            assert not loser.shutdown_requested.is_set()  # the lease has not run out yet
            assert (await asyncio.to_thread(unlock, server, key)).returncode == 0
            reason = await asyncio.wait_for(loser.shutdown_requested.wait(), 10)
            assert reason.code == "license.activated"
            assert reason.generation == 2


async def test_a_lease_that_is_not_renewed_expires(server_factory):
    server = server_factory("mosquitto")
    short_leases(server)
    server.start_daemon()
    async with raw_client(server, "floatkey-agent", "silent-1") as client:
        request = protocol.SeatRequest(client="silent-1", nonce="n1", app="raw")
        await client.publish(
            server.topics.for_login("floatkey-agent").seat("silent-1", "request"),
            protocol.encode(request),
            qos=1,
        )
        await eventually_listed(server, lambda listing: len(listing) == 1)
        await eventually_listed(server, lambda listing: listing == [], within=20)


@pytest.mark.parametrize("server", ["mosquitto", "embedded", "rabbitmq"], indirect=True)
async def test_forged_misaddressed_and_replayed_messages_are_ignored(server, tmp_path):
    server.start_daemon()
    keys = [issue(), issue()]
    async with raw_client(server, "floatkeyd", "recorder") as recorder:
        await recorder.subscribe(server.topics.events, qos=1)
        assert (await asyncio.to_thread(unlock, server, keys[0])).returncode == 0
        old_state = await read_retained(server, server.topics.state)
        async with asyncio.timeout(5):
            old_event = bytes((await anext(aiter(recorder.messages))).payload)
    assert unlock(server, keys[1]).returncode == 0
    async with (
        make_agent(server, tmp_path, "target") as agent,
        make_agent(server, tmp_path, "other") as other,
    ):
        assert agent.generation == 2
        async with raw_client(server, "floatkeyd", "forger") as forger:
            # 1. A revocation signed by another key.
            topic = server.topics.client(agent.client_id)
            revoke = protocol.SeatRevoked(lease="x", reason="forged", message="forged")
            forged = Signer(Ed25519PrivateKey.generate()).seal(topic, protocol.encode(revoke))
            await forger.publish(topic, forged, qos=1)
            # 2. A genuine daemon message for another client, moved to this client's topic.
            captured: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
            await forger.subscribe(server.topics.client(other.client_id), qos=1)
            await other._send(
                protocol.SeatRenew(client=other.client_id, lease=other._grant.lease), "renew"
            )
            async with asyncio.timeout(5):
                async for message in forger.messages:
                    captured.set_result(bytes(message.payload))
                    break
            await forger.publish(topic, captured.result(), qos=1)
            # 3. A new-generation event, forged; and an old genuine event, replayed.
            fake = protocol.Event(name="license.activated", generation=10**6, revision=10**9)
            events = server.topics.events
            await forger.publish(
                events,
                Signer(Ed25519PrivateKey.generate()).seal(events, protocol.encode(fake)),
                qos=1,
            )
            await forger.publish(events, old_event, qos=1)
            # A last forged event: once it is counted, the old one before it (which the
            # agent ignores without a trace) has been handled too, as one publisher's
            # QoS 1 messages arrive in order.
            await forger.publish(
                events,
                Signer(Ed25519PrivateKey.generate()).seal(events, protocol.encode(fake)),
                qos=1,
            )
        await eventually(
            # (>=: amqtt may also hand the recorder a retained message as its "old event",
            # which then fails the signature for the events topic.)
            lambda: agent.drops["unknown_key"] >= 3 and agent.drops["bad_signature"] >= 1,
        )
        # 4. An old genuine state (the agent reads states when it (re)connects): replayed.
        agent._handle(server.topics.state, old_state)
        assert agent.drops["replayed"] == 1
        assert not agent.shutdown_requested.is_set()
        assert agent.has_seat
        assert agent.license.generation == 2


async def test_a_changed_server_key_is_refused(server, tmp_path):
    server.start_daemon()
    impostor = public_key_text(Ed25519PrivateKey.generate().public_key())
    agent = make_agent(server, tmp_path, "wary", server_key=impostor)
    with pytest.raises(ServerKeyChanged) as caught:
        async with agent:
            pass
    message = caught.value.message
    assert f"presents a key with fingerprint {key_id(server.server_key())}" in message
    assert "the key set as server_key in the agent config" in message
    assert "set server_key to its new public key" in message


async def test_trust_on_first_use_pins_the_key_in_a_private_state_file(server, tmp_path):
    server.start_daemon()
    with capture_logs() as logs:
        async with make_agent(server, tmp_path, "tofu", pin=False) as agent:
            assert agent.has_seat
    known = tmp_path / "tofu-known.json"
    assert oct(known.stat().st_mode & 0o777) == "0o600"
    assert json.loads(known.read_text())["servers"][server.topics.root] == server.server_key_text()
    # The one warning of a first start is the trust on first use; a state that arrives
    # before the identity (the embedded broker sends it first) is no reason for another.
    warnings = [e["event"] for e in logs if e["log_level"] in {"warning", "error"}]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("TRUSTING THE LICENSE SERVER KEY ON FIRST USE")


async def test_a_key_other_than_the_one_pinned_on_first_use_names_the_state_file(
    server_factory, tmp_path
):
    server = server_factory("mosquitto")
    server.start_daemon()
    config = write_agent_config(server, tmp_path / "moved.toml", pin=False)
    known = tmp_path / "moved-known.json"
    impostor = Ed25519PrivateKey.generate().public_key()
    known.write_text(json.dumps({"servers": {server.topics.root: public_key_text(impostor)}}))
    result = await asyncio.to_thread(
        run, "floatkey-agent", "run", "--config", str(config), "--", "true"
    )
    assert result.returncode == 78, result.stderr
    message = " ".join(result.stderr.split())
    assert f"presents a key with fingerprint {key_id(server.server_key())}" in message
    assert f"not {key_id(impostor)}" in message
    assert f"pinned in its state file {known}" in message
    assert f'delete the "{server.topics.root}" entry from that file' in message
    assert "Traceback" not in result.stderr


async def test_no_daemon_means_no_answer(server_factory, tmp_path):
    server = server_factory("mosquitto")  # broker up, daemon never started
    server.state_dir.mkdir(parents=True)
    (server.state_dir / "server-identity.key.pub").write_text(
        public_key_text(Ed25519PrivateKey.generate().public_key())
    )
    agent = make_agent(server, tmp_path, "lonely", connect_timeout=1)
    with pytest.raises(NoAnswer, match="license server"):
        async with agent:
            pass


async def test_broker_restart_keeps_everyone_and_their_leases(server_factory, tmp_path):
    server = server_factory("mosquitto")
    server.start_daemon()
    assert unlock(server, issue()).returncode == 0
    async with make_agent(server, tmp_path, "steady") as agent:
        lease, renewed = agent._grant.lease, agent._lease_ends
        await asyncio.to_thread(server.mosquitto.stop)
        await eventually(lambda: not agent._connected.is_set(), within=10)
        await asyncio.to_thread(server.mosquitto.start)
        await eventually(agent._connected.is_set, within=15)
        # Back, the agent renews its lease, and the daemon renews it (no seat.lost).
        await eventually(lambda: agent._lease_ends > renewed, within=20)
        await eventually_listed(
            server, lambda listing: [c["client"] for c in listing] == [agent.client_id]
        )
        assert agent._grant is not None
        assert agent._grant.lease == lease
        assert not agent.shutdown_requested.is_set()


async def test_daemon_restart_keeps_leases(server_factory, tmp_path):
    server = server_factory("mosquitto")
    daemon = server.start_daemon()
    assert unlock(server, issue()).returncode == 0
    async with make_agent(server, tmp_path, "loyal") as agent:
        lease, renewed = agent._grant.lease, agent._lease_ends
        # A clean stop writes the leases staged behind.
        assert await asyncio.to_thread(daemon.stop) == 0
        await asyncio.to_thread(server.start_daemon)
        await agent._send(protocol.SeatRenew(client=agent.client_id, lease=lease), "renew")
        # The restarted daemon knows the lease: seat.renewed, not seat.lost.
        await eventually(lambda: agent._lease_ends > renewed)
        assert agent._grant is not None
        assert agent._grant.lease == lease
        listing = await listed(server)
        assert [c["client"] for c in listing] == [agent.client_id]
        assert not agent.shutdown_requested.is_set()


async def test_a_daemon_gone_longer_than_the_grace_stops_the_application(server_factory, tmp_path):
    server = server_factory("mosquitto")
    daemon = server.start_daemon()
    async with make_agent(server, tmp_path, "patient", offline_grace=3) as agent:
        await asyncio.to_thread(daemon.kill)
        reason = await asyncio.wait_for(agent.shutdown_requested.wait(), 20)
        assert reason.code == "offline"
        assert "offline grace" in reason.message


async def test_an_agent_offline_during_the_unlock_shuts_down_when_it_returns(
    server_factory,
    tmp_path,
):
    server = server_factory("mosquitto")
    daemon = server.start_daemon()
    sleeper = start_supervised(server, tmp_path, "sleeper")
    await eventually((tmp_path / "sleeper.env").exists, within=20)
    os.kill(sleeper.pid, signal.SIGSTOP)  # frozen: the broker drops it after its keepalive
    try:
        # The broker publishes its will once the keepalive (5 s, x1.5) has passed.
        await eventually(lambda: "client gone (will)" in daemon.log(), within=20)
        assert unlock(server, issue(), "--wait", "0").returncode == 0
    finally:
        os.kill(sleeper.pid, signal.SIGCONT)
    # Back, it reconnects, reads the retained state's new generation, and stops.
    assert await asyncio.to_thread(sleeper.wait, 30) == 75
    assert (tmp_path / "sleeper.term").exists()
