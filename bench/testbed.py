"""A real broker and a real floatkeyd on loopback: the benchmarks' and the tests' testbed.

Mosquitto is started from the shipped ``config/mosquitto.conf`` (only the port and file
paths are changed); the embedded broker is the daemon's own (``floatkeyd`` starts it
when its config names no broker). The test suite builds its fixtures on these
(``tests/servers.py``); nothing here imports from ``tests/``.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from bench.certificates import make_broker_certificates
from floatkey.broker import BrokerOptions, TLSOptions
from floatkey.signing import parse_public_key

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from floatkey.protocol import Topics

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "config"
BIN = Path(sys.executable).parent
# The development passwords in config/mosquitto.passwd (documented there; dev only).
PASSWORDS = {
    "floatkeyd": "dev-daemon-password",
    "floatkey-admin": "dev-admin-password",
    "floatkey-agent": "dev-agent-password",
}


class ToolMissing(RuntimeError):
    """A program the testbed runs is not installed."""


def command(name: str) -> str:
    """The path of an installed floatkey command, from the same environment as this Python."""
    path = BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found is None:
        raise ToolMissing(f"{name} is not installed; run scripts/test")
    return found


def mosquitto_binary() -> str:
    """The Mosquitto executable (Debian puts it in /usr/sbin)."""
    found = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    if found is None:
        raise ToolMissing("Mosquitto is not installed (scripts/test installs it with apt-get)")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.02)
    msg = f"nothing listens on port {port} after {timeout} s"
    raise TimeoutError(msg)


class Mosquitto:
    """A Mosquitto process run from the shipped config, on a free port."""

    def __init__(self, port: int | None = None) -> None:
        # Not under pytest's tmp_path: run as root, Mosquitto drops to the 'mosquitto' user,
        # which cannot enter root's 0700 pytest directory.
        workdir = self.workdir = Path(tempfile.mkdtemp(prefix="floatkey-mosquitto-"))
        self.port = port or free_port()
        self.tls_port = free_port()
        self.certificates = make_broker_certificates(workdir)
        self.process: subprocess.Popen[bytes] | None = None
        text = (CONFIG / "mosquitto.conf").read_text()
        text = re.sub(r"^listener 1883 ", f"listener {self.port} ", text, flags=re.MULTILINE)
        # The agents' TLS listener: on loopback here, not on every interface.
        text = re.sub(
            r"^listener 8883$", f"listener {self.tls_port} 127.0.0.1", text, flags=re.MULTILINE
        )
        text = text.replace("/etc/mosquitto/certs/floatkey.crt", str(self.certificates.cert))
        text = text.replace("/etc/mosquitto/certs/floatkey.key", str(self.certificates.key))
        text = text.replace("/etc/mosquitto/floatkey.passwd", str(workdir / "floatkey.passwd"))
        text = text.replace("/etc/mosquitto/floatkey.acl", str(workdir / "floatkey.acl"))
        text = text.replace("/var/lib/mosquitto/", str(workdir) + "/")
        assert f"listener {self.port} 127.0.0.1" in text, "the shipped config changed shape"
        assert f"listener {self.tls_port} 127.0.0.1" in text, "the shipped config changed shape"
        for name, target in [
            ("mosquitto.passwd", "floatkey.passwd"),
            ("mosquitto.acl", "floatkey.acl"),
        ]:
            shutil.copy(CONFIG / name, workdir / target)
            (workdir / target).chmod(0o600)
        (workdir / "mosquitto.conf").write_text(text)
        if os.geteuid() == 0:
            with contextlib.suppress(KeyError):
                owner = pwd.getpwnam("mosquitto")
                for path in [workdir, *workdir.iterdir()]:
                    os.chown(path, owner.pw_uid, owner.pw_gid)

    @staticmethod
    def binary() -> str:
        """The Mosquitto executable (the tests' subclass skips the test without one)."""
        return mosquitto_binary()

    def start(self) -> None:
        with (self.workdir / "mosquitto.log").open("ab") as log:
            self.process = subprocess.Popen(
                [self.binary(), "-c", str(self.workdir / "mosquitto.conf")],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_for_port(self.port)
            wait_for_port(self.tls_port)
        except TimeoutError:
            self.stop()
            log_text = (self.workdir / "mosquitto.log").read_text(errors="replace")
            raise AssertionError(f"Mosquitto did not start:\n{log_text}") from None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def wipe_persistence(self) -> None:
        for db in self.workdir.glob("*.db"):
            db.unlink()

    def options(self, user: str) -> BrokerOptions:
        return BrokerOptions(
            host="127.0.0.1", port=self.port, username=user, password=PASSWORDS[user]
        )

    def tls_options(self, user: str, ca: Path | None = None) -> BrokerOptions:
        """The TLS listener, trusting ``ca`` (the test CA by default)."""
        return BrokerOptions(
            host="127.0.0.1",
            port=self.tls_port,
            username=user,
            password=PASSWORDS[user],
            tls=TLSOptions(ca=str(ca or self.certificates.ca)),
        )


@dataclass
class Server:
    """A daemon config for one test: its broker, topics and state directory."""

    kind: str
    config_path: Path
    state_dir: Path
    topics: Topics
    port: int
    mosquitto: Mosquitto | None = None
    processes: list[DaemonProcess] = field(default_factory=list)

    def broker(self, user: str = "floatkey-agent") -> BrokerOptions:
        if self.mosquitto is not None:
            if self.kind == "mosquitto-tls":
                return self.mosquitto.tls_options(user)
            return self.mosquitto.options(user)
        # The embedded broker's logins are made by the daemon at its first start.
        return BrokerOptions(
            host="127.0.0.1",
            port=self.port,
            username=user,
            password_file=str(self.state_dir / "embedded-broker" / f"{user}.password"),
        )

    def server_key_text(self) -> str:
        return (self.state_dir / "server-identity.key.pub").read_text().strip()

    def server_key(self) -> Ed25519PublicKey:
        return parse_public_key(self.server_key_text())

    def db(self) -> sqlite3.Connection:
        return sqlite3.connect(self.state_dir / "floatkeyd.db")

    def snapshot(self) -> dict[str, object]:
        """Everything a refused command must leave unchanged."""
        with contextlib.closing(self.db()) as db:
            return {
                "meta": sorted(
                    db.execute("SELECT key, value FROM meta WHERE key != 'latest_time_ms'")
                ),
                "licenses": sorted(db.execute("SELECT * FROM licenses")),
                "leases": sorted(db.execute("SELECT * FROM leases")),
            }

    def start_daemon(self, **kw: object) -> DaemonProcess:
        process = DaemonProcess(self.config_path, **kw)  # type: ignore[arg-type]
        process.start()
        self.processes.append(process)
        return process


def write_daemon_config(
    path: Path,
    *,
    server: str,
    state_dir: Path,
    port: int,
    mosquitto: Mosquitto | None,
    extra: str = "",
    tls: bool = False,
) -> None:
    vendor = (CONFIG / "dev-vendor.key.pub").read_text().strip()
    admin = (CONFIG / "dev-admin.key.pub").read_text().strip()
    text = f"""
server = "{server}"
state_dir = "{state_dir}"
vendor_public_key = "{vendor}"
admin_keys = ["{admin}"]
admin_key_file = "{CONFIG / "dev-admin.key"}"
lease_seconds = 30
log_format = "json"
log_level = "debug"
{extra}
"""
    if mosquitto is not None:
        login = mosquitto.tls_options if tls else mosquitto.options
        # The daemon's password in a file of its own; floatkeyctl uses the admin login.
        secret = path.with_name(path.stem + ".mqtt-password")
        text += "\n" + broker_toml(login("floatkeyd"), password_file=secret)
        text += "\n" + broker_toml(login("floatkey-admin"), "admin_broker")
    else:
        text += f"""
[embedded_broker]
host = "127.0.0.1"
port = {port}
"""
    path.write_text(text)


class DaemonProcess:
    """A real ``floatkeyd run`` process, with a real NOTIFY_SOCKET to see READY=1."""

    def __init__(
        self,
        config: Path,
        *,
        watchdog_usec: int | None = None,
        prefix: tuple[str, ...] = (),
        floatkeyd: str | None = None,
    ) -> None:
        self.config = config
        self.watchdog_usec = watchdog_usec
        self.prefix = prefix  # e.g. ("faketime", "-f", "@2026-11-28 23:59:57")
        self.floatkeyd = floatkeyd  # another installation's (default: this environment's)
        self.process: subprocess.Popen[bytes] | None = None
        self.notifications: list[str] = []
        self.log_path = config.with_suffix(f".{int(time.time() * 1000)}.log")
        self._notify_path = config.parent / f"notify-{os.getpid()}-{id(self)}.sock"
        self._notify: socket.socket | None = None

    def start(self, timeout: float = 20) -> None:
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        with contextlib.suppress(FileNotFoundError):
            self._notify_path.unlink()
        self._notify.bind(str(self._notify_path))
        env = {**os.environ, "NOTIFY_SOCKET": str(self._notify_path)}
        if self.watchdog_usec:
            env["WATCHDOG_USEC"] = str(self.watchdog_usec)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    *self.prefix,
                    self.floatkeyd or command("floatkeyd"),
                    "run",
                    "--config",
                    str(self.config),
                ],
                stdout=subprocess.DEVNULL,
                stderr=log,
                env=env,
            )
        self.wait_for_notification("READY=1", timeout)

    def wait_for_notification(self, text: str, timeout: float = 10) -> str:
        assert self._notify is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for note in self.notifications:
                if text in note.split("\n"):
                    return note
            if self.process and self.process.poll() is not None:
                msg = f"floatkeyd exited with {self.process.returncode}:\n{self.log()}"
                raise AssertionError(msg)
            self._notify.settimeout(0.1)
            with contextlib.suppress(TimeoutError):
                self.notifications.append(self._notify.recv(4096).decode())
        msg = f"no {text!r} from floatkeyd in {timeout} s; got {self.notifications}:\n{self.log()}"
        raise AssertionError(msg)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 5) -> int:
        """SIGTERM; the daemon must exit within ``timeout`` seconds."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                msg = f"floatkeyd did not stop within {timeout} s:\n{self.log()}"
                raise AssertionError(msg) from None
        self._close()
        return self.process.returncode

    def wait_exit(self, timeout: float = 5) -> int:
        """Wait for the process to exit on its own; return its status."""
        assert self.process is not None
        code = self.process.wait(timeout)
        self._close()
        return code

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()
        self._close()

    def _close(self) -> None:
        if self._notify is not None:
            self._notify.close()
            self._notify = None
            with contextlib.suppress(FileNotFoundError):
                self._notify_path.unlink()


def write_agent_config(
    server: Server,
    path: Path,
    *,
    pin: bool = True,
    broker: BrokerOptions | None = None,
    **overrides: object,
) -> Path:
    """An agent config for ``server``: the agents' broker user, the server key pinned."""
    options = broker or server.broker("floatkey-agent")
    fields: dict[str, object] = {
        "server": server.topics.server,
        "state_file": str(path.parent / f"{path.stem}-known.json"),
        "connect_timeout": 10,
        "offline_grace": 600,
        "shutdown_grace": 5,
        "hook_timeout": 8,
    }
    if pin:
        fields["server_key"] = server.server_key_text()
    fields.update(overrides)
    lines = [
        f'{k} = "{v}"'
        if isinstance(v, str)
        else f"{k} = {str(v).lower()}"
        if isinstance(v, bool)
        else f"{k} = {v!r}"
        for k, v in fields.items()
    ]
    path.write_text("\n".join(lines) + "\n\n" + broker_toml(options))
    return path


def broker_toml(
    options: BrokerOptions, section: str = "broker", password_file: Path | None = None
) -> str:
    """The ``[broker]`` section (and ``[broker.tls]``) of a daemon or agent config.

    With ``password_file`` the password goes there (0600) and the section names the file,
    as a production daemon config does.
    """
    lines = [f"[{section}]", f'host = "{options.host}"', f"port = {options.port}", "keepalive = 5"]
    if options.username:
        lines.append(f'username = "{options.username}"')
        if options.password_file is not None:
            lines.append(f'password_file = "{options.password_file}"')
        elif password_file is not None:
            password_file.write_text(f"{options.password}\n")
            password_file.chmod(0o600)
            lines.append(f'password_file = "{password_file}"')
        else:
            lines.append(f'password = "{options.password}"')
    if options.tls is not None:
        lines += ["", f"[{section}.tls]", f'ca = "{options.tls.ca}"']
    return "\n".join(lines) + "\n"
