"""The console's side of the protocol: admin commands, and what the daemon broadcasts.

``DaemonLink`` keeps one ``AdminSession`` (floatkeyctl's admin client) open and opens a
new one when the broker or the daemon failed it. ``LiveFeed`` follows the daemon for the
pages' live parts: the signed ``state`` and ``events`` topics (a new license at once),
and, while someone watches, ``admin.status`` and ``admin.clients`` once a second (seats
are not broadcast: the state does not change when one is taken or given back).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Self

import aiomqtt
import msgspec
import structlog

from floatkey import protocol
from floatkey.broker import connect, connected, settled
from floatkey.envelope import EnvelopeError, open_envelope
from floatkey.signing import key_id
from floatkeyd.admin_client import AdminSession, DaemonUnreachable

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

    from floatkey.broker import BrokerOptions
    from floatkey.protocol import AdminCommand, AdminResult, Topics

__all__ = ["DaemonLink", "LiveFeed", "Snapshot"]

log = structlog.get_logger("floatkey-console")

#: How often the live parts ask the daemon, while a page is watching.
POLL_INTERVAL_S = 1.0


class DaemonLink:
    """Admin commands to the daemon over one kept-open ``AdminSession``.

    A failed session is closed and the next command opens a new one, so a broker or
    daemon restart costs one failed page, not the console.
    """

    def __init__(  # noqa: PLR0913 - connection, identity and trust
        self,
        broker: BrokerOptions,
        topics: Topics,
        admin_key: Ed25519PrivateKey,
        *,
        base: Path,
        server_key: Ed25519PublicKey | None,
        timeout: float = 8.0,
    ) -> None:
        self.broker = broker
        self.topics = topics
        self.base = base
        self.timeout = timeout
        self._admin_key = admin_key
        self._server_key = server_key
        self._session: AdminSession | None = None
        self._opening = asyncio.Lock()

    @property
    def server_key(self) -> Ed25519PublicKey | None:
        """The daemon's key: configured, or trusted on first use."""
        return self._server_key

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._drop()

    async def send(self, command: AdminCommand) -> AdminResult:
        """Send ``command``; the daemon's verified answer. Raises ``DaemonUnreachable``."""
        session = await self._open()
        try:
            return await session.send(command)
        except DaemonUnreachable:
            await self._drop(session)
            raise

    @staticmethod
    def request_id() -> str:
        """A fresh random request id."""
        return AdminSession.request_id()

    async def _open(self) -> AdminSession:
        async with self._opening:
            if self._session is not None:
                return self._session
            session = AdminSession(
                self.broker,
                self.topics,
                self._admin_key,
                base=self.base,
                server_key=self._server_key,
                timeout=self.timeout,
            )
            await session.__aenter__()
            if self._server_key is None and session.server_key is not None:
                log.warning(
                    "trusting the server key the daemon publishes (set [console] server_key "
                    "to pin it)",
                    kid=key_id(session.server_key),
                )
            self._server_key = session.server_key
            self._session = session
            return session

    async def _drop(self, session: AdminSession | None = None) -> None:
        async with self._opening:
            if self._session is None or (session is not None and session is not self._session):
                return
            dropping, self._session = self._session, None
        await dropping.__aexit__(None, None, None)


@dataclass(slots=True)
class Snapshot:
    """The latest answers for the live parts; ``error`` when the daemon did not answer."""

    status: protocol.StatusReport | None = None
    clients: list[protocol.ClientRow] = field(default_factory=list)
    error: str = ""
    #: Grows at every change: watchers compare it with the one they showed.
    version: int = 0


class LiveFeed:
    """The daemon's status and clients, kept current while at least one page watches.

    ``async with LiveFeed(link)``: owns two named tasks in one ``TaskGroup`` (the poller,
    and the follower of ``state`` and ``events``), cancelled and awaited on exit. A
    failed round is logged and retried: a live page says the daemon is away, and
    recovers when it is back. Both tasks are cancelled only to stop them, so each loop
    stops at its next turn once asked, even where aiomqtt lost the cancellation
    (``floatkey.broker.settled``): the console's shutdown never hangs on them.
    """

    def __init__(self, link: DaemonLink) -> None:
        self._link = link
        self.snapshot = Snapshot()
        self._changed = asyncio.Condition()
        self._wake = asyncio.Event()
        self._watchers = 0
        self._group: asyncio.TaskGroup | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._last_round = -float("inf")  # loop time of the latest answer

    async def __aenter__(self) -> Self:
        self._group = asyncio.TaskGroup()
        await self._group.__aenter__()
        self._tasks = [
            self._group.create_task(self._poll(), name="console-poll"),
            self._group.create_task(self._follow(), name="console-follow"),
        ]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._group is not None
        for task in self._tasks:
            task.cancel()
        await self._group.__aexit__(None, None, None)

    @contextlib.asynccontextmanager
    async def watching(self) -> AsyncIterator[None]:
        """While open, the feed asks the daemon every second (or at once on a broadcast)."""
        self._watchers += 1
        self._wake.set()
        try:
            yield
        finally:
            self._watchers -= 1

    def first_to_show(self) -> int:
        """The version a new watcher should treat as shown.

        A snapshot from before the page was opened may be older than the page (nobody
        watched for a while): then only the next change is sent. A recent one is sent.
        """
        recent = asyncio.get_running_loop().time() - self._last_round < 2 * POLL_INTERVAL_S
        return -1 if recent else self.snapshot.version

    async def next_change(self, shown: int, wait_s: float) -> Snapshot | None:
        """The snapshot once its version is not ``shown``; ``None`` after ``wait_s``."""
        try:
            async with asyncio.timeout(wait_s), self._changed:
                await self._changed.wait_for(lambda: self.snapshot.version != shown)
                return self.snapshot
        except TimeoutError:
            return None

    async def _poll(self) -> None:
        while True:
            _stop_if_asked()
            if self._watchers == 0:
                self._wake.clear()
                await self._wake.wait()
            await self._round()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL_INTERVAL_S):
                    await self._wake.wait()

    async def _round(self) -> None:
        """Ask for status and clients; publish a new snapshot if anything changed."""
        try:
            status = await self._link.send(protocol.AdminStatus(request_id=self._link.request_id()))
            clients = await self._link.send(
                protocol.AdminClients(request_id=self._link.request_id())
            )
        except DaemonUnreachable as exc:
            fresh = Snapshot(self.snapshot.status, self.snapshot.clients, exc.message)
        except Exception as exc:  # noqa: BLE001 - one failed round costs one round
            log.error("live update failed", error=repr(exc)[:200])
            fresh = Snapshot(self.snapshot.status, self.snapshot.clients, "internal error")
        else:
            if not status.ok or not clients.ok:
                refused = status if not status.ok else clients
                message = f"The license server refused the console: {refused.message}"
                fresh = Snapshot(self.snapshot.status, self.snapshot.clients, message)
            else:
                fresh = Snapshot(status.status, clients.clients or [])
                self._last_round = asyncio.get_running_loop().time()
        await self._publish(fresh)

    async def _publish(self, fresh: Snapshot) -> None:
        old = self.snapshot
        same = (
            _comparable(fresh.status) == _comparable(old.status)
            and fresh.clients == old.clients
            and fresh.error == old.error
        )
        if same:
            return
        fresh.version = old.version + 1
        async with self._changed:
            self.snapshot = fresh
            self._changed.notify_all()

    async def _follow(self) -> None:
        """Follow ``state`` and ``events``: a license change refreshes the pages at once."""
        while True:
            try:
                await self._follow_once()
            except aiomqtt.MqttError as exc:
                log.info("state follower lost the broker; retrying", error=str(exc)[:200])
            except DaemonUnreachable as exc:
                log.info("state follower waits for the daemon", error=exc.message[:200])
            except Exception as exc:  # noqa: BLE001 - retried, never fatal
                log.error("state follower failed; retrying", error=repr(exc)[:200])
            _stop_if_asked()
            await asyncio.sleep(3)

    async def _follow_once(self) -> None:
        key = self._link.server_key
        if key is None:
            # Learn (and trust) the key the way the admin session does.
            await self._link.send(protocol.AdminStatus(request_id=self._link.request_id()))
            key = self._link.server_key
        assert key is not None
        trusted = {key_id(key): key}
        topics = self._link.topics
        identifier = f"floatkey-console-{secrets.token_hex(8)}"
        client = connect(self._link.broker, identifier=identifier, base=self._link.base)
        await connected(client)  # completed and closed if the console stops meanwhile
        try:
            # settled: a cancellation (the console stopping) must not be lost in them.
            await settled(client.subscribe(topics.state, qos=1))
            await settled(client.subscribe(topics.events, qos=1))
            await self._wake_on_broadcasts(client, trusted)
        finally:
            await client.__aexit__(None, None, None)

    async def _wake_on_broadcasts(
        self, client: aiomqtt.Client, trusted: dict[str, Ed25519PublicKey]
    ) -> None:
        """Wake the poller at every verified ``state`` or ``event``."""
        topics = self._link.topics
        async for message in client.messages:
            topic = message.topic.value
            if topic not in {topics.state, topics.events}:
                continue  # amqtt also hands a new session other retained topics
            try:
                body = open_envelope(bytes(message.payload), topic, trusted)
                if topic == topics.state:
                    protocol.decode(body, protocol.State)
                else:
                    protocol.decode(body, protocol.Event)
            except (EnvelopeError, msgspec.DecodeError):
                log.warning("unverifiable broadcast ignored", topic=topic)
                continue
            self._wake.set()  # the poller asks at once


def _stop_if_asked() -> None:
    """Raise ``CancelledError`` if this task was asked to stop and the request got lost.

    On Python 3.11 aiomqtt's acknowledgement waits can swallow a cancellation (CPython
    gh-86296); the task still counts it (``cancelling()``).
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _comparable(status: protocol.StatusReport | None) -> object:
    # The task count moves all the time and is shown nowhere in the console.
    return None if status is None else msgspec.structs.replace(status, tasks=0)
