"""What floatkeyctl connects with: floatkeyd.toml or an admin.toml; the server key it prints."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
from pathlib import Path

import pytest

from conftest import CONFIG, command, run
from floatkey.agent import Agent
from floatkey.config import load_agent_config
from floatkey.configfile import load_toml
from floatkeyd.adminconfig import AdminConfig
from floatkeyd.configkind import kind_of
from licensing import NAME, ORG, ctl, issue
from servers import broker_toml, write_agent_config

NEEDED = "floatkeyctl needs the daemon's (floatkeyd.toml) or an admin.toml"


def write_admin_toml(server, path: Path, **fields: str) -> Path:
    """An admin.toml for ``server``: the administrators' login, the development admin key."""
    secret = path.with_name("admin-mqtt-password")
    options = server.broker("floatkey-admin")
    lines = [f'server = "{server.topics.server}"', f'admin_key = "{CONFIG / "dev-admin.key"}"']
    lines += [f'{name} = "{value}"' for name, value in fields.items()]
    path.write_text("\n".join(lines) + "\n\n" + broker_toml(options, password_file=secret))
    return path


def test_the_shipped_admin_toml_is_an_admin_configuration():
    assert kind_of(CONFIG / "admin.toml") == "admin"
    config = load_toml(CONFIG / "admin.toml", AdminConfig)
    assert (config.broker.username, config.broker.port) == ("floatkey-admin", 8883)


@pytest.mark.parametrize(
    ("name", "what"),
    [
        ("agent.dev.toml", "this is an agent configuration (floatkey-agent's)"),
        ("agent.toml", "this is an agent configuration (floatkey-agent's)"),
        ("product.toml", "this is a product catalogue (product.toml)"),
        ("mosquitto.conf", "this is a Mosquitto configuration"),
        ("mosquitto.acl", "this is a Mosquitto ACL file"),
    ],
)
def test_floatkeyctl_says_which_kind_of_file_it_was_given(name, what):
    result = run("floatkeyctl", "status", "--config", str(CONFIG / name))
    assert result.returncode == 1
    assert f"{what}; {NEEDED}" in result.stderr
    assert "unknown field" not in result.stderr
    assert "Traceback" not in result.stderr


def test_a_file_of_no_known_kind_says_what_floatkeyctl_looks_for(tmp_path):
    path = tmp_path / "what.toml"
    path.write_text('server = "licenses"\n')
    result = run("floatkeyctl", "status", "--config", str(path))
    assert result.returncode == 1
    assert "sets neither vendor_public_key" in result.stderr
    assert NEEDED in result.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ("floatkeyctl", "status"),
        ("floatkeyctl", "unlock"),
        ("floatkeyctl", "server-key"),
    ],
)
def test_every_config_option_says_its_default(argv):
    result = run(*argv, "--help")
    assert result.returncode == 0
    assert "/etc/floatkey/floatkeyd.toml" in " ".join(result.stdout.split())


@pytest.mark.broker
async def test_an_administrators_machine_needs_only_admin_toml(server_factory, tmp_path):
    server = server_factory("mosquitto")
    server.start_daemon()
    # The admin's machine: no daemon config, no state directory; Mosquitto's shipped
    # ACL lets floatkey-admin send admin commands and read its own answers only.
    admin = write_admin_toml(server, tmp_path / "admin.toml")
    assert "floatkeyd" not in admin.read_text()
    status = await asyncio.to_thread(run, "floatkeyctl", "status", "--config", str(admin))
    assert status.returncode == 0, status.stderr
    assert "unlicensed" in status.stdout

    key = issue(seats=4)
    args = ("unlock", "--name", NAME, "--organization", ORG, "--key", key, "--config", str(admin))
    unlocked = await asyncio.to_thread(run, "floatkeyctl", *args)
    assert unlocked.returncode == 0, unlocked.stderr
    assert "successfully activated: 4 seats" in unlocked.stdout

    # The server key printed on the server, pinned in admin.toml, works...
    printed = await asyncio.to_thread(ctl, server, "server-key")
    line = printed.stdout.strip().splitlines()[-1]
    pinned = write_admin_toml(server, tmp_path / "pinned.toml", server_key=_value(line))
    status = await asyncio.to_thread(run, "floatkeyctl", "status", "--config", str(pinned))
    assert status.returncode == 0, status.stderr
    assert "Seats in use" in status.stdout
    # ...and another key is refused, saying so.
    other = (CONFIG / "dev-vendor.key.pub").read_text().strip()
    wrong = write_admin_toml(server, tmp_path / "wrong.toml", server_key=other)
    refused = await asyncio.to_thread(
        run, "floatkeyctl", "status", "--config", str(wrong), "--timeout", "3"
    )
    assert refused.returncode == 5
    assert "not signed by the server key this floatkeyctl trusts" in refused.stderr


@pytest.mark.broker
def test_without_config_floatkeyctl_reads_the_admins_own_admin_toml(server_factory, tmp_path):
    if Path("/etc/floatkey/floatkeyd.toml").exists():
        pytest.skip("this machine has a daemon config, which comes first")
    server = server_factory("mosquitto")
    server.start_daemon()
    home = tmp_path / "home"
    (home / ".config" / "floatkey").mkdir(parents=True)
    write_admin_toml(server, home / ".config" / "floatkey" / "admin.toml")

    def status(home: Path) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "HOME": str(home)}
        argv = [command("floatkeyctl"), "status"]
        return subprocess.run(argv, capture_output=True, text=True, env=env, check=False)

    result = status(home)
    assert result.returncode == 0, result.stderr
    nowhere = status(tmp_path / "nobody")
    assert nowhere.returncode == 1
    assert "Pass --config FILE" in nowhere.stderr


def _value(line: str) -> str:
    match = re.fullmatch(r'server_key = "(ed25519:[A-Za-z0-9_-]+)"', line)
    assert match, line
    return match[1]


@pytest.mark.broker
async def test_an_agent_pinned_with_the_printed_line_connects(server_factory, tmp_path):
    server = server_factory("mosquitto")
    server.start_daemon()
    printed = await asyncio.to_thread(ctl, server, "server-key")
    assert printed.returncode == 0, printed.stderr
    lines = printed.stdout.strip().splitlines()
    assert lines[0] == f"Server       {server.topics.server}"
    assert lines[1] == f"Public key   {server.server_key_text()}"
    assert lines[-1] == f'server_key = "{server.server_key_text()}"'
    fingerprint = lines[2].split()[-1]
    status = await asyncio.to_thread(ctl, server, "status")
    assert f"Server fingerprint   {fingerprint}" in status.stdout

    # The agent's config with the printed line pasted in, as an administrator would.
    path = write_agent_config(server, tmp_path / "agent.toml", pin=False)
    text = path.read_text()
    path.write_text(text.replace("\n\n[broker]", f"\n{lines[-1]}\n\n[broker]"))
    config = load_agent_config(path)
    assert config.config.server_key == server.server_key_text()
    async with Agent(config, app="pinned") as agent:
        assert agent.has_seat
    assert not (tmp_path / "agent-known.json").exists()  # pinned, not trusted on first use
