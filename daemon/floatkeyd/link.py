"""The daemon's link to the broker, and the seam where tests put their own.

:class:`Link` is everything the daemon's logic needs of a broker: publish now (state,
events, admin replies: awaited, QoS 1) and send later (seat replies: queued and
pipelined). :class:`MqttLink` is the real one; a test can hand the components an
in-memory link instead and drive the daemon's logic without a broker, the way httpx
tests swap their transport. The real-broker tests stay: the seam is for the logic.

:class:`MqttLink` owns two named tasks:

``mqtt``     connect (reconnect with the shared capped, jittered back-off), subscribe,
             tell the :class:`Inbox` it is connected, then hand it messages one at a time
``replies``  publishes queued seat replies in pipelined batches (QoS 1)
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Protocol

import aiomqtt
import structlog

from floatkey.broker import Backoff, connect, connection_advice, settled
from floatkey.errors import ConfigError

if TYPE_CHECKING:
    from pathlib import Path

    from floatkey.broker import BrokerOptions
    from floatkeyd.drops import Drops

__all__ = ["Inbox", "Link", "MqttLink"]

log = structlog.get_logger("floatkeyd")

_OUTBOX_SIZE, _REPLY_BATCH = 20_000, 1_000


class Link(Protocol):
    """What the daemon's components need of a broker connection."""

    @property
    def online(self) -> bool:
        """Whether a broker connection is up now."""
        ...

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> bool:
        """Publish now (QoS 1) and wait for the broker; ``False`` when it could not."""
        ...

    def send(self, topic: str, payload: bytes) -> None:
        """Queue a reply (QoS 1, pipelined); never waits. Dropped and counted when full."""
        ...

    async def run(self, inbox: Inbox, stop: asyncio.Event) -> None:
        """Deliver to ``inbox`` until ``stop`` is set."""
        ...


class Inbox(Protocol):
    """The daemon side of a link: what it is told and handed."""

    async def connected(self) -> None:
        """The link is (re)connected and subscribed: publish identity and state."""
        ...

    async def handle(self, topic: str, payload: bytes) -> None:
        """One inbound message. Must not raise."""
        ...

    def offline(self) -> None:
        """The broker connection was lost."""
        ...


class MqttLink:
    """A reconnecting aiomqtt connection; see the module docstring."""

    def __init__(
        self,
        options: BrokerOptions,
        *,
        identifier: str,
        base: Path,
        subscriptions: list[str],
        drops: Drops,
    ) -> None:
        self._options = options
        self._identifier = identifier
        self._base = base
        self._subscriptions = subscriptions
        self._drops = drops
        self._client: aiomqtt.Client | None = None
        self._idle = False
        self._outbox: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(maxsize=_OUTBOX_SIZE)

    @property
    def online(self) -> bool:
        """Whether a broker connection is up now."""
        return self._client is not None

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> bool:
        """Publish now (QoS 1); ``False`` without a broker (the connection loop reconnects)."""
        client = self._client
        if client is None:
            return False
        try:
            await settled(client.publish(topic, payload, qos=1, retain=retain))
        except aiomqtt.MqttError as exc:
            log.warning("publish failed; the broker connection is going", error=str(exc))
            return False
        return True

    def send(self, topic: str, payload: bytes) -> None:
        """Queue a reply for the ``replies`` task.

        The handler does not wait for the broker's PUBACK: that wait, once per message,
        was what limited seat grants (docs/PERFORMANCE.md).
        """
        try:
            self._outbox.put_nowait((topic, payload))
        except asyncio.QueueFull:
            self._drops("outbox_full", topic)

    async def run(self, inbox: Inbox, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set; the message in hand is finished first."""
        async with asyncio.TaskGroup() as tasks:
            connection = tasks.create_task(self._connection(inbox, stop), name="mqtt")
            replies = tasks.create_task(self._send_replies(), name="replies")
            stopping = tasks.create_task(stop.wait(), name="mqtt-stop")
            await asyncio.wait({connection, stopping}, return_when=asyncio.FIRST_COMPLETED)
            while not connection.done():
                # Cancelled only while it waits for a message: nothing is half-done then.
                # Looked at again until then (it may be connecting, or in a message).
                if self._idle:
                    connection.cancel()
                await asyncio.wait({connection}, timeout=0.1)
            replies.cancel()
            stopping.cancel()

    async def _connection(self, inbox: Inbox, stop: asyncio.Event) -> None:
        backoff = Backoff(0.25, 4.0)
        while not stop.is_set():
            try:
                async with connect(
                    self._options,
                    identifier=self._identifier,
                    base=self._base,
                    max_queued_incoming=50_000,
                    # Replies are pipelined a batch at a time, beside events and admin replies.
                    max_in_flight=2 * _REPLY_BATCH,
                ) as client:
                    for topic in self._subscriptions:
                        await client.subscribe(topic, qos=1)
                    self._client = client
                    backoff.reset()
                    await inbox.connected()
                    log.info("broker connected", broker=self._options.describe())
                    await self._consume(client, inbox, stop)
            except (aiomqtt.MqttError, ConfigError) as exc:  # ConfigError: TLS files gone
                self._client = None
                if stop.is_set():
                    break
                inbox.offline()
                delay = backoff.next_delay()
                log.warning(
                    "broker unreachable",
                    broker=self._options.describe(),
                    error=str(exc),
                    advice=connection_advice(str(exc)),
                    retry_in_s=round(delay, 2),
                )
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await stop.wait()
            finally:
                self._client = None

    async def _consume(self, client: aiomqtt.Client, inbox: Inbox, stop: asyncio.Event) -> None:
        """Hand messages over one at a time until the broker goes or ``stop`` is set.

        ``stop`` is looked at between messages: :meth:`run` cancels this task only while
        it waits for the next message (``_idle``), never in the middle of one.
        """
        self._idle = True
        try:
            async for message in client.messages:
                self._idle = False
                payload = message.payload
                data = bytes(payload) if isinstance(payload, bytes | bytearray) else b""
                await inbox.handle(message.topic.value, data)
                self._idle = True
                if stop.is_set():
                    return
        finally:
            self._idle = False

    async def _send_replies(self) -> None:
        """Publish queued replies, all that are waiting at once (QoS 1, pipelined)."""
        while True:
            batch = [await self._outbox.get()]
            while not self._outbox.empty() and len(batch) < _REPLY_BATCH:
                batch.append(self._outbox.get_nowait())
            client = self._client
            if client is None:
                self._drops.add("reply_while_disconnected", len(batch))
                continue  # the agents ask again after a reconnect
            outcomes = await asyncio.gather(
                *(client.publish(topic, payload, qos=1) for topic, payload in batch),
                return_exceptions=True,
            )
            failed = sum(isinstance(outcome, Exception) for outcome in outcomes)
            if failed:
                self._drops.add("reply_failed", failed)
                log.warning("replies not sent", count=failed)
