"""Talking to a running daemon as an administrator: signed commands, verified answers.

Used by ``floatkeyctl``, the tests and the benchmarks.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import TYPE_CHECKING, Self

import aiomqtt
import msgspec
import structlog

from floatkey import protocol
from floatkey.broker import connect, connection_advice
from floatkey.envelope import EnvelopeError, Signer, open_envelope
from floatkey.errors import FloatkeyError
from floatkey.signing import key_id, parse_public_key
from floatkeyd.statedir import IDENTITY_FILE

if TYPE_CHECKING:
    from pathlib import Path

    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

    from floatkey.broker import BrokerOptions
    from floatkey.protocol import AdminCommand, AdminResult, Topics

__all__ = ["AdminSession", "DaemonUnreachable", "find_server_key"]

log = structlog.get_logger("floatkeyctl")


class DaemonUnreachable(FloatkeyError):
    """The broker could not be reached, or the daemon did not answer in time."""

    reason = "unreachable"


def find_server_key(state_dir: Path) -> Ed25519PublicKey | None:
    """The server public key from the daemon's state directory, if this user may read it."""
    try:
        return parse_public_key((state_dir / (IDENTITY_FILE + ".pub")).read_text())
    except (OSError, ValueError):
        return None


class AdminSession:
    """One broker connection for sending admin commands. ``async with AdminSession(...)``.

    ``server_key`` pins the daemon's key; without it the retained identity is trusted on
    first use (and the caller is told, so it can warn).
    """

    def __init__(  # noqa: PLR0913 - connection, identity and trust are all needed
        self,
        broker: BrokerOptions,
        topics: Topics,
        admin_key: Ed25519PrivateKey,
        *,
        base: Path,
        server_key: Ed25519PublicKey | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.topics = topics
        self.timeout = timeout
        self.server_key = server_key
        self.trusted_on_first_use = False
        self._signer = Signer(admin_key)
        self._client = connect(
            broker,
            identifier=f"floatkeyctl-{secrets.token_hex(6)}",
            base=base,
        )
        self._replies: dict[str, asyncio.Future[AdminResult]] = {}
        self._identity: asyncio.Future[Ed25519PublicKey] | None = None
        self._listener: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        try:
            await self._client.__aenter__()
        except aiomqtt.MqttError as exc:
            raise DaemonUnreachable(
                f"Cannot reach the MQTT broker: {exc}. {connection_advice(str(exc))}"
            ) from None
        self._listener = asyncio.create_task(self._listen(), name="admin-replies")
        await self._client.subscribe(self.topics.admin_reply("+"), qos=1)
        if self.server_key is None:
            loop = asyncio.get_running_loop()
            self._identity = loop.create_future()
            await self._client.subscribe(self.topics.identity, qos=1)
            try:
                async with asyncio.timeout(self.timeout):
                    self.server_key = await self._identity
            except TimeoutError:
                await self.__aexit__(None, None, None)
                raise DaemonUnreachable(
                    f"No floatkey server {self.topics.server!r} is publishing on this broker "
                    "(no identity seen). Check that floatkeyd is running and the server name.",
                ) from None
            self.trusted_on_first_use = True
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
        try:
            await self._client.__aexit__(None, None, None)
        except aiomqtt.MqttError:
            log.debug("broker connection closed uncleanly")

    async def _listen(self) -> None:
        async for message in self._client.messages:
            topic = message.topic.value
            payload = message.payload
            if topic == self.topics.identity and self._identity and not self._identity.done():
                try:
                    identity = protocol.decode(bytes(payload), protocol.Identity)
                    self._identity.set_result(parse_public_key(identity.public_key))
                except (ValueError, msgspec.DecodeError):
                    log.warning("unreadable server identity ignored")
                continue
            await self._take_reply(topic, bytes(payload))

    async def _take_reply(self, topic: str, payload: bytes) -> None:
        request_id = topic.rsplit("/", 1)[-1]
        waiter = self._replies.get(request_id)
        if waiter is None or waiter.done() or self.server_key is None:
            return
        try:
            body = open_envelope(payload, topic, {key_id(self.server_key): self.server_key})
            result = protocol.decode(body, protocol.AdminResult)
        except (EnvelopeError, msgspec.DecodeError):
            log.warning("unverifiable admin reply ignored", topic=topic)
            return
        if result.request_id == request_id:
            waiter.set_result(result)

    async def send(self, command: AdminCommand) -> AdminResult:
        """Send ``command`` and return the daemon's verified answer.

        Raises ``DaemonUnreachable`` when no answer comes within the timeout.
        """
        waiter: asyncio.Future[AdminResult] = asyncio.get_running_loop().create_future()
        self._replies[command.request_id] = waiter
        try:
            topic = self.topics.admin_request
            await self._client.publish(
                topic,
                self._signer.seal(topic, protocol.encode(command)),
                qos=1,
            )
            async with asyncio.timeout(self.timeout):
                return await waiter
        except TimeoutError:
            raise DaemonUnreachable(
                f"The license server did not answer within {self.timeout:g} s. Check that "
                "floatkeyd is running (systemctl status floatkeyd) and connected to the broker.",
            ) from None
        finally:
            self._replies.pop(command.request_id, None)

    @staticmethod
    def request_id() -> str:
        """A fresh random request id."""
        return secrets.token_hex(12)
