"""The shipped systemd units: systemd-analyze verify and the security exposure."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from conftest import REPO, command
from floatkey._supervisor import (
    EXIT_CONFIG,
    EXIT_NO_SEAT,
    EXIT_RELEASED,
    EXIT_RESTART,
    EXIT_UNREACHABLE,
)
from servers import required_tool

ANALYZE = shutil.which("systemd-analyze")


@pytest.fixture(autouse=True)
def _analyze_is_installed() -> None:
    """Skipped without systemd-analyze, failed in CI (scripts/test installs it)."""
    required_tool("systemd-analyze")


def installed_copy(tmp_path, unit: str, name: str | None = None):
    """The unit as shipped, with /usr/bin/ pointing at this environment's commands."""
    text = (REPO / "systemd" / unit).read_text()
    text = re.sub(r"/usr/bin/(floatkey[\w-]*)", lambda m: command(m.group(1)), text)
    path = tmp_path / (name or unit)
    path.write_text(text)
    return path


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    return subprocess.run([ANALYZE, *args], capture_output=True, text=True, timeout=60, check=False)


def test_floatkeyd_service_verifies(tmp_path):
    result = analyze("verify", str(installed_copy(tmp_path, "floatkeyd.service")))
    assert result.returncode == 0, result.stderr
    assert "floatkeyd.service" not in result.stderr, result.stderr


def exposure(path) -> float:
    """``systemd-analyze security``'s overall exposure level of the unit file ``path``."""
    result = analyze("security", "--offline=true", str(path))
    match = re.search(
        rf"Overall exposure level for {re.escape(path.name)}: (\d+\.\d+)", result.stdout
    )
    assert match, result.stdout + result.stderr
    return float(match.group(1))


def test_floatkeyd_service_exposure_is_at_most_2(tmp_path):
    assert exposure(installed_copy(tmp_path, "floatkeyd.service")) <= 2.0


def test_the_agent_template_exposure_is_at_most_5(tmp_path):
    path = installed_copy(
        tmp_path, "floatkey-agent@.service", "floatkey-agent@flowdesigner.service"
    )
    assert exposure(path) <= 5.0
    text = path.read_text()
    # Not root: one dynamic user for every instance, which may write its state only.
    assert "DynamicUser=yes" in text
    assert "User=floatkey-agent" in text
    assert "CapabilityBoundingSet=\n" in text
    # floatkey-agent starts the application through setpriv --pdeathsig, which calls
    # prctl and capset: the filter must not take @privileged (capset) away.
    assert "SystemCallFilter=@system-service\n" in text
    assert "SystemCallFilter=~@privileged" not in text
    # The production agent.toml reads the state file and the password where the unit
    # puts them.
    agent_toml = (REPO / "config" / "agent.toml").read_text()
    assert 'state_file = "/var/lib/floatkey-agent/' in agent_toml
    assert "StateDirectory=floatkey-agent " in text
    assert 'password_file = "${CREDENTIALS_DIRECTORY}/mqtt-password"' in agent_toml
    assert "LoadCredential=mqtt-password:" in text


def test_the_agent_template_verifies(tmp_path):
    path = installed_copy(
        tmp_path, "floatkey-agent@.service", "floatkey-agent@flowdesigner.service"
    )
    result = analyze("verify", str(path))
    assert result.returncode == 0, result.stderr
    assert "floatkey-agent@" not in result.stderr, result.stderr
    text = path.read_text()
    # The unit's restart policy and floatkey-agent's documented exit codes must agree.
    assert f"RestartForceExitStatus={EXIT_RESTART} {EXIT_UNREACHABLE}" in text
    assert f"RestartPreventExitStatus={EXIT_NO_SEAT} {EXIT_RELEASED} {EXIT_CONFIG}" in text
    # floatkey-agent run --help says a 76 is started again after 1 s.
    assert "Restart=on-failure\nRestartSec=1\n" in text
    assert "Type=notify" in (REPO / "systemd" / "floatkeyd.service").read_text()


def test_the_console_service_verifies_and_its_exposure_is_at_most_2(tmp_path):
    path = installed_copy(tmp_path, "floatkey-console.service")
    result = analyze("verify", str(path))
    assert result.returncode == 0, result.stderr
    assert "floatkey-console.service" not in result.stderr, result.stderr
    result = analyze("security", "--offline=true", str(path))
    match = re.search(
        r"Overall exposure level for floatkey-console\.service: (\d+\.\d+)", result.stdout
    )
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0, result.stdout
    text = (REPO / "systemd" / "floatkey-console.service").read_text()
    assert "floatkeyd console --config /etc/floatkey/floatkeyd.toml" in text


def test_the_console_may_read_the_daemons_config_but_is_not_the_daemons_user():
    """scripts/install-server makes floatkeyd.toml 0640 root:floatkey: the console's
    group must be the daemon's, its user its own (a process of the daemon's uid could
    read the daemon's memory and files through /proc)."""

    def settings(unit: str) -> dict[str, str]:
        text = (REPO / "systemd" / unit).read_text()
        return dict(re.findall(r"^(DynamicUser|User|Group|PrivateUsers)=(.*)$", text, re.MULTILINE))

    daemon = settings("floatkeyd.service")
    console = settings("floatkey-console.service")
    assert console["Group"] == daemon["Group"] == "floatkey"
    assert console["User"] == "floatkey-console"
    assert console["User"] != daemon["User"]
    assert console["DynamicUser"] == "yes"
    assert console["PrivateUsers"] == "yes"  # maps the unit's own group: floatkey
