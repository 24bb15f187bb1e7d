"""The seat queue and idle reclaim with real ``floatkey-agent`` processes on real brokers.

Every wait is for a condition: a child application's files (tests/child_app.py writes
OUT.env when it starts and OUT.term on SIGTERM), the supervisor's output, or the queue as
``floatkeyctl clients --json`` shows it.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import command
from licensing import ctl, issue, unlock
from servers import clients, eventually, write_agent_config

pytestmark = pytest.mark.broker
CHILD = Path(__file__).with_name("child_app.py")


def start(server, tmp_path: Path, name: str, *options: str) -> subprocess.Popen[bytes]:
    """``floatkey-agent run --client-id NAME OPTIONS -- child_app.py``."""
    config = write_agent_config(server, tmp_path / f"{name}.toml")
    argv = [
        command("floatkey-agent"),
        "run",
        "--config",
        str(config),
        "--app",
        "flowdesigner",
        "--client-id",
        name,
        *options,
        "--",
        sys.executable,
        str(CHILD),
        str(tmp_path / name),
    ]
    with (tmp_path / f"{name}.out").open("ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)


def output(tmp_path: Path, name: str) -> str:
    return (tmp_path / f"{name}.out").read_text(errors="replace")


def running(tmp_path: Path, name: str) -> bool:
    """Whether ``name``'s application has started (it has a seat)."""
    return (tmp_path / f"{name}.env").exists()


async def waiting(server) -> list[str]:
    """The clients in the queue, first in line first (``floatkeyctl clients --json``)."""
    listing = await asyncio.to_thread(ctl, server, "clients", "--json")
    assert listing.returncode == 0, listing.stderr
    rows = json.loads(listing.stdout)["queue"]
    assert [row["position"] for row in rows] == list(range(1, len(rows) + 1))
    return [row["client"] for row in rows]


async def queue_is(server, expected: list[str], within: float = 20) -> None:
    async def check() -> bool:
        return await waiting(server) == expected

    await eventually(check, within=within, interval=0.1)


def stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def test_two_run_two_wait_in_order_a_will_moves_the_line_and_a_release_lets_one_in(
    server, tmp_path
):
    server.start_daemon()
    assert unlock(server, issue(seats=2)).returncode == 0
    procs = []
    try:
        for name in ("r1", "r2"):
            procs.append(start(server, tmp_path, name, "--wait"))
            await eventually(lambda name=name: running(tmp_path, name), within=20)
        # One after the other, so that the order of the line is known.
        for name, line in (("w1", ["w1"]), ("w2", ["w1", "w2"])):
            procs.append(start(server, tmp_path, name, "--wait"))
            await queue_is(server, line)
        w1 = procs[2]
        assert "waiting in line, position 1" in output(tmp_path, "w1")
        await eventually(lambda: "waiting in line, position 2" in output(tmp_path, "w2"))
        assert not running(tmp_path, "w1")
        assert not running(tmp_path, "w2")

        # A waiter killed outright leaves the line through its will; the next moves up.
        w1.send_signal(signal.SIGKILL)
        w1.wait()
        await queue_is(server, ["w2"])
        procs.append(start(server, tmp_path, "w3", "--wait"))
        await queue_is(server, ["w2", "w3"])

        # An administrator frees a seat: the first in line gets it, the other moves up.
        result = await asyncio.to_thread(ctl, server, "release", "r1")
        assert result.returncode == 0, result.stderr
        await eventually((tmp_path / "r1.term").exists, within=20)
        await eventually(lambda: running(tmp_path, "w2"), within=20)
        assert not running(tmp_path, "w3")
        await queue_is(server, ["w3"])
        seated = {c["client"] for c in await asyncio.to_thread(clients, server)}
        assert seated == {"r2", "w2"}
        assert "All 2 seats are in use" not in output(tmp_path, "w2")
    finally:
        stop_all(procs)


async def test_an_idle_seat_is_warned_then_reclaimed_for_a_waiter_and_activity_keeps_one(
    server_factory, tmp_path
):
    # A warning 3 s after the last activity, the reclaim 9 s later: renewals (every
    # 10/3 s) carry the activity file's time to the daemon well within that.
    server = server_factory("mosquitto", extra="idle_timeout = 12\nidle_warning = 9")
    text = server.config_path.read_text()
    server.config_path.write_text(text.replace("lease_seconds = 30", "lease_seconds = 10"))
    server.start_daemon()
    assert unlock(server, issue(seats=2)).returncode == 0
    activity = {name: tmp_path / f"{name}.activity" for name in ("silent", "busy")}
    procs = []
    try:
        for name in ("silent", "busy"):
            procs.append(start(server, tmp_path, name, "--activity-file", str(activity[name])))
            await eventually(lambda name=name: running(tmp_path, name), within=20)
        procs.append(start(server, tmp_path, "waiter", "--wait"))
        await queue_is(server, ["waiter"])

        warning = "floatkey-agent: Your seat will be released in"
        await eventually(lambda: warning in output(tmp_path, "busy"), within=30)
        activity["busy"].touch()  # the user came back
        await eventually(lambda: warning in output(tmp_path, "silent"), within=30)

        # The silent one is revoked (reason idle) and its application stopped; the
        # waiter gets its seat.
        await eventually((tmp_path / "silent.term").exists, within=30)
        assert procs[0].wait(15) != 0
        assert "idle too long" in output(tmp_path, "silent")
        await eventually(lambda: running(tmp_path, "waiter"), within=20)
        seated = {c["client"] for c in await asyncio.to_thread(clients, server)}
        assert seated == {"busy", "waiter"}

        # The busy one kept its seat: the daemon took the activity, so the seat is warned
        # afresh once idle again, never reclaimed for the first warning.
        await eventually(lambda: output(tmp_path, "busy").count(warning) == 2, within=30)
        assert not (tmp_path / "busy.term").exists()
        assert procs[1].poll() is None
        assert {c["client"] for c in await asyncio.to_thread(clients, server)} >= {"busy"}
    finally:
        stop_all(procs)
