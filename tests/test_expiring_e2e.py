"""Warned before expiry, end to end: a real daemon whose clock libfaketime moves ahead."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import command
from floatkey import protocol, verify_license_file
from floatkey.envelope import open_envelope
from floatkey.signing import key_id
from licensing import NAME, ORG, issue, unlock
from servers import (
    eventually,
    free_port,
    make_agent,
    raw_client,
    required_tool,
    write_agent_config,
)

pytestmark = pytest.mark.broker

CHILD = Path(__file__).with_name("child_app.py")


def faked_clock(at: dt.datetime) -> tuple[str, ...]:
    """The command prefix that runs a process with its clock moved ahead to about ``at``.

    A relative offset, so that every process started with it (the daemon, floatkeyctl)
    reads the same clock: an admin command's ``ts`` must be within 60 s of the daemon's.
    ``env`` execs the command in place (signals reach it).
    """
    required_tool("faketime")
    libfaketime = next(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"), None)
    assert libfaketime is not None, "libfaketime.so.1 not found"
    offset = int(at.timestamp() - time.time())
    return ("env", f"LD_PRELOAD={libfaketime}", f"FAKETIME=+{offset}")


def ctl_at(prefix: tuple[str, ...], server, *args: str) -> subprocess.CompletedProcess[str]:
    """floatkeyctl on the daemon's (moved) clock."""
    return subprocess.run(  # noqa: PLW1510 - the caller checks the status
        [*prefix, command("floatkeyctl"), *args, "--config", str(server.config_path)],
        capture_output=True,
        text=True,
        timeout=90,
    )


def supervised(server, tmp_path: Path, name: str) -> subprocess.Popen[str]:
    """``floatkey-agent run`` of the stand-in application (tests/child_app.py)."""
    config = write_agent_config(server, tmp_path / f"{name}.toml")
    argv = [command("floatkey-agent"), "run", "--config", str(config), "--app", "flowdesigner"]
    argv += ["--", sys.executable, str(CHILD), str(tmp_path / name)]
    with (tmp_path / f"{name}.out").open("ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        sample.name + json.dumps(sample.labels, sort_keys=True): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_a_daemon_seven_days_before_expiry_warns_once_and_says_so(  # noqa: PLR0915 - one story
    server_factory, tmp_path
):
    metrics = free_port()
    server = server_factory("mosquitto", extra=f'[metrics]\nlisten = "127.0.0.1:{metrics}"')
    expires = dt.datetime.now(dt.UTC).date() + dt.timedelta(days=100)
    seven_days_before = faked_clock(
        dt.datetime.combine(expires - dt.timedelta(days=7), dt.time(12), dt.UTC)
    )
    daemon = server.start_daemon()
    assert unlock(server, issue("--expires", expires.isoformat())).returncode == 0
    seen = []
    async with contextlib.AsyncExitStack() as stack:
        agent = await stack.enter_async_context(make_agent(server, tmp_path, "watcher"))
        agent.on_license_expiring(seen.append)
        app = supervised(server, tmp_path, "app")
        stack.callback(lambda: app.poll() is None and app.kill())
        await eventually((tmp_path / "app.env").exists, within=20)
        env = json.loads((tmp_path / "app.env").read_text())
        license_file = Path(env["FLOATKEY_LICENSE_FILE"])
        assert json.loads(env["license_file_contents"])["expiring"] is None
        assert daemon.stop() == 0

        # The daemon comes back 93 days later, inside the 30- and 7-day thresholds it
        # never sent: one event, for the 7 days actually left.
        moved = server.start_daemon(prefix=seven_days_before)
        await eventually(lambda: seen, within=30)
        [warning] = seen
        assert (warning.days_left, warning.expires) == (7, expires.isoformat())
        assert agent.expiring == warning
        assert "expires in 7 days" in warning.message
        assert not agent.shutdown_requested.is_set()  # a warning stops nothing

        # The supervisor logs it once and writes it into the license file, which still
        # verifies against the server key.
        def file_warning() -> dict | None:
            return json.loads(license_file.read_text())["expiring"]

        written = await eventually(file_warning, within=15)
        assert written["days_left"] == 7
        assert written["expires"] == expires.isoformat()
        assert "expires in 7 days" in written["message"]
        verified = verify_license_file(license_file, server.server_key_text())
        assert verified.features == {"dataflow", "subflow", "workflow"}
        log = (tmp_path / "app.out").read_text()
        assert log.count("license expires soon") == 1, log
        assert app.poll() is None

        # floatkeyctl status, on the daemon's clock, says the days left.
        text = await asyncio.to_thread(ctl_at, seven_days_before, server, "status")
        assert text.returncode == 0, text.stderr
        assert f"{expires.isoformat()} (in 7 days)" in text.stdout
        as_json = await asyncio.to_thread(ctl_at, seven_days_before, server, "status", "--json")
        report = json.loads(as_json.stdout)
        assert (report["days_left"], report["expiring"]) == (7, True)

        # The real process serves its metrics: the expiry time Prometheus alerts on.
        figures = await asyncio.to_thread(scrape, metrics)
        deadline = dt.datetime.combine(expires + dt.timedelta(days=1), dt.time(), dt.UTC)
        assert figures["floatkey_license_expiry_timestamp_seconds{}"] == deadline.timestamp()
        assert figures['floatkey_license_status{"status": "licensed"}'] == 1
        assert figures["floatkey_broker_connected{}"] == 1

        # A restart inside the same window sends nothing again. Events arrive in order:
        # a warning sent at start would come before the activation of the next key.
        assert moved.stop() == 0
        again = server.start_daemon(prefix=seven_days_before)
        events = []
        async with raw_client(server, "floatkey-admin", "expiry-watch") as watch:
            await watch.subscribe(server.topics.events, qos=1)
            marker = await asyncio.to_thread(ctl_at, seven_days_before, server, "unlock",
                "--name", NAME, "--organization", ORG, "--key", issue(), "--yes")  # fmt: skip
            assert marker.returncode == 0, marker.stdout + marker.stderr
            key = server.server_key()
            async with asyncio.timeout(15):
                async for message in watch.messages:
                    if message.topic.value != server.topics.events:
                        continue
                    body = open_envelope(
                        bytes(message.payload), server.topics.events, {key_id(key): key}
                    )
                    events.append(protocol.decode(body, protocol.Event).name)
                    if events[-1] == "license.activated":
                        break
        assert events == ["license.activated"]
        assert len(seen) == 1
        assert app.wait(15) == 75  # the new key restarts the application, as always
        assert again.stop() == 0
