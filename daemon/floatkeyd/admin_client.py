"""Talking to a running daemon as an administrator: signed commands, verified answers.

Used by ``floatkeyctl``, the tests and the benchmarks.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import TYPE_CHECKING, Self, TypeVar

import aiomqtt
import msgspec
import structlog

from floatkey import protocol
from floatkey.broker import connect, connected, connection_advice
from floatkey.envelope import EnvelopeError, Signer, open_envelope
from floatkey.errors import FloatkeyError
from floatkey.signing import key_id, parse_public_key
from floatkeyd.statedir import IDENTITY_FILE
from floatkeyd.unlockbox import seal_product_key

if TYPE_CHECKING:
    from collections.abc import Awaitable
    from pathlib import Path

    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

    from floatkey.broker import BrokerOptions
    from floatkey.protocol import AdminCommand, AdminResult, Topics

__all__ = ["AdminSession", "DaemonUnreachable", "find_server_key"]

log = structlog.get_logger("floatkeyctl")
T = TypeVar("T")


class DaemonUnreachable(FloatkeyError):
    """The broker could not be reached or failed us, or the daemon did not answer in time."""

    reason = "unreachable"


def find_server_key(state_dir: Path) -> Ed25519PublicKey | None:
    """The server public key from the daemon's state directory, if this user may read it."""
    try:
        return parse_public_key((state_dir / (IDENTITY_FILE + ".pub")).read_text())
    except (OSError, ValueError):
        return None


def _broker_failed(error: aiomqtt.MqttError) -> DaemonUnreachable:
    """The sentence for a broker connection that failed after it was made."""
    # aiomqtt puts the reason the connection went (paho's "The connection was lost")
    # in the cause of its "Disconnected during message iteration".
    why = f"{error} ({error.__cause__})" if error.__cause__ else str(error)
    return DaemonUnreachable(
        f"Lost the connection to the MQTT broker: {why}. Check that the broker is running; "
        "its log says why it closed the connection (a message over its max_packet_size, "
        "a login it refuses)."
    )


class AdminSession:
    """One broker connection for sending admin commands. ``async with AdminSession(...)``.

    ``server_key`` pins the daemon's key; without it the retained identity is trusted on
    first use (and the caller is told, so it can warn).

    The session owns one task, the listener that reads the daemon's answers; it is
    cancelled and awaited when the session closes, also when opening it fails. Every
    broker failure, whenever it happens, is raised as ``DaemonUnreachable`` with what to
    check; once the listener has lost the connection, whatever is waiting for the broker
    gets that failure at once, not a timeout.
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
        self._signer = Signer(admin_key)
        # Random: the answers go to admin/reply/{identifier}/..., readable by it alone.
        self.identifier = f"floatkeyctl-{secrets.token_hex(12)}"
        self._client = connect(broker, identifier=self.identifier, base=base)
        self._replies: dict[str, asyncio.Future[AdminResult]] = {}
        self._identity: asyncio.Future[Ed25519PublicKey] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._failure: DaemonUnreachable | None = None  # why the listener stopped
        self._unlock_key: str | None = None
        # The digest of each pending command's envelope, to recognise its refusals.
        self._sent: dict[str, str] = {}
        # The pending commands that got an answer the trusted server key did not verify:
        # per command, so a long-lived session (the console's) blames the key only for a
        # timeout that had such an answer.
        self._unverified: set[str] = set()

    async def __aenter__(self) -> Self:
        try:
            await connected(self._client)
        except aiomqtt.MqttError as exc:
            raise DaemonUnreachable(
                f"Cannot reach the MQTT broker: {exc}. {connection_advice(str(exc))}"
            ) from None
        # From here the session holds a connection and a task: a failure closes both.
        try:
            await self._open()
        except BaseException:
            await self._close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._close()

    async def _open(self) -> None:
        self._listener = asyncio.create_task(self._listen(), name="admin-replies")
        replies = self.topics.admin_reply(self.identifier, "+")
        await self._unless_lost(self._client.subscribe(replies, qos=1))
        if self.server_key is not None:
            return
        self._identity = asyncio.get_running_loop().create_future()
        await self._unless_lost(self._client.subscribe(self.topics.identity, qos=1))
        try:
            async with asyncio.timeout(self.timeout):
                self.server_key = await self._unless_lost(self._identity)
        except TimeoutError:
            raise DaemonUnreachable(
                f"No floatkey server {self.topics.server!r} is publishing on this broker "
                "(no identity seen). Check that floatkeyd is running and the server name.",
            ) from None

    async def _close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
        try:
            await self._client.__aexit__(None, None, None)
        except aiomqtt.MqttError:
            log.debug("broker connection closed uncleanly")

    async def _unless_lost(self, operation: Awaitable[T]) -> T:
        """Await ``operation`` (a broker call or an answer); fail as soon as the listener does.

        Without the race a lost connection would surface only as aiomqtt's own timeout
        on the acknowledgement, or as the daemon "not answering".
        """
        assert self._listener is not None, "the session is not open"
        step = asyncio.ensure_future(operation)
        try:
            await asyncio.wait({step, self._listener}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not step.done():
                step.cancel()
                await asyncio.wait({step})  # owned: never left running
        if not step.cancelled() and step.exception() is None:
            return step.result()
        if self._listener.done():
            raise self._listener_failure()
        try:
            return step.result()
        except aiomqtt.MqttError as exc:
            raise _broker_failed(exc) from None

    def _listener_failure(self) -> BaseException:
        """Why the listener stopped: a broker failure, or the error it died of."""
        assert self._listener is not None
        if self._failure is not None:
            return self._failure
        if not self._listener.cancelled() and (error := self._listener.exception()):
            return error
        return DaemonUnreachable("The admin session is closed.")

    async def _listen(self) -> None:
        try:
            async for message in self._client.messages:
                self._take(message.topic.value, bytes(message.payload))
        except aiomqtt.MqttError as exc:
            self._failure = _broker_failed(exc)

    def _take(self, topic: str, payload: bytes) -> None:
        if topic == self.topics.identity:
            if self._identity is not None and not self._identity.done():
                try:
                    identity = protocol.decode(payload, protocol.Identity)
                    self._identity.set_result(parse_public_key(identity.public_key))
                except (ValueError, msgspec.DecodeError):
                    log.warning("unreadable server identity ignored")
            return
        self._take_reply(topic, payload)

    def _take_reply(self, topic: str, payload: bytes) -> None:
        request_id = topic.rsplit("/", 1)[-1]
        waiter = self._replies.get(request_id)
        if waiter is None or waiter.done() or self.server_key is None:
            return
        try:
            body = open_envelope(payload, topic, {key_id(self.server_key): self.server_key})
            result = protocol.decode(body, protocol.AdminResult)
        except (EnvelopeError, msgspec.DecodeError):
            log.warning("unverifiable admin reply ignored", topic=topic)
            self._unverified.add(request_id)
            return
        if result.refused and result.refused != self._sent.get(request_id):
            # A refusal of someone else's envelope that borrowed our request id.
            log.warning("refusal of another command ignored", request_id=request_id)
            return
        if result.request_id == request_id:
            waiter.set_result(result)

    async def send(self, command: AdminCommand) -> AdminResult:
        """Send ``command`` and return the daemon's verified answer.

        Raises ``DaemonUnreachable`` when the broker fails (at once, with its reason) or
        no answer comes within the timeout.
        """
        command = msgspec.structs.replace(command, reply_to=self.identifier)
        if isinstance(command, protocol.AdminUnlock) and command.key:
            # Never in clear over the broker: sealed to this server's unlock key.
            unlock_key = await self.unlock_key()
            if isinstance(unlock_key, protocol.AdminResult):  # refused: this admin's answer
                return msgspec.structs.replace(unlock_key, request_id=command.request_id)
            box = seal_product_key(unlock_key, command.request_id, command.key)
            command = msgspec.structs.replace(command, key="", sealed_key=box)
        waiter: asyncio.Future[AdminResult] = asyncio.get_running_loop().create_future()
        self._replies[command.request_id] = waiter
        try:
            topic = self.topics.admin_request
            sealed = self._signer.seal(topic, protocol.encode(command))
            self._sent[command.request_id] = protocol.envelope_digest(sealed)
            async with asyncio.timeout(self.timeout):
                await self._unless_lost(self._client.publish(topic, sealed, qos=1))
                result = await self._unless_lost(waiter)
        except TimeoutError:
            if command.request_id in self._unverified:
                raise DaemonUnreachable(
                    "An answer came, but it was not signed by the server key this floatkeyctl "
                    "trusts (server_key in admin.toml, or the daemon's state directory): "
                    "either the key is not this server's (`floatkeyctl server-key` on the "
                    "server prints it) or something else answers on this broker.",
                ) from None
            # Mosquitto drops, without a word, what its ACL refuses (MQTT 3.1.1 has no
            # way to say it): that looks exactly like a daemon that does not answer.
            raise DaemonUnreachable(
                f"The license server did not answer within {self.timeout:g} s. Check that "
                "floatkeyd is running (systemctl status floatkeyd) and connected to the "
                "broker, and that the broker's ACL lets this admin user write "
                f"{self.topics.admin_request} and read "
                f"{self.topics.admin_reply(self.identifier, '+')}.",
            ) from None
        finally:
            self._replies.pop(command.request_id, None)
            self._sent.pop(command.request_id, None)
            self._unverified.discard(command.request_id)
        if result.status is not None and result.status.unlock_key:
            self._unlock_key = result.status.unlock_key  # a status just fetched serves an unlock
        return result

    async def unlock_key(self) -> str | AdminResult:
        """The server's unlock key (from a signed ``admin.status``), asked once.

        The refusal instead, when the daemon refuses this administrator. Raises
        ``DaemonUnreachable`` like :meth:`send`.
        """
        if self._unlock_key is None:
            result = await self.send(protocol.AdminStatus(request_id=self.request_id()))
            if not result.ok:
                return result
            if result.status is None or not result.status.unlock_key:
                raise DaemonUnreachable(
                    "The license server did not say how to seal a product key for it "
                    f"({result.reason or 'no unlock key'}): it may be an older floatkeyd. "
                    "Update it, then unlock again."
                )
            self._unlock_key = result.status.unlock_key
        return self._unlock_key

    @staticmethod
    def request_id() -> str:
        """A fresh random request id."""
        return secrets.token_hex(12)
