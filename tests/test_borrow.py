"""Borrowed seats end to end: real daemon, real Mosquitto, real ``floatkey-agent`` processes.

A borrowed seat runs its application with the daemon and the broker stopped, until the
borrow ends (the agent's clock is moved ahead with libfaketime, not waited for); it is
counted by the daemon until returned; every limit refuses with its reason; a token
edited or taken to another computer is refused; a clock set back does not lengthen it.
Every wait is for a condition.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import command
from floatkey import borrow as borrowing
from floatkey import hostid
from floatkey.config import load_agent_config
from floatkey.errors import BorrowError, NoAnswer
from floatkey.licensefile import verify_license_file
from floatkey.signing import b64url_decode, b64url_encode
from licensing import ctl, issue, unlock
from servers import (
    clients,
    eventually,
    free_port,
    make_agent,
    required_tool,
    write_agent_config,
)

pytestmark = pytest.mark.broker
CHILD = Path(__file__).with_name("child_app.py")
DAY_S = 86_400
BORROWING = """
[borrow]
enabled = true
max_borrow_days = 2
max_borrowed = 1
"""


def faked(offset_s: int) -> tuple[str, ...]:
    """The command prefix running a process with its clock ``offset_s`` seconds away."""
    required_tool("faketime")
    libfaketime = next(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"), None)
    assert libfaketime is not None, "libfaketime.so.1 not found"
    return ("env", f"LD_PRELOAD={libfaketime}", f"FAKETIME={offset_s:+d}")


def agent_cli(
    config: Path, *args: str, prefix: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: PLW1510 - the caller checks the status
        [*prefix, command("floatkey-agent"), *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def supervised(
    config: Path, tmp_path: Path, name: str, prefix: tuple[str, ...] = ()
) -> subprocess.Popen[bytes]:
    """``floatkey-agent run`` of the stand-in application (tests/child_app.py)."""
    argv = [*prefix, command("floatkey-agent"), "run", "--config", str(config)]
    argv += ["--app", "flowdesigner", "--", sys.executable, str(CHILD), str(tmp_path / name)]
    with (tmp_path / f"{name}.out").open("ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)


def output(tmp_path: Path, name: str) -> str:
    return (tmp_path / f"{name}.out").read_text(errors="replace")


async def exited(process: subprocess.Popen[bytes], within: float = 60) -> int:
    await eventually(lambda: process.poll() is not None, within=within)
    return process.returncode


def borrowed_rows(server) -> list[dict[str, object]]:
    return [row for row in clients(server) if row["borrowed_until"] is not None]


def stop_everything(server) -> None:
    """The laptop leaves: neither the daemon nor the broker can be reached any more."""
    for daemon in server.processes:
        if daemon.process and daemon.process.poll() is None:
            daemon.stop()
    server.mosquitto.stop()


@pytest.fixture
def lending(server_factory):
    server = server_factory("mosquitto", BORROWING)
    server.start_daemon()
    assert unlock(server, issue(seats=3)).returncode == 0
    return server


async def test_a_borrowed_seat_runs_without_the_server_until_it_ends(lending, tmp_path):
    config = write_agent_config(lending, tmp_path / "laptop.toml")
    done = agent_cli(config, "borrow", "--days", "1", "--app", "flowdesigner")
    assert done.returncode == 0, done.stderr
    assert "Borrowed a seat" in done.stdout
    state = json.loads((tmp_path / "laptop-known.json").read_text())
    assert list(state["borrows"]) == [lending.topics.root]
    assert (tmp_path / "laptop-known.json").stat().st_mode & 0o777 == 0o600
    rows = await asyncio.to_thread(borrowed_rows, lending)
    assert len(rows) == 1
    assert rows[0]["app"] == "flowdesigner"
    until = dt.datetime.fromisoformat(str(rows[0]["borrowed_until"]))
    assert until.timestamp() > time.time() + DAY_S - 60

    stop_everything(lending)
    # The agent's clock 20 s before the borrow's end: it runs, then stops at the end.
    app = supervised(config, tmp_path, "app", prefix=faked(DAY_S - 20))
    await eventually((tmp_path / "app.env").exists, within=30)
    env = json.loads((tmp_path / "app.env").read_text())
    assert env["FLOATKEY_FEATURES"] == "dataflow,subflow,workflow"
    license_file = tmp_path / "license-copy.json"
    license_file.write_text(env["license_file_contents"])
    verified = verify_license_file(license_file, lending.server_key_text())
    assert verified.features == {"dataflow", "subflow", "workflow"}
    assert "running on the seat borrowed" in output(tmp_path, "app")
    assert await exited(app) == 75
    assert (tmp_path / "app.term").exists()  # asked to stop, like any expiry
    assert "the borrow ended" in output(tmp_path, "app")
    # Ended: forgotten; the next start asks the server (unreachable now: 76).
    assert (
        "borrows" not in json.loads((tmp_path / "laptop-known.json").read_text())
        or not (json.loads((tmp_path / "laptop-known.json").read_text())["borrows"])
    )


async def test_a_clock_set_back_between_two_starts_is_refused_offline(lending, tmp_path):
    config = write_agent_config(lending, tmp_path / "laptop.toml")
    assert agent_cli(config, "borrow", "--days", "1").returncode == 0
    stop_everything(lending)
    # The laptop runs the application two hours later...
    first = supervised(config, tmp_path, "first", prefix=faked(7200))
    await eventually((tmp_path / "first.env").exists, within=30)
    first.terminate()
    await exited(first)
    # ...then its clock is set back two hours: taken as the latest time seen, no time
    # would have passed while the application was closed. Not run offline.
    second = supervised(config, tmp_path, "second")
    assert await exited(second) == 76  # it needs the server, unreachable
    assert "clock is behind the latest time floatkey saw" in output(tmp_path, "second")
    assert not (tmp_path / "second.env").exists()
    # Set right again (a little behind is a clock corrected, not set back): it runs.
    third = supervised(config, tmp_path, "third", prefix=faked(7200 - 60))
    await eventually((tmp_path / "third.env").exists, within=30)
    third.terminate()
    await exited(third)


async def test_one_borrowed_seat_runs_one_application_and_is_not_returned_under_it(
    lending, tmp_path
):
    config = write_agent_config(lending, tmp_path / "laptop.toml")
    assert agent_cli(config, "borrow", "--days", "1").returncode == 0
    stop_everything(lending)
    app = supervised(config, tmp_path, "app")
    try:
        await eventually((tmp_path / "app.env").exists, within=30)
        second = supervised(config, tmp_path, "second")
        assert await exited(second) == 76  # asked the server for a seat of its own
        assert "in use by another application on this computer" in output(tmp_path, "second")
        assert not (tmp_path / "second.env").exists()
        refused = agent_cli(config, "return")
        assert refused.returncode == 69
        assert "stop the application first" in refused.stderr
        assert app.poll() is None  # not knocked off
    finally:
        app.terminate()
        await exited(app)
    assert agent_cli(config, "borrow", "--status").returncode == 0  # still held


async def test_a_borrow_whose_answer_was_lost_is_asked_for_again_as_the_same_seat(
    lending, tmp_path, monkeypatch
):
    asked = borrowing._ask

    async def answer_lost(*args, **kwargs):
        await asked(*args, **kwargs)
        raise NoAnswer("the answer was lost")

    agent = make_agent(lending, tmp_path, "lib")
    with monkeypatch.context() as patch:
        patch.setattr(borrowing, "_ask", answer_lost)
        with pytest.raises(NoAnswer):
            await agent.borrow(days=0.5)
    # max_borrowed = 1: a second seat would be refused; the same one is sent again.
    held = await make_agent(lending, tmp_path, "lib").borrow(days=0.5)
    (row,) = await asyncio.to_thread(borrowed_rows, lending)
    assert row["client"] == held.token.client


async def test_return_frees_the_seat_at_once_for_the_first_in_line(server_factory, tmp_path):
    server = server_factory("mosquitto", BORROWING)
    server.start_daemon()
    assert unlock(server, issue(seats=1)).returncode == 0
    config = write_agent_config(server, tmp_path / "laptop.toml")
    assert agent_cli(config, "borrow", "--days", "0.5").returncode == 0
    status = agent_cli(config, "borrow", "--status")
    assert status.returncode == 0
    assert "Borrowed from" in status.stdout
    other = write_agent_config(server, tmp_path / "desk.toml")
    argv = [command("floatkey-agent"), "run", "--config", str(other), "--wait"]
    argv += ["--", sys.executable, str(CHILD), str(tmp_path / "w")]
    with (tmp_path / "w.out").open("ab") as out:
        waiter = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        await eventually(lambda: "waiting in line" in output(tmp_path, "w"), within=30)
        done = agent_cli(config, "return")
        assert done.returncode == 0, done.stderr
        assert "returned" in done.stdout
        await eventually((tmp_path / "w.env").exists, within=20)
        assert await asyncio.to_thread(borrowed_rows, server) == []
        assert agent_cli(config, "borrow", "--status").returncode == 1
        nothing = agent_cli(config, "return")
        assert nothing.returncode == 69
        assert "no borrowed seat" in nothing.stderr
    finally:
        waiter.terminate()
        waiter.wait(20)


async def test_borrowing_is_off_unless_enabled(server_factory, tmp_path):
    closed = server_factory("mosquitto")
    closed.start_daemon()
    assert unlock(closed, issue(seats=3)).returncode == 0
    refused = agent_cli(write_agent_config(closed, tmp_path / "a.toml"), "borrow", "--days", "1")
    assert refused.returncode == 69
    assert "does not lend seats for offline use" in refused.stderr
    assert "[borrow] enabled" in refused.stderr


async def test_each_limit_refuses_with_its_reason(lending, tmp_path):
    first = write_agent_config(lending, tmp_path / "b.toml")
    too_long = agent_cli(first, "borrow", "--days", "3")
    assert too_long.returncode == 69
    assert "at most 2 days" in too_long.stderr
    assert agent_cli(first, "borrow", "--days", "2").returncode == 0
    again = agent_cli(first, "borrow", "--days", "1")
    assert again.returncode == 69
    assert "already borrows a seat" in again.stderr
    second = agent_cli(write_agent_config(lending, tmp_path / "c.toml"), "borrow", "--days", "1")
    assert second.returncode == 69
    assert "the most this server lends at once" in second.stderr
    assert "Traceback" not in second.stderr


async def test_an_edited_or_copied_token_is_refused(lending, tmp_path, monkeypatch):
    config = write_agent_config(lending, tmp_path / "laptop.toml")
    assert agent_cli(config, "borrow", "--days", "1").returncode == 0
    loaded = load_agent_config(config)
    assert borrowing.held_borrow(loaded) is not None
    # Another computer (another machine id): refused, as a copy would be.
    monkeypatch.setattr(borrowing, "host_identity", lambda: "0" * 32)
    with pytest.raises(BorrowError) as copied:
        borrowing.held_borrow(loaded)
    assert copied.value.problem == "other_host"
    monkeypatch.undo()

    # A week more, written into the token: the signature no longer holds.
    state_file = tmp_path / "laptop-known.json"
    state = json.loads(state_file.read_text())
    entry = state["borrows"][lending.topics.root]
    envelope = json.loads(entry["token"])
    body = json.loads(b64url_decode(envelope["body"]))
    body["end"] += 7 * DAY_S * 1000
    envelope["body"] = b64url_encode(json.dumps(body).encode())
    entry["token"] = json.dumps(envelope)
    entry["local_end_ms"] += 7 * DAY_S * 1000
    state_file.write_text(json.dumps(state))
    status = agent_cli(config, "borrow", "--status")
    assert status.returncode == 69
    assert "does not carry the license server's signature" in status.stderr

    stop_everything(lending)
    app = supervised(config, tmp_path, "app")
    assert await exited(app) == 76  # not run offline: it needs the server, unreachable
    assert "does not carry the license server's signature" in output(tmp_path, "app")
    assert not (tmp_path / "app.env").exists()


async def test_an_administrator_release_ends_the_borrow_when_the_laptop_connects(lending, tmp_path):
    config = write_agent_config(lending, tmp_path / "laptop.toml")
    assert agent_cli(config, "borrow", "--days", "1").returncode == 0
    (row,) = await asyncio.to_thread(borrowed_rows, lending)
    listing = await asyncio.to_thread(ctl, lending, "clients")
    assert "Borrowed seats" in listing.stdout
    released = await asyncio.to_thread(ctl, lending, "release", str(row["client"]))
    assert released.returncode == 0, released.stderr
    assert "borrowed" in released.stdout
    assert await asyncio.to_thread(borrowed_rows, lending) == []
    # Offline it would still run; connected, it learns at once.
    app = supervised(config, tmp_path, "app")
    assert await exited(app) == 77
    assert "an administrator released it" in output(tmp_path, "app")


async def test_an_administrator_release_stops_a_borrowed_seat_running_connected(lending, tmp_path):
    config = write_agent_config(lending, tmp_path / "laptop.toml")
    assert agent_cli(config, "borrow", "--days", "1").returncode == 0
    app = supervised(config, tmp_path, "app")
    await eventually(
        lambda: "borrowed seat confirmed by the license server" in output(tmp_path, "app"),
        within=30,
    )
    (row,) = await asyncio.to_thread(borrowed_rows, lending)
    released = await asyncio.to_thread(ctl, lending, "release", str(row["client"]))
    assert released.returncode == 0, released.stderr
    assert await exited(app) == 77
    assert "An administrator released this seat" in output(tmp_path, "app")
    assert agent_cli(config, "borrow", "--status").returncode == 1  # forgotten


async def test_a_new_license_stops_a_borrowed_seat_that_reconnects(lending, tmp_path):
    config = write_agent_config(lending, tmp_path / "laptop.toml")
    assert agent_cli(config, "borrow", "--days", "1").returncode == 0
    assert unlock(lending, issue(seats=5)).returncode == 0
    # Until the laptop connects, its seat stays counted (it runs on under its token).
    assert len(await asyncio.to_thread(borrowed_rows, lending)) == 1
    app = supervised(config, tmp_path, "app")
    assert await exited(app) == 75
    assert "A new license was activated" in output(tmp_path, "app")
    # The token of the old license is dropped: the next start asks the server.
    assert agent_cli(config, "borrow", "--status").returncode == 1
    # Connected, it told the daemon, which ended the borrow.
    await eventually(lambda: borrowed_rows(lending) == [], within=20)


async def test_the_library_borrows_runs_without_the_daemon_and_returns(lending, tmp_path):
    held = await make_agent(lending, tmp_path, "lib").borrow(days=0.5)
    assert held.features == {"dataflow", "subflow", "workflow"}
    for daemon in lending.processes:
        daemon.stop()
    async with make_agent(lending, tmp_path, "lib") as agent:  # no daemon to answer
        assert agent.borrowed is not None
        assert agent.licensed
        agent.require("dataflow")
        assert agent.license.licensee == "Ada Lovelace"
        assert not agent.shutdown_requested.is_set()
    lending.start_daemon()
    assert (await asyncio.to_thread(borrowed_rows, lending))[0]["user"]
    message = await make_agent(lending, tmp_path, "lib").return_borrow()
    assert "returned" in message
    assert await asyncio.to_thread(borrowed_rows, lending) == []
    assert borrowing.held_borrow(load_agent_config(tmp_path / "lib.toml")) is None


async def test_a_borrow_trusts_the_server_key_on_first_use_and_keeps_both(lending, tmp_path):
    config = write_agent_config(lending, tmp_path / "fresh.toml", pin=False)
    done = agent_cli(config, "borrow", "--days", "1")
    assert done.returncode == 0, done.stderr
    state = json.loads((tmp_path / "fresh-known.json").read_text())
    assert state["servers"] == {lending.topics.root: lending.server_key_text()}
    assert list(state["borrows"]) == [lending.topics.root]
    assert agent_cli(config, "borrow", "--status").returncode == 0


async def test_a_clock_once_ahead_spoils_no_later_borrow_and_one_already_ended_goes_back(
    server_factory, tmp_path
):
    server = server_factory("mosquitto", "[borrow]\nenabled = true\nmax_borrow_days = 2\n")
    server.start_daemon()
    assert unlock(server, issue(seats=3)).returncode == 0
    config = write_agent_config(server, tmp_path / "laptop.toml")
    # Two days ahead, a borrow of one day ends, on this clock, before it starts: given back.
    ahead = agent_cli(config, "borrow", "--days", "1", prefix=faked(2 * DAY_S))
    assert ahead.returncode == 69
    assert "has passed already" in ahead.stderr
    assert await asyncio.to_thread(borrowed_rows, server) == []
    # A borrow seen from two days ahead: ended there (the latest time seen is now ahead).
    assert agent_cli(config, "borrow", "--days", "1").returncode == 0
    assert agent_cli(config, "borrow", "--status", prefix=faked(2 * DAY_S)).returncode == 1
    # The clock set right, a new borrow is not taken for a clock set back, nor ended.
    done = agent_cli(config, "borrow", "--days", "1")
    assert done.returncode == 0, done.stderr
    status = agent_cli(config, "borrow", "--status")
    assert status.returncode == 0, status.stderr
    assert "Borrowed from" in status.stdout


async def test_a_computer_without_a_machine_id_may_not_borrow(lending, tmp_path, monkeypatch):
    monkeypatch.setattr(hostid, "MACHINE_ID_FILES", (tmp_path / "no-machine-id",))
    with pytest.raises(BorrowError) as refused:
        await make_agent(lending, tmp_path, "lib").borrow(days=1)
    assert refused.value.problem == "no_machine_id"
    assert "/etc/machine-id" in refused.value.message
    assert await asyncio.to_thread(borrowed_rows, lending) == []


async def test_a_borrowed_agent_takes_the_daemons_state_answer(lending, tmp_path):
    # The state.request sent with the borrow check is answered on the client topic: a
    # borrowed agent takes that state (not a bad body), so it learns a new generation
    # from the daemon even where the broker node retained no state.
    await make_agent(lending, tmp_path, "lib").borrow(days=0.5)
    async with make_agent(lending, tmp_path, "lib") as agent:
        assert agent.borrowed is not None
        await eventually(lambda: agent._synced, within=20)
        assert agent.drops["bad_body"] == 0
        assert agent.license.generation == 1
    assert "returned" in await make_agent(lending, tmp_path, "lib").return_borrow()


async def test_borrow_and_return_try_every_broker_address_and_trust_the_signed_identity(
    lending, tmp_path
):
    # [broker] hosts: a node that is down and the broker; no key pinned yet. The borrow
    # goes to whichever works, and trusts the daemon's signed identity.
    config = write_agent_config(lending, tmp_path / "fresh.toml", pin=False)
    dead = free_port()
    text = config.read_text()
    text = text.replace('host = "127.0.0.1"\n', "").replace(f"port = {lending.port}\n", "")
    text = text.replace(
        "[broker]\n", f'[broker]\nhosts = ["127.0.0.1:{dead}", "127.0.0.1:{lending.port}"]\n'
    )
    config.write_text(text)
    done = agent_cli(config, "borrow", "--days", "1")
    assert done.returncode == 0, done.stderr
    state = json.loads((tmp_path / "fresh-known.json").read_text())
    assert state["servers"] == {lending.topics.root: lending.server_key_text()}
    back = agent_cli(config, "return")
    assert back.returncode == 0, back.stderr
    assert await asyncio.to_thread(borrowed_rows, lending) == []
    # Every address down: the refusal names them all.
    stop_everything(lending)
    failed = agent_cli(config, "borrow", "--days", "1")
    assert failed.returncode != 0
    assert f"mqtt://127.0.0.1:{dead}" in failed.stderr
    assert f"mqtt://127.0.0.1:{lending.port}" in failed.stderr
