"""The installation: the wheel and sdist as released, and ``scripts/install-server``.

Once per session: ``python -m build`` makes the sdist and, from it, the wheel; the wheel
goes into a fresh virtual environment (pip downloads the dependencies once, then reads
its cache), and ``scripts/install-server --root`` installs the same wheel under a
temporary root, where ``systemd-analyze verify --root`` checks the installed units.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from servers import REPO, DaemonProcess, free_port, missing_tool, required_tool, write_daemon_config

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
    script = members["scripts/install-server"]
    assert script.mode & stat.S_IXUSR, oct(script.mode)


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
        assert json.loads(succeeded(status))["status"] == "unlicensed"
    finally:
        code = daemon.stop(timeout=20)
    assert code == 0, daemon.log()


# --- scripts/install-server under a temporary root -------------------------------------


def install_server(*args: object, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return run(INSTALL_SERVER, *args, timeout=timeout)


def changes(output: str) -> list[str]:
    """The lines of install-server's output that report a change."""
    return [
        line
        for line in output.splitlines()
        if line.split(" ", 1)[0] in {"created", "installed", "updated", "fixed", "removed"}
    ]


def group_id(root: Path, name: str) -> int:
    for line in (root / "etc" / "group").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return int(fields[2])
    raise AssertionError(f"no group {name} in {root}/etc/group")


@dataclass(frozen=True)
class Installed:
    root: Path
    output: str


@pytest.fixture(scope="session")
def installed(dists, tmp_path_factory) -> Installed:
    """``install-server --root`` with the session's wheel, on a root seeded from this host:
    its users and groups, and the systemd units and /bin/kill that verify looks for."""
    if os.geteuid() != 0:
        missing_tool("install-server runs as root, and these tests with it")
    root = tmp_path_factory.mktemp("server-root")
    (root / "etc").mkdir()
    for name in ("passwd", "group"):
        shutil.copy2(f"/etc/{name}", root / "etc" / name)
    systemd_units = Path("/usr/lib/systemd/system")
    if systemd_units.is_dir():
        shutil.copytree(systemd_units, root / "usr/lib/systemd/system", symlinks=True)
    kill = shutil.which("kill") or "/bin/kill"
    (root / "bin").mkdir()
    shutil.copy2(kill, root / "bin" / "kill")
    result = install_server("--root", root, "--wheel", dists.wheel)
    return Installed(root, succeeded(result))


def test_install_server_lays_out_the_service(installed, dists):
    root = installed.root
    out = installed.output
    assert f"floatkey {dists.version} is installed under {root}" in out, out
    assert "systemctl daemon-reload (installing under" in out, out
    # A system user and group, no login shell, no home.
    passwd = (root / "etc/passwd").read_text().splitlines()
    [entry] = [line for line in passwd if line.startswith("floatkey:")]
    fields = entry.split(":")
    assert fields[5:] == ["/nonexistent", "/usr/sbin/nologin"], entry
    assert int(fields[3]) == group_id(root, "floatkey")
    assert not (root / "nonexistent").exists()

    # /etc/floatkey: 0755 root, so the agents' dynamic user can read agent.toml and
    # apps/; the daemon's config readable by its group only, the passwords root's.
    gid = group_id(root, "floatkey")
    expected = {
        ".": (0o755, 0),
        "apps": (0o755, 0),
        "floatkeyd.toml": (0o640, gid),
        "mqtt-password": (0o600, 0),
        "agent-mqtt-password": (0o600, 0),
        "agent.toml.example": (0o644, 0),
        "mosquitto.conf.example": (0o640, gid),
        "mosquitto.acl.example": (0o640, gid),
        "mosquitto.passwd.example": (0o600, 0),
    }
    if (REPO / "config" / "admin.toml").exists():
        expected["admin.toml"] = (0o640, gid)
    etc = root / "etc/floatkey"
    found = {}
    for path in [etc, *etc.iterdir()]:
        info = path.stat()
        assert info.st_uid == 0, path
        found[str(path.relative_to(etc))] = (stat.S_IMODE(info.st_mode), info.st_gid)
    assert found == expected
    assert (etc / "floatkeyd.toml").read_text() == (REPO / "config/floatkeyd.toml").read_text()
    assert (etc / "mqtt-password").read_bytes() == b""

    # The units run the venv's commands; nothing is left to look for in /usr/bin.
    units = root / "etc/systemd/system"
    for unit in ("floatkeyd.service", "floatkey-agent@.service", "floatkey-console.service"):
        text = (units / unit).read_text()
        assert "/usr/bin/" not in text, unit
        for command in re.findall(r"/opt/floatkey/bin/\S+", text):
            assert (root / command.lstrip("/")).is_file(), command
        # Documentation= names installed files.
        docs = re.findall(r"^Documentation=(.*)$", text, re.MULTILINE)
        assert docs, unit
        for url in " ".join(docs).split():
            assert url.startswith("file:///usr/share/doc/floatkey/"), url
            assert (root / url.removeprefix("file:///")).is_file(), url
    assert "ExecStart=/opt/floatkey/bin/floatkeyd run" in (units / "floatkeyd.service").read_text()
    console = (units / "floatkey-console.service").read_text()
    start = "ExecStart=/opt/floatkey/bin/floatkeyd console --config /etc/floatkey/floatkeyd.toml"
    assert start in console
    # The console reads floatkeyd.toml (0640 root:floatkey) through its group, as its own user.
    assert "\nGroup=floatkey\n" in console
    assert "\nUser=floatkey-console\n" in console
    # The credential the unit loads exists, so the service can start.
    assert (
        "LoadCredential=mqtt-password:/etc/floatkey/mqtt-password"
        in (units / "floatkeyd.service").read_text()
    )


def test_the_installed_venv_names_its_final_paths(installed, dists):
    venv = installed.root / "opt/floatkey"
    for name in COMMANDS:
        script = venv / "bin" / name
        assert script.read_text().splitlines()[0] == "#!/opt/floatkey/bin/python", name
        # Run with the venv's own python: /opt/floatkey does not exist on this host.
        out = succeeded(run(venv / "bin/python", script, "--version", timeout=60))
        assert out.startswith(f"{name} {dists.version} "), out
    assert str(installed.root) not in (venv / "pyvenv.cfg").read_text()
    # The server has the console extra (a client machine's plain install does not).
    imports = "import starlette, jinja2, uvicorn, argon2, python_multipart, itsdangerous"
    succeeded(run(venv / "bin/python", "-c", imports, timeout=60))


def test_systemd_analyze_verifies_the_installed_units(installed):
    root = installed.root
    required_tool("systemd-analyze")
    assert ANALYZE is not None
    units = ("floatkeyd.service", "floatkey-agent@flowdesigner.service", "floatkey-console.service")
    for unit in units:
        # verify --root resolves the unit and its ExecStart= binaries under the root.
        result = run(ANALYZE, "verify", f"--root={root}", unit, timeout=60, cwd=root)
        assert result.returncode == 0, result.stderr
        assert unit not in result.stderr, result.stderr
    for unit in ("floatkeyd.service", "floatkey-console.service"):
        result = run(ANALYZE, "security", "--offline=true", f"--root={root}", unit, timeout=60)
        match = re.search(
            rf"Overall exposure level for {re.escape(unit)}: (\d+\.\d+)", result.stdout
        )
        assert match, result.stdout + result.stderr
        assert float(match.group(1)) <= 2.0, result.stdout


def snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    """Every path under ``root``: its type, mode, owner, mtime and content hash."""
    found: dict[str, tuple[object, ...]] = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        if path.is_symlink():
            content: object = str(path.readlink())
        elif path.is_file():
            content = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            content = None
        found[str(path.relative_to(root))] = (
            info.st_mode,
            info.st_uid,
            info.st_gid,
            info.st_mtime_ns,
            content,
        )
    return found


def test_install_server_again_changes_nothing_then_uninstall_keeps_config_and_state(
    installed, tmp_path
):
    # A copy of the session's root (cp -a keeps owners and mtimes): this test changes it.
    root = tmp_path / "root"
    succeeded(run("cp", "-a", installed.root, root))
    state = root / "var/lib/floatkeyd"
    state.mkdir(parents=True)
    (state / "floatkeyd.db").write_bytes(b"the license, the seats and the audit log")
    before = snapshot(root)

    # Again, from the checkout this time (no --wheel): the same build, so nothing to do.
    out = succeeded(install_server("--root", root))
    assert changes(out) == [], out
    assert "Nothing changed" in out, out
    assert snapshot(root) == before

    # An administrator's edit survives a new install.
    config = root / "etc/floatkey/floatkeyd.toml"
    config.write_text(config.read_text() + "\n# edited by the administrator\n")
    (root / "etc/floatkey/mosquitto.acl.example").unlink()
    out = succeeded(install_server("--root", root))
    assert changes(out) == ["installed  /etc/floatkey/mosquitto.acl.example (0640 root:floatkey)"]
    assert "kept       /etc/floatkey/floatkeyd.toml (exists; not overwritten)" in out
    assert config.read_text().endswith("# edited by the administrator\n")

    # Enabled as an administrator would (offline), then uninstalled.
    wanted = root / "etc/systemd/system/multi-user.target.wants/floatkeyd.service"
    if shutil.which("systemctl"):
        succeeded(run("systemctl", f"--root={root}", "enable", "floatkeyd.service", timeout=60))
    else:
        wanted.parent.mkdir()
        wanted.symlink_to("/etc/systemd/system/floatkeyd.service")
    assert wanted.is_symlink()
    kept = snapshot(root / "etc/floatkey"), snapshot(state)
    out = succeeded(install_server("--uninstall", "--root", root))
    for path in ("opt/floatkey", "usr/share/doc/floatkey", "etc/systemd/system/floatkeyd.service"):
        assert not (root / path).exists(), path
    assert not (root / "etc/systemd/system/floatkey-agent@.service").exists()
    assert not (root / "etc/systemd/system/floatkey-console.service").exists()
    assert not wanted.is_symlink()
    assert (snapshot(root / "etc/floatkey"), snapshot(state)) == kept
    assert "kept       /etc/floatkey (" in out, out
    assert "kept       /var/lib/floatkeyd (the database: license, seats and the audit log)" in out
    assert "floatkey's service is uninstalled" in out, out
    out = succeeded(install_server("--uninstall", "--root", root))
    assert changes(out) == [], out
    assert "Nothing to remove" in out, out


NAMESPACE_SCRIPT = r"""
set -eu
tmp=$1; session_root=$2; shift 2
overlay() {  # overlay DIR LOWER...: writes to DIR go to $tmp, never to this machine
  mkdir -p "$tmp/upper$1" "$tmp/work$1"
  mount -t overlay overlay -o "lowerdir=$2,upperdir=$tmp/upper$1,workdir=$tmp/work$1" "$1" \
    || exit 97
}
mount --make-rprivate / || exit 97
overlay /etc /etc
# The session's venv on top of this machine's /opt: already this build, so no pip.
overlay /opt "$session_root/opt:/opt"
overlay /usr/share/doc /usr/share/doc
# This machine's systemd, if it runs, is none of the test's business.
if [ -d /run/systemd ]; then mount -t tmpfs tmpfs /run/systemd || exit 97; fi
"$@"
"""


def test_install_server_on_this_machines_root_in_a_private_mount_namespace(installed, tmp_path):
    """Without --root: getent, useradd and the commands' #! lines for real, with /etc,
    /opt and /usr/share/doc overlaid in a mount namespace of the test's own."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("unshare (util-linux) is not installed")
    machine = [Path("/opt/floatkey"), Path("/etc/floatkey"), Path("/usr/share/doc/floatkey")]
    if any(path.exists() for path in machine) or "\nfloatkey:" in Path("/etc/passwd").read_text():
        pytest.skip("floatkey is installed on this machine")
    steps = (
        f"{INSTALL_SERVER}; {INSTALL_SERVER}; "
        "getent passwd floatkey; stat -c '%a %U:%G' /etc/floatkey /etc/floatkey/floatkeyd.toml; "
        "/opt/floatkey/bin/floatkeyd --version; "
        f"{INSTALL_SERVER} --uninstall; test ! -e /opt/floatkey; test -d /etc/floatkey"
    )
    result = run(
        unshare,
        "--mount",
        "bash",
        "-c",
        NAMESPACE_SCRIPT,
        "namespace",
        tmp_path,
        installed.root,
        "bash",
        "-ec",
        steps,
        timeout=600,
    )
    if result.returncode == 97 or "unshare failed" in result.stderr:
        pytest.skip(f"no private mount namespace with overlayfs here: {result.stderr}")
    out = succeeded(result)
    assert "created    user and group floatkey" in out, out
    assert "skipped    systemctl daemon-reload (systemd is not running)" in out, out
    assert "Nothing changed: floatkey" in out, out
    user = r"^floatkey:x:\d+:\d+:[^:]*:/nonexistent:/usr/sbin/nologin$"
    assert re.search(user, out, re.MULTILINE), out
    assert "755 root:root\n640 root:floatkey\n" in out, out
    assert re.search(r"^floatkeyd \S+ \(product keys for version 8\)$", out, re.MULTILINE), out
    assert "removed    /opt/floatkey (the floatkey commands)" in out, out
    # This machine is as it was.
    assert not any(path.exists() for path in machine)
    assert "\nfloatkey:" not in Path("/etc/passwd").read_text()


def test_install_server_help_and_wrong_arguments(tmp_path):
    out = succeeded(install_server("--help", timeout=30))
    for option in ("--root DIR", "--wheel FILE", "--uninstall"):
        assert option in out
    result = install_server("--frobnicate", timeout=30)
    assert result.returncode == 2
    assert "unknown argument '--frobnicate' (see --help)" in result.stderr
    if os.geteuid() != 0:
        return
    # A wheel that is not one is refused before anything is made.
    bad = tmp_path / "floatkey-1-py3-none-any.whl"
    bad.write_text("not a zip file")
    root = tmp_path / "root"
    result = install_server("--root", root, "--wheel", bad, timeout=30)
    assert result.returncode == 1
    sentence = f"{bad} is not a wheel (python -m build makes one in dist/)."
    assert result.stderr == f"install-server: {sentence}\n"
    assert not root.exists()
