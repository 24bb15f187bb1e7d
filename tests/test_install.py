"""The installation: the wheel and sdist as released.

Once per session: ``python -m build`` makes the sdist and, from it, the wheel; the wheel
goes into a fresh virtual environment (pip downloads the dependencies once, then reads
its cache).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from servers import REPO, DaemonProcess, free_port, write_daemon_config

COMMANDS = ["floatkeyd", "floatkeyctl", "floatkey-agent", "floatkey-vendor"]
INSTALL_SERVER = REPO / "scripts" / "install-server"
ANALYZE = shutil.which("systemd-analyze")
# A cold pip cache downloads the dependencies: minutes on a slow line, not hours.
pytestmark = pytest.mark.timeout(900)


def run(*args: object, timeout: float = 120, **kw: object) -> subprocess.CompletedProcess[str]:
    """Run a command; its output is in the failure message of a test that checks it."""
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        [str(a) for a in args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=env,
        **kw,
    )


def succeeded(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{result.args}\n{result.stdout}\n{result.stderr}"
    return result.stdout


@dataclass(frozen=True)
class Dists:
    wheel: Path
    sdist: Path
    version: str


@pytest.fixture(scope="session")
def dists(tmp_path_factory) -> Dists:
    out = tmp_path_factory.mktemp("dist")
    succeeded(run(sys.executable, "-m", "build", "--outdir", out, REPO, timeout=300))
    [wheel] = out.glob("*.whl")
    [sdist] = out.glob("*.tar.gz")
    version = wheel.name.split("-")[1]
    return Dists(wheel, sdist, version)


@pytest.fixture(scope="session")
def wheel_venv(dists, tmp_path_factory) -> Path:
    """A fresh virtual environment with the wheel installed (not the project's .venv)."""
    venv = tmp_path_factory.mktemp("wheel-venv") / "venv"
    succeeded(run(sys.executable, "-m", "venv", venv, timeout=120))
    pip = [venv / "bin" / "python", "-m", "pip", "--disable-pip-version-check", "--quiet"]
    succeeded(run(*pip, "install", dists.wheel, timeout=600))
    return venv


def test_the_wheel_holds_both_packages_their_type_markers_and_commands(dists):
    with zipfile.ZipFile(dists.wheel) as whl:
        names = set(whl.namelist())
        [entry_points] = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        scripts = whl.read(entry_points).decode()
    for package in ("floatkey", "floatkeyd"):
        assert f"{package}/__init__.py" in names
        assert f"{package}/py.typed" in names
    assert {name.split("/")[0] for name in names} == {
        "floatkey",
        "floatkeyd",
        f"floatkey-{dists.version}.dist-info",
    }
    for name in COMMANDS:
        assert re.search(rf"^{name} = ", scripts, re.MULTILINE), scripts


def test_the_sdist_holds_what_a_server_install_needs(dists):
    with tarfile.open(dists.sdist) as sdist:
        members = {m.name.split("/", 1)[1]: m for m in sdist.getmembers() if "/" in m.name}
    for path in [
        "pyproject.toml",
        "README.md",
        "CHANGELOG.md",
        "config/floatkeyd.toml",
        "config/mosquitto.conf",
        "config/mosquitto.acl",
        "config/mosquitto.passwd",
        "systemd/floatkeyd.service",
        "systemd/floatkey-agent@.service",
        "docs/SECURITY.md",
        "docs/PROTOCOL.md",
        "clients/floatkey/py.typed",
        "daemon/floatkeyd/py.typed",
    ]:
        assert path in members, path


def test_every_command_answers_version_from_a_fresh_venv(dists, wheel_venv):
    for name in COMMANDS:
        out = succeeded(run(wheel_venv / "bin" / name, "--version", timeout=60))
        assert out.startswith(f"{name} {dists.version} "), out
    # The commands import the wheel's packages, not this checkout's.
    out = succeeded(
        run(
            wheel_venv / "bin" / "python",
            "-c",
            "import floatkey, floatkeyd; print(floatkey.__file__); print(floatkeyd.__file__)",
            cwd="/",
        )
    )
    for line in out.splitlines():
        assert Path(line).is_relative_to(wheel_venv), out


def test_floatkeyd_from_the_wheel_runs_and_stops_on_sigterm(wheel_venv, tmp_path):
    # config/floatkeyd.dev.toml's setup (embedded broker, development keys), with a free
    # port and a temporary state directory.
    config = tmp_path / "floatkeyd.toml"
    write_daemon_config(
        config, server="installed", state_dir=tmp_path / "state", port=free_port(), mosquitto=None
    )
    daemon = DaemonProcess(config, floatkeyd=str(wheel_venv / "bin" / "floatkeyd"))
    try:
        daemon.start(timeout=60)  # READY=1 on its NOTIFY_SOCKET
        status = run(wheel_venv / "bin" / "floatkeyctl", "status", "--json", "--config", config)
        assert json.loads(succeeded(status))["status"]["status"] == "unlicensed"
    finally:
        code = daemon.stop(timeout=20)
    assert code == 0, daemon.log()
