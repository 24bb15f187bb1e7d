"""floatkeyctl and the other commands as scripts meet them: --version, a closed pipe."""

from __future__ import annotations

import os
import subprocess

import pytest

from conftest import REPO, command, run
from licensing import issue

pytestmark = pytest.mark.broker


@pytest.mark.parametrize("name", ["floatkeyd", "floatkeyctl", "floatkey-agent", "floatkey-vendor"])
def test_every_command_says_its_version_and_the_product_version_it_takes(name):
    result = run(name, "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{name} ")
    assert "product keys for version 8" in result.stdout


def closed_pipe_run(*argv: str) -> subprocess.CompletedProcess[str]:
    """Run a command whose stdout is a pipe nobody reads any more (``| head -0``).

    The read end is closed before the command starts, so its first write meets a closed
    pipe whatever the timing; and with Python's usual buffered stdout (the tests' own
    PYTHONUNBUFFERED removed) that write is the flush at exit.
    """
    read_end, write_end = os.pipe()
    os.close(read_end)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    try:
        return subprocess.run(
            argv,
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
            env=env,
        )
    finally:
        os.close(write_end)


def test_a_reader_that_goes_away_is_no_failure(server_factory, tmp_path):
    server = server_factory("mosquitto")
    server.start_daemon()
    config = str(server.config_path)
    status = closed_pipe_run(command("floatkeyctl"), "status", "--config", config)
    assert (status.returncode, status.stderr) == (0, "")
    unlocked = closed_pipe_run(
        command("floatkeyctl"),
        "unlock",
        "--config",
        config,
        "--name",
        "Ada Lovelace",
        "--organization",
        "Analytical Engines Ltd",
        "--key",
        issue(seats=2),
        "--wait",
        "0",
    )
    assert (unlocked.returncode, unlocked.stderr) == (0, "")
    assert run("floatkeyctl", "status", "--json", "--config", config).stdout.count("licensed")
    created = closed_pipe_run(
        command("floatkeyctl"), "admin-key", "create", "--out", str(tmp_path / "admin.key")
    )
    assert created.returncode == 0, created.stderr
    assert "Exception ignored" not in created.stderr, created.stderr  # only its note
    features = closed_pipe_run(
        command("floatkey-vendor"), "features", "--catalogue", str(REPO / "config/product.toml")
    )
    assert (features.returncode, features.stderr) == (0, ""), features.stderr


def test_an_unreachable_embedded_broker_is_a_daemon_that_is_not_running(server_factory):
    server = server_factory("embedded")
    server.start_daemon().stop()  # its logins exist; nothing serves its port now
    result = run("floatkeyctl", "status", "--config", str(server.config_path), "--timeout", "2")
    assert result.returncode == 5
    assert "floatkeyd serves the broker itself" in result.stderr
    assert "is floatkeyd running" in result.stderr


async def test_a_released_application_exits_77_which_the_unit_does_not_restart(
    server_factory, tmp_path
):
    import asyncio  # noqa: PLC0415
    import sys  # noqa: PLC0415

    from licensing import ctl  # noqa: PLC0415
    from servers import REPO, clients, eventually, write_agent_config  # noqa: PLC0415

    server = server_factory("mosquitto")
    server.start_daemon()
    assert (await asyncio.to_thread(ctl, server, "status")).returncode == 0
    config = write_agent_config(server, tmp_path / "app.toml")
    argv = [command("floatkey-agent"), "run", "--config", str(config), "--app", "app", "--"]
    argv += [sys.executable, str(REPO / "tests" / "child_app.py"), str(tmp_path / "app")]
    with (tmp_path / "agent.err").open("wb") as err:
        agent = subprocess.Popen(
            argv,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        listed = await eventually(lambda: clients(server), within=20)
        released = await asyncio.to_thread(ctl, server, "release", listed[0]["client"])
        assert released.returncode == 0, released.stderr
        assert await asyncio.to_thread(agent.wait, 30) == 77
        assert "An administrator released this seat" in (tmp_path / "agent.err").read_text()
    finally:
        if agent.poll() is None:
            agent.kill()
    unit = (REPO / "systemd" / "floatkey-agent@.service").read_text()
    assert "RestartPreventExitStatus=69 77 78" in unit


async def test_an_admin_key_taken_back_is_refused_at_once_and_both_are_audited(
    server_factory, tmp_path
):
    import asyncio  # noqa: PLC0415
    import json  # noqa: PLC0415

    from licensing import ctl  # noqa: PLC0415

    server = server_factory("mosquitto")
    server.start_daemon()
    config = str(server.config_path)
    extra = tmp_path / "extra.key"
    assert run("floatkeyctl", "admin-key", "create", "--out", str(extra)).returncode == 0
    public = (tmp_path / "extra.key.pub").read_text().strip()
    assert run("floatkeyd", "admin-key", "add", public, "--config", config).returncode == 0
    as_extra = ("status", "--admin-key", str(extra), "--timeout", "5")
    assert (await asyncio.to_thread(ctl, server, *as_extra)).returncode == 0
    kid = run("floatkeyd", "admin-key", "list", "--config", config).stdout.split()[-2]
    removed = run("floatkeyd", "admin-key", "remove", kid, "--config", config)
    assert removed.returncode == 0, removed.stderr
    refused = await asyncio.to_thread(ctl, server, *as_extra)
    assert refused.returncode == 4
    assert "not_authorized" in refused.stderr
    again = run("floatkeyd", "admin-key", "remove", kid, "--config", config)
    assert again.returncode == 1
    assert "no admin key with that id" in again.stderr
    rows = json.loads((await asyncio.to_thread(ctl, server, "audit", "--json")).stdout)["entries"]
    assert [(r["actor"], r["action"]) for r in rows if r["action"].startswith("admin-key")] == [
        ("local", "admin-key.add"),
        ("local", "admin-key.remove"),
    ]
    assert (await asyncio.to_thread(ctl, server, "audit", "verify")).returncode == 0


def test_release_help_says_what_happens_and_where_the_client_id_comes_from():
    result = run("floatkeyctl", "release", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "the application is told to stop" in text
    assert "the seat is free for another client at once" in text
    assert (
        "exits with status 77, which the shipped floatkey-agent@.service does not restart" in text
    )
    assert "CLIENT_ID the client, as the CLIENT column of `floatkeyctl clients` shows it" in text


async def test_status_shows_feature_display_names_from_the_daemons_catalogue(server_factory):
    import asyncio  # noqa: PLC0415

    from conftest import CONFIG  # noqa: PLC0415
    from licensing import ctl, unlock  # noqa: PLC0415

    server = server_factory("mosquitto", extra=f'catalogue = "{CONFIG / "product.toml"}"')
    server.start_daemon()
    key = issue(seats=3, features="dataflow,workflow,reporting")
    unlocked = await asyncio.to_thread(unlock, server, key)
    assert "features Dataflow, Reporting, Workflow." in unlocked.stdout
    status = await asyncio.to_thread(ctl, server, "status")
    assert status.returncode == 0, status.stderr
    assert "Features             Dataflow, Reporting, Workflow\n" in status.stdout


async def test_unlock_says_it_once_then_counts_one_client_down(server_factory, tmp_path):
    import asyncio  # noqa: PLC0415

    from licensing import unlock  # noqa: PLC0415
    from servers import make_agent  # noqa: PLC0415

    server = server_factory("mosquitto")
    server.start_daemon()
    async with make_agent(server, tmp_path, "one"):
        result = await asyncio.to_thread(unlock, server, issue(seats=2))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("The license has been successfully activated: 2 seats")
    assert lines[0].endswith("1 connected client was told to shut down.")
    assert lines[-2:] == [
        "Waiting for the client to shut down: 1 of 1",
        "The client has shut down; it can restart under the new license.",
    ]
    assert result.stdout.count("shut down") == 3
