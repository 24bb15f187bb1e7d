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
    #: The RabbitMQ node the daemon connects to (``kind`` "rabbitmq").
    rabbit: RabbitNode | None = None

    def broker(self, user: str = "floatkey-agent") -> BrokerOptions:
        if self.rabbit is not None:
            return self.rabbit.options(user)
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
    rabbit: RabbitNode | None = None,
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
    if rabbit is not None:
        secret = path.with_name(path.stem + ".mqtt-password")
        text += "\n" + broker_toml(rabbit.options("floatkeyd"), password_file=secret)
        text += "\n" + broker_toml(rabbit.options("floatkey-admin"), "admin_broker")
    elif mosquitto is not None:
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
    section = broker_toml(options)
    if server.kind == "rabbitmq":
        # The shipped RabbitMQ topic permissions: replies only to ids beginning with the login.
        section = section.replace("[broker]\n", "[broker]\nprefix_client_id = true\n", 1)
    path.write_text("\n".join(lines) + "\n\n" + section)
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


def rabbitmq_binary() -> str:
    """RabbitMQ's own start script (Debian's /usr/sbin wrapper would switch user)."""
    found = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
    if not found.exists():
        raise ToolMissing(
            "RabbitMQ is not installed (scripts/test installs rabbitmq-server with apt-get)"
        )
    return str(found)


class RabbitCluster:
    """RabbitMQ nodes on loopback, run from the shipped ``config/rabbitmq/``, clustered.

    Everything is private: node names, Erlang distribution ports, an ``epmd`` of its own
    on a free port, the cookie in a private ``HOME``, data and logs in a temporary
    directory. A system RabbitMQ, if there is one, is never touched.
    """

    def __init__(self, nodes: int = 1) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="floatkey-rabbitmq-"))
        self.epmd_port = free_port()
        home = self.workdir / "home"
        home.mkdir(mode=0o700)
        cookie = home / ".erlang.cookie"
        cookie.write_text(os.urandom(16).hex().upper())
        cookie.chmod(0o400)
        self.home = home
        tag = os.urandom(3).hex()
        self.nodes = [RabbitNode(self, f"fk{index + 1}-{tag}") for index in range(nodes)]

    def env(self) -> dict[str, str]:
        """What every RabbitMQ and ``rabbitmqctl`` process here runs with."""
        return {
            **os.environ,
            "HOME": str(self.home),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "RABBITMQ_CONF_ENV_FILE": str(self.workdir / "rabbitmq-env.conf"),
        }

    def start(self, timeout: float = 120) -> None:
        """Start every node (in parallel), then join nodes 2... to node 1."""
        for node in self.nodes:
            node.launch()
        try:
            for node in self.nodes:
                node.wait_ready(timeout)
            if len(self.nodes) > 1:
                joins = [node.join_async(self.nodes[0]) for node in self.nodes[1:]]
                for node, join in zip(self.nodes[1:], joins, strict=True):
                    node.finish_join(join)
        except BaseException:
            self.cleanup()
            raise

    def cleanup(self) -> None:
        """Stop every node and this cluster's epmd; remove the files."""
        for node in self.nodes:
            node.kill()
        # Our epmd refuses to stop while a killed node is still registered: a moment.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                stopped = subprocess.run(
                    ["epmd", "-port", str(self.epmd_port), "-kill"],
                    env=self.env(),
                    cwd=self.workdir,
                    capture_output=True,
                    text=True,
                    timeout=10,
                    check=False,
                )
            except (OSError, subprocess.SubprocessError):
                break
            if "Killed" in stopped.stdout or "Cannot connect" in stopped.stdout + stopped.stderr:
                break
            time.sleep(0.2)
        shutil.rmtree(self.workdir, ignore_errors=True)


class RabbitNode:
    """One RabbitMQ node of a :class:`RabbitCluster`: its MQTT port, start and stop."""

    def __init__(self, cluster: RabbitCluster, name: str) -> None:
        self.cluster = cluster
        self.name = f"{name}@localhost"
        self.port = free_port()
        self.dist_port = free_port()
        self.dir = cluster.workdir / name
        self.dir.mkdir()
        self.process: subprocess.Popen[bytes] | None = None
        self.started = False  # once up, its MQTT port is the one clients were given
        self._write_config()
        shutil.copy(CONFIG / "rabbitmq" / "enabled_plugins", self.dir / "enabled_plugins")

    def _write_config(self) -> None:
        text = (CONFIG / "rabbitmq" / "rabbitmq.conf").read_text()
        text = re.sub(
            r"^mqtt\.listeners\.tcp\.default = 127\.0\.0\.1:1883$",
            f"mqtt.listeners.tcp.default = 127.0.0.1:{self.port}",
            text,
            flags=re.MULTILINE,
        )
        text = text.replace(
            "/etc/rabbitmq/floatkey-definitions.json", str(CONFIG / "rabbitmq" / "definitions.json")
        )
        assert f"127.0.0.1:{self.port}" in text, "the shipped config changed shape"
        (self.dir / "rabbitmq.conf").write_text(text)

    def env(self) -> dict[str, str]:
        return {
            **self.cluster.env(),
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_PORT": str(free_port()),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_PID_FILE": str(self.dir / "rabbitmq.pid"),
            "RABBITMQ_PLUGINS_EXPAND_DIR": str(self.dir / "plugins-expand"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.dir / "advanced.config"),
            # A node that fails to start writes a crash dump: here, not in the cwd.
            "ERL_CRASH_DUMP": str(self.dir / "erl_crash.dump"),
        }

    def launch(self) -> None:
        """Start the node; :meth:`wait_ready` waits for its MQTT listener."""
        # A fresh distribution port each time: a free port picked earlier may have been
        # taken since by another program (the node then fails with {error,address}).
        self.dist_port = free_port()
        with (self.dir / "stdout.log").open("ab") as log:
            self.process = subprocess.Popen(
                [rabbitmq_binary()],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env(),
                # Mnesia writes its core dumps (MnesiaCore.*) to the current directory.
                cwd=self.dir,
                start_new_session=True,  # the whole Erlang process group is ours to stop
            )

    def wait_ready(self, timeout: float = 120, relaunches: int = 2) -> None:
        """Wait for the MQTT listener.

        A node that exits at start (on a busy machine a free port picked a moment ago
        may be taken meanwhile) is started again on fresh ports: its MQTT port too, if it
        never ran.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                if relaunches > 0 and self.process is not None:
                    relaunches -= 1
                    self.kill()  # the whole group: nothing of it may hold a port
                    if not self.started:
                        self.port = free_port()
                        self._write_config()
                    self.launch()
                    continue
                break
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 0.2),
            ):
                self.started = True
                return
            time.sleep(0.1)
        msg = f"RabbitMQ node {self.name} did not start:\n{self.log()}"
        raise AssertionError(msg)

    def log(self) -> str:
        parts = [
            path.read_text(errors="replace")[-4000:]
            for path in [self.dir / "stdout.log", *sorted((self.dir / "log").glob("*.log"))]
            if path.exists()
        ]
        return "\n".join(parts)

    def ctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """``rabbitmqctl -n NODE ARGS...``; raises ``AssertionError`` when it fails."""
        result = subprocess.run(
            ["/usr/lib/rabbitmq/bin/rabbitmqctl", "-n", self.name, *args],
            env=self.cluster.env(),
            cwd=self.dir,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            msg = f"rabbitmqctl {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
            raise AssertionError(msg)
        return result

    def join_async(self, first: RabbitNode) -> subprocess.Popen[str]:
        """Join ``first``'s cluster (stop_app, join_cluster, start_app), not waited for."""
        ctl = f"/usr/lib/rabbitmq/bin/rabbitmqctl -n {self.name}"
        script = f"{ctl} stop_app && {ctl} join_cluster {first.name} && {ctl} start_app"
        return subprocess.Popen(
            ["sh", "-c", script],
            env=self.cluster.env(),
            cwd=self.dir,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def finish_join(self, join: subprocess.Popen[str], timeout: float = 120) -> None:
        output, _ = join.communicate(timeout=timeout)
        if join.returncode != 0:
            msg = f"{self.name} could not join the cluster:\n{output}\n{self.log()}"
            raise AssertionError(msg)
        self.wait_ready(timeout)

    def stop(self, timeout: float = 60) -> None:
        """Stop the node as an operator would (SIGTERM: a clean shutdown)."""
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def start_again(self, timeout: float = 120) -> None:
        """Start a stopped node again: it rejoins its cluster with the data it kept."""
        self.launch()
        self.wait_ready(timeout)

    def kill(self) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)

    def options(self, user: str) -> BrokerOptions:
        return BrokerOptions(
            host="127.0.0.1", port=self.port, username=user, password=PASSWORDS[user]
        )
