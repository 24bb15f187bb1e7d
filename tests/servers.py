"""Real brokers and real daemon processes for the integration and end-to-end tests.

The brokers and daemons themselves are the benchmarks' testbed (``bench/testbed.py``);
this module adds what only tests need: skipping (or, with ``FLOATKEY_REQUIRE_BROKER=1``
in CI, failing) when a tool is missing, plain MQTT clients, agents, and waiting.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import select
import shutil
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import aiomqtt
import pytest
from bench import testbed
from bench.testbed import (
    CONFIG,
    PASSWORDS,
    REPO,
    DaemonProcess,
    Server,
    ToolMissing,
    broker_toml,
    command,
    free_port,
    wait_for_port,
    write_agent_config,
    write_daemon_config,
)

from floatkey import protocol
from floatkey.agent import Agent
from floatkey.config import load_agent_config
from floatkey.envelope import open_envelope
from floatkey.signing import key_id, load_private_key
from floatkeyd.admin_client import AdminSession

if TYPE_CHECKING:
    import ssl
    from collections.abc import Callable

    from floatkey.broker import BrokerOptions

__all__ = [
    "CONFIG",
    "PASSWORDS",
    "REPO",
    "DaemonProcess",
    "Mosquitto",
    "Server",
    "broker_toml",
    "command",
    "free_port",
    "wait_for_port",
    "write_agent_config",
    "write_daemon_config",
]


def missing_tool(message: str) -> None:
    if os.environ.get("FLOATKEY_REQUIRE_BROKER") == "1":
        pytest.fail(message + "; FLOATKEY_REQUIRE_BROKER=1 forbids skipping")
    pytest.skip(message)


def required_tool(name: str) -> str:
    """The path of a tool the tests need; skip without it, or fail in CI."""
    found = shutil.which(name)
    if found is None:
        missing_tool(f"{name} is not installed (scripts/test installs it with apt-get)")
    assert found is not None
    return found


def mosquitto_binary() -> str:
    """The Mosquitto executable; skip without it, or fail in CI."""
    try:
        return testbed.mosquitto_binary()
    except ToolMissing as exc:
        missing_tool(str(exc))
        raise


def rabbitmq_binary() -> str:
    """RabbitMQ's start script; skip without it, or fail in CI."""
    try:
        return testbed.rabbitmq_binary()
    except ToolMissing as exc:
        missing_tool(str(exc))
        raise


def rabbitmq_cluster(nodes: int = 1) -> testbed.RabbitCluster:
    """RabbitMQ nodes (not started yet); skip without RabbitMQ, or fail in CI."""
    rabbitmq_binary()
    return testbed.RabbitCluster(nodes)


class Mosquitto(testbed.Mosquitto):
    """The testbed's Mosquitto; a test that needs it is skipped where it is missing."""

    @staticmethod
    def binary() -> str:
        return mosquitto_binary()


def tls_context(options: BrokerOptions) -> ssl.SSLContext | None:
    """The SSL context for a plain aiomqtt client (the tests' paths are absolute)."""
    return options.tls.context(Path("/")) if options.tls else None


async def read_retained(server: Server, topic: str) -> bytes:
    """Read a retained message with a plain MQTT subscriber."""
    async with aiomqtt.Client(**_plain(server)) as client:
        await client.subscribe(topic, qos=1)
        async with asyncio.timeout(5):
            async for message in client.messages:
                # amqtt may also hand a new session other topics' retained messages.
                if message.topic.value == topic:
                    assert message.retain
                    return bytes(message.payload)
    raise AssertionError("no retained message")


def _plain(server: Server) -> dict[str, object]:
    options = server.broker("floatkey-admin")
    return {
        "hostname": options.host,
        "port": options.port,
        "username": options.username,
        "password": options.password_for(Path("/")),
        "tls_context": tls_context(options),
        "identifier": f"plain-{id(server)}",
    }


async def read_state(server: Server) -> protocol.State:
    payload = await read_retained(server, server.topics.state)
    key = server.server_key()
    body = open_envelope(payload, server.topics.state, {key_id(key): key})
    return protocol.decode(body, protocol.State)


# --- clients and waiting, for the agent and fault tests -----------------------------


def raw_client(server: Server, user: str, identifier: str) -> aiomqtt.Client:
    """A plain MQTT client logged in as ``user`` (``floatkeyd`` may use every topic)."""
    options = server.broker(user)
    return aiomqtt.Client(
        options.host,
        options.port,
        username=options.username,
        password=options.password_for(Path("/")),
        identifier=identifier,
        keepalive=30,
        tls_context=tls_context(options),
    )


def make_agent(server: Server, workdir: Path, name: str, **overrides: object) -> Agent:
    """A real ``floatkey.Agent`` for ``server``, with a unique client id."""
    path = write_agent_config(server, workdir / f"{name}.toml", **overrides)
    return Agent(
        load_agent_config(path), app="test-app", client_id=f"{name}-{uuid.uuid4().hex[:8]}"
    )


async def eventually(
    check: Callable[[], object], within: float = 10, interval: float = 0.05
) -> object:
    """Wait until ``check()`` is truthy; return its value.

    ``check`` may return an awaitable (``lambda: asyncio.to_thread(status, server)``),
    which is awaited: a floatkeyctl round trip then does not freeze the test's loop.
    """
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        await asyncio.sleep(interval)
    msg = f"condition not met within {within} s"
    raise AssertionError(msg)


def clients(server: Server) -> list[dict[str, object]]:
    """``floatkeyctl clients --json``."""
    from licensing import ctl  # noqa: PLC0415 - licensing imports this module

    result = ctl(server, "clients", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["clients"]  # type: ignore[no-any-return]


def status(server: Server) -> dict[str, object]:
    """``floatkeyctl status --json``."""
    from licensing import ctl  # noqa: PLC0415

    result = ctl(server, "status", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


async def daemon_report(server: Server) -> protocol.StatusReport:
    """The daemon's status as the protocol carries it, internal counters (``tasks``) too."""
    async with AdminSession(
        server.broker("floatkey-admin"),
        server.topics,
        load_private_key(CONFIG / "dev-admin.key"),
        base=CONFIG,
        server_key=server.server_key(),
    ) as session:
        result = await session.send(protocol.AdminStatus(request_id=session.request_id()))
    assert result.status is not None, result.message
    return result.status


def answering(server: Server) -> bool:
    """Whether the daemon answers an admin command now (after a broker restart, a command
    sent before it has subscribed again is lost, and floatkeyctl waits out its timeout)."""
    from licensing import ctl  # noqa: PLC0415

    return ctl(server, "status", "--timeout", "2").returncode == 0


def read_terminal(primary: int) -> str:
    """Everything written to a pseudo-terminal until its last writer closes it."""
    chunks = []
    try:
        while chunk := os.read(primary, 4096):
            chunks.append(chunk)
    except OSError:  # EIO: the process on the other side has exited
        pass
    finally:
        os.close(primary)
    return b"".join(chunks).decode(errors="replace")


class Terminal:
    """The primary side of a pseudo-terminal: read what a process shows, type answers."""

    def __init__(self, primary: int) -> None:
        self.primary = primary
        self.screen = ""

    def _read(self, timeout: float) -> bool:
        """Read what is there within ``timeout``; return False once the other side closed."""
        ready, _, _ = select.select([self.primary], [], [], timeout)
        if not ready:
            return True
        try:
            chunk = os.read(self.primary, 4096)
        except OSError:  # EIO: the process on the other side has exited
            return False
        self.screen += chunk.decode(errors="replace")
        return bool(chunk)

    def _wait_for(self, text: str, within: float) -> str:
        deadline = time.monotonic() + within
        while text not in self.screen:
            left = deadline - time.monotonic()
            if left <= 0 or not self._read(min(left, 0.5)):
                break
        if text not in self.screen:
            msg = f"{text!r} not shown within {within} s; the screen:\n{self.screen}"
            raise AssertionError(msg)
        return self.screen

    async def wait_for(self, text: str, within: float = 30) -> str:
        """Wait until ``text`` is on the screen; return the screen so far."""
        return await asyncio.to_thread(self._wait_for, text, within)

    def type(self, text: str) -> None:
        """Type ``text`` as a person would."""
        os.write(self.primary, text.encode())

    async def rest(self) -> str:
        """Everything until the process closes the terminal; the whole screen."""
        self.screen += await asyncio.to_thread(read_terminal, self.primary)
        return self.screen
