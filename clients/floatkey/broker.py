"""How floatkey connects to an MQTT broker: options shared by the daemon, agents and tools."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import aiomqtt
import msgspec

from floatkey.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from aiomqtt.types import SocketOption

__all__ = [
    "Backoff",
    "BrokerOptions",
    "TLSOptions",
    "connect",
    "connected",
    "connection_advice",
    "settled",
]

T = TypeVar("T")

# Without TCP_NODELAY a QoS 1 request/response round trip on loopback takes ~88 ms
# instead of ~1 ms: Nagle's algorithm meets the peer's delayed ACK.
NODELAY: tuple[SocketOption, ...] = ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)


class TLSOptions(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """TLS to the broker: CA bundle, and a client certificate where the broker wants one."""

    ca: str | None = None
    cert: str | None = None
    key: str | None = None

    def context(self, base: Path) -> ssl.SSLContext:
        """Return the SSL context; relative paths are taken from ``base``.

        Raises ``ConfigError`` naming the setting when a file cannot be read or used.
        """
        try:
            context = ssl.create_default_context(cafile=str(base / self.ca) if self.ca else None)
        except OSError as exc:  # ssl.SSLError included: not a certificate
            raise ConfigError(
                f"[broker.tls] ca = {self.ca!r}: cannot use {base / str(self.ca)} as the CA "
                f"bundle ({_why(exc)}). Name a PEM file with the CA that signed the broker's "
                "certificate."
            ) from None
        if self.cert:
            try:
                context.load_cert_chain(base / self.cert, base / self.key if self.key else None)
            except OSError as exc:
                raise ConfigError(
                    f"[broker.tls] cert = {self.cert!r}, key = {self.key!r}: cannot use them as "
                    f"the client certificate ({_why(exc)}). Name PEM files of a certificate "
                    "and its private key."
                ) from None
        return context


def _why(error: OSError) -> str:
    return error.strerror or str(error)


class BrokerOptions(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Where the broker is and how to log in."""

    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = None
    #: A file holding the password instead (``$VARS`` expanded, relative to the config):
    #: a root-only file, or a systemd credential (``${CREDENTIALS_DIRECTORY}/...``), so the
    #: config itself may be world-readable.
    password_file: str | None = None
    keepalive: int = 30
    tls: TLSOptions | None = None

    def password_for(self, base: Path, section: str = "broker") -> str | None:
        """The password, read from ``password_file`` if that is set.

        Raises ``ConfigError`` naming the setting when the file cannot be read.
        """
        if self.password_file is None:
            return self.password
        path = Path(base) / os.path.expandvars(self.password_file)
        try:
            return path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise ConfigError(
                f"[{section}] password_file = {self.password_file!r}: cannot read {path} ({why}). "
                "Name a file holding the broker password, readable by this user."
            ) from None

    def __post_init__(self) -> None:
        if self.password is not None and self.password_file is not None:
            raise msgspec.ValidationError("set either password or password_file, not both")
        if not 0 < self.port < 65536:
            raise msgspec.ValidationError("port must be between 1 and 65535")
        if not 5 <= self.keepalive <= 3600:
            raise msgspec.ValidationError("keepalive must be between 5 and 3600 seconds")

    def describe(self) -> str:
        """``mqtt://host:port`` or ``mqtts://host:port``, for status output."""
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


class Backoff:
    """Capped, jittered exponential back-off between reconnection attempts.

    Shared by the daemon and the agents. Capped low: after a broker outage every client
    should be back within seconds of its return. Jittered (each delay drawn from the
    upper half of the current step), so a thousand agents cut off together do not all
    knock on the broker in the same instant.
    """

    def __init__(self, start: float = 0.25, cap: float = 4.0) -> None:
        if not 0 < start <= cap:
            msg = f"back-off needs 0 < start <= cap, not {start} and {cap}"
            raise ValueError(msg)
        self._start, self._cap = start, cap
        self._step = start

    def next_delay(self) -> float:
        """The delay before the next attempt; each call doubles the step, up to the cap."""
        delay = random.uniform(self._step / 2, self._step)  # noqa: S311 - jitter, not crypto
        self._step = min(self._step * 2, self._cap)
        return delay

    def reset(self) -> None:
        """A connection succeeded: the next failure starts from the shortest delay."""
        self._step = self._start


def connect(  # noqa: PLR0913 - keyword-only tuning of one connection
    options: BrokerOptions,
    *,
    identifier: str,
    base: Path,
    will: aiomqtt.Will | None = None,
    max_queued_incoming: int = 10_000,
    max_in_flight: int = 10,
) -> aiomqtt.Client:
    """Return an unconnected aiomqtt client (use ``async with``), MQTT 3.1.1, TCP_NODELAY.

    3.1.1 because the embedded broker speaks nothing newer; the protocol needs no more.
    ``max_queued_incoming`` bounds memory when a flood arrives faster than it is handled.
    ``max_in_flight``: how many unacknowledged publishes are normal for this client;
    aiomqtt logs a warning for every publish beyond it.
    Raises ``ConfigError`` when the TLS files or the password file cannot be used.
    """
    client = aiomqtt.Client(
        options.host,
        options.port,
        username=options.username,
        password=options.password_for(base),
        identifier=identifier,
        keepalive=options.keepalive,
        will=will,
        protocol=aiomqtt.ProtocolVersion.V311,
        clean_session=True,
        tls_context=options.tls.context(base) if options.tls else None,
        socket_options=NODELAY,
        max_queued_incoming_messages=max_queued_incoming,
        timeout=10,
    )
    client.pending_calls_threshold = max_in_flight
    return client


async def settled(operation: Awaitable[T]) -> T:
    """Await an aiomqtt operation without losing a cancellation that arrives meanwhile.

    aiomqtt waits for PUBACK/SUBACK with ``asyncio.wait_for``, which on Python 3.11
    swallows a cancellation delivered in the same loop tick as the acknowledgement
    (CPython gh-86296, fixed in 3.12). A background loop that loses its cancellation
    runs on forever and its owner's shutdown hangs. The task still counts the request
    (``cancelling()``), so it is raised again here. Only for tasks that are cancelled
    solely to stop them: code that catches a cancellation and carries on must not call it.
    """
    result = await operation
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
    return result


async def connected(client: aiomqtt.Client) -> None:
    """Connect ``client`` (its ``__aenter__``), completed even if cancelled meanwhile.

    aiomqtt connects in an executor thread that a cancellation does not stop: left there,
    it would start the client's housekeeping task while the event loop shuts down, and
    the socket would be closed at garbage collection, after the loop (an "Event loop is
    closed" error). So a cancelled connection is completed and closed first, then the
    cancellation goes on. Raises ``aiomqtt.MqttError`` as ``__aenter__`` does.
    """
    entering = asyncio.ensure_future(client.__aenter__())
    try:
        await asyncio.shield(entering)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await entering
            await client.__aexit__(None, None, None)
        raise


def connection_advice(error: str) -> str:
    """What to check, for an aiomqtt connection error's text (said to customers)."""
    text = error.lower()
    if "certificate" in text or "ssl" in text or "tls" in text:
        return (
            "The TLS handshake with the broker failed: `[broker.tls] ca` must name the CA "
            "that signed the broker's certificate, the certificate must be issued for the "
            "name in `[broker] host`, and the port must be the broker's TLS listener."
        )
    if "not authori" in text or "user name or password" in text:
        return (
            "The broker refused the login: check `[broker] username` and `password` against "
            "the broker's password file."
        )
    if "refused" in text or "timed out" in text or "unreachable" in text:
        return (
            "Nothing answered there: check `[broker] host` and `port`, and that the broker "
            "is running."
        )
    return "Check the `[broker]` settings and that the broker is running."
