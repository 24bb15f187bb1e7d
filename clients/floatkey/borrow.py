"""Borrowed seats on the client: ask, keep, verify, return.

``floatkey-agent borrow --days N`` asks the license server to lend a seat; the answer is
a **borrow token** (``borrow.token``, signed with the server key on a topic of its own)
that this module keeps in the agent's state file, beside the pinned server keys::

    {"servers": {...}, "latest_seen_ms": 1795000000000,
     "borrows": {"floatkey/srv1": {"token": "<envelope>", "local_end_ms": 1795259200000}}}

While it is held, :class:`floatkey.Agent` runs the application without the server
(:func:`held_borrow` verifies it at every start). Tamper resistance:

- the token is verified against the pinned server key: an edited end, feature or host
  breaks the signature;
- it names the host it was lent to (:func:`host_identity`, a hash of the machine id):
  copied to another computer it is refused;
- the clock: the latest time seen is kept in the state file and a clock behind it is
  taken as that time (:class:`BorrowClock`), so setting the clock back does not lengthen
  a borrow; ``local_end_ms`` (this computer's clock at the grant plus the borrow's
  length) keeps a clock that was behind the server's from lengthening it either.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import hashlib
import json
import re
import secrets
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import aiomqtt
import msgspec

from floatkey import protocol
from floatkey.broker import connect, settled
from floatkey.envelope import EnvelopeError, open_envelope
from floatkey.errors import BorrowError, ConfigError, NoAnswer
from floatkey.pinning import KnownServers
from floatkey.protocol import (
    BorrowDenied,
    BorrowGranted,
    BorrowReply,
    BorrowReturned,
    BorrowToken,
    SeatBorrow,
    SeatReturn,
)
from floatkey.signing import b64url_decode, key_id, parse_public_key

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from floatkey.config import LoadedAgentConfig

__all__ = [
    "BorrowClock",
    "BorrowStore",
    "HeldBorrow",
    "borrow_seat",
    "held_borrow",
    "host_identity",
    "return_seat",
    "server_key",
    "verify_token",
    "when",
]

#: Where the machine id is read, first found first (systemd, then D-Bus's copy).
MACHINE_ID_FILES = (Path("/etc/machine-id"), Path("/var/lib/dbus/machine-id"))
_UNSAFE = re.compile(r"[^A-Za-z0-9._:-]")
_reply_decoder: msgspec.json.Decoder[BorrowReply] = msgspec.json.Decoder(BorrowReply)


def host_identity() -> str:
    """This computer's identity for borrow tokens: 32 hex digits.

    A hash of the machine id (``/etc/machine-id``, set once when the system is installed,
    unchanged by reboots, network or hardware changes), keyed to floatkey so that the
    machine id itself is not disclosed; without one, of the host name.
    """
    for path in MACHINE_ID_FILES:
        with contextlib.suppress(OSError, UnicodeDecodeError):
            text = path.read_text().strip()
            if text:
                return _hashed("machine-id", text)
    return _hashed("hostname", socket.gethostname())


def _hashed(kind: str, value: str) -> str:
    return hashlib.sha256(f"floatkey/host/v1\n{kind}\n{value}".encode()).hexdigest()[:32]


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class HeldBorrow:
    """A verified borrow token held for one server, and when it ends here (Unix ms)."""

    root: str
    token: BorrowToken
    envelope: str
    ends_at: int

    @property
    def features(self) -> frozenset[str]:
        """The features the application may use under this borrow."""
        return frozenset(self.token.features)


class BorrowStore:
    """The borrow tokens and the latest time seen, in the agent's state file (0600).

    Written beside and renamed, like the pinned keys (:class:`KnownServers`), keeping
    whatever else the file holds.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def _read(self) -> dict[str, object]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _borrows(self, data: dict[str, object]) -> dict[str, dict[str, object]]:
        borrows = data.get("borrows")
        if not isinstance(borrows, dict):
            return {}
        return {k: v for k, v in borrows.items() if isinstance(v, dict)}

    def _write(self, data: dict[str, object]) -> None:
        KnownServers(self.path).write(data)

    def latest_seen(self) -> int:
        """The latest time (Unix ms) any floatkey-agent on this account has seen."""
        value = self._read().get("latest_seen_ms")
        return value if isinstance(value, int) else 0

    def saw(self, now_ms: int) -> None:
        """Remember ``now_ms`` as the latest time seen, if it is later (best effort)."""
        data = self._read()
        seen = data.get("latest_seen_ms")
        if isinstance(seen, int) and seen >= now_ms:
            return
        data["latest_seen_ms"] = now_ms
        with contextlib.suppress(OSError):
            self._write(data)

    def entry(self, root: str) -> tuple[str, int] | None:
        """The token envelope held for ``root`` and its local end, unverified."""
        entry = self._borrows(self._read()).get(root)
        if entry is None:
            return None
        envelope, local_end = entry.get("token"), entry.get("local_end_ms")
        if not isinstance(envelope, str) or not isinstance(local_end, int):
            return None
        return envelope, local_end

    def keep(self, root: str, envelope: str, local_end_ms: int) -> None:
        """Hold ``envelope`` for ``root``. Raises ``OSError``."""
        data = self._read()
        borrows = self._borrows(data)
        borrows[root] = {"token": envelope, "local_end_ms": local_end_ms}
        data["borrows"] = borrows
        self._write(data)

    def forget(self, root: str) -> None:
        """Drop the token held for ``root`` (best effort)."""
        data = self._read()
        borrows = self._borrows(data)
        if borrows.pop(root, None) is None:
            return
        data["borrows"] = borrows
        with contextlib.suppress(OSError):
            self._write(data)


class BorrowClock:
    """Time that a clock set back cannot turn back (Unix ms).

    Never behind the latest time seen (kept in the state file), nor, while it runs,
    behind the time it started plus the monotonic time since.
    """

    def __init__(self, store: BorrowStore) -> None:
        self._store = store
        self._base = max(_wall_ms(), store.latest_seen())
        self._mono = time.monotonic()
        self._seen = self._base
        store.saw(self._base)

    def now(self) -> int:
        """The current time, as described above; remembered in the state file."""
        elapsed = round((time.monotonic() - self._mono) * 1000)
        now = max(_wall_ms(), self._base + elapsed)
        if now > self._seen:
            self._seen = now
            self._store.saw(now)
        return now


def when(ms: int) -> str:
    """A Unix-ms time as a person reads it, in local time."""
    return time.strftime("%Y-%m-%d %H:%M %Z", time.localtime(ms / 1000))


def verify_token(
    envelope: str, topics: protocol.Topics, server_key: Ed25519PublicKey, host_id: str
) -> BorrowToken:
    """The token in ``envelope``, verified: signed by ``server_key``, for this host.

    Raises ``BorrowError`` (``bad_signature``, ``other_server``, ``other_host``).
    """
    token = _signed_token(envelope, topics, server_key)
    if token.server != topics.server:
        raise BorrowError(
            f"The borrow token was issued by the license server {token.server!r}, not "
            f"{topics.server!r}; it cannot be used here.",
            problem="other_server",
        )
    if not secrets.compare_digest(token.host_id, host_id):
        raise BorrowError(
            f"The borrow token was issued to another computer ({token.host!r}); a borrowed "
            "seat runs only on the computer that borrowed it. Borrow a seat on this one.",
            problem="other_host",
        )
    return token


def _signed_token(envelope: str, topics: protocol.Topics, key: Ed25519PublicKey) -> BorrowToken:
    """The token's body, if the server's signature over it holds (whoever it was lent to)."""
    try:
        peeked = json.loads(envelope)
        client = (
            peeked.get("body")
            and msgspec.json.decode(b64url_decode(peeked["body"]), type=BorrowToken).client
        )
        if not isinstance(client, str) or not protocol.CLIENT_ID.fullmatch(client):
            raise ValueError(client)  # noqa: TRY301 - one refusal for every malformed token
        body = open_envelope(envelope.encode(), topics.borrow_token(client), {key_id(key): key})
        return protocol.decode(body, BorrowToken)
    except (EnvelopeError, msgspec.DecodeError, ValueError, KeyError, TypeError, AttributeError):
        raise BorrowError(
            "The borrow token kept in the agent's state file does not carry the license "
            "server's signature (it was edited, or comes from another server); it cannot be "
            "used. Delete it with floatkey-agent return, then borrow again.",
            problem="bad_signature",
        ) from None


def server_key(loaded: LoadedAgentConfig) -> Ed25519PublicKey | None:
    """The server key pinned for the config's server (in the config, or first use)."""
    if loaded.config.server_key:
        return parse_public_key(loaded.config.server_key)
    return KnownServers(loaded.state_path()).key_of(loaded.config.topics.root)


def held_borrow(loaded: LoadedAgentConfig, clock: BorrowClock | None = None) -> HeldBorrow | None:
    """The borrow held for the config's server, verified; ``None`` when none is held.

    One that has ended is forgotten here (``None``). Raises ``BorrowError`` for a token
    this computer may not use (edited, another server's, another computer's).
    """
    topics = loaded.config.topics
    store = BorrowStore(loaded.state_path())
    entry = store.entry(topics.root)
    if entry is None:
        return None
    envelope, local_end = entry
    key = server_key(loaded)
    if key is None:
        raise BorrowError(
            "A borrow token is held but no server key is pinned to verify it; set "
            "server_key in the agent config.",
            problem="bad_signature",
        )
    token = verify_token(envelope, topics, key, host_identity())
    ends_at = min(token.end, local_end)
    now = (clock or BorrowClock(store)).now()
    if now >= ends_at:
        store.forget(topics.root)
        return None
    return HeldBorrow(root=topics.root, token=token, envelope=envelope, ends_at=ends_at)


def _borrow_client_id() -> str:
    raw = f"borrow-{socket.gethostname()}-{secrets.token_hex(4)}"
    return _UNSAFE.sub("_", raw)[:128]


async def _ask(
    loaded: LoadedAgentConfig, client_id: str, body: SeatBorrow | SeatReturn, nonce: str
) -> tuple[BorrowReply, Ed25519PublicKey]:
    """Send ``body`` as ``client_id`` and return the daemon's verified answer.

    Raises ``NoAnswer`` after ``connect_timeout``, ``ConfigError`` when a key to be
    trusted on first use cannot be kept.
    """
    config = loaded.config
    topics = config.topics
    known = KnownServers(loaded.state_path())
    key = server_key(loaded)
    if key is None:
        known.check_writable()
    reply_topic = topics.client(client_id)
    action: Literal["borrow", "return"] = "borrow" if isinstance(body, SeatBorrow) else "return"
    try:
        async with asyncio.timeout(config.connect_timeout):
            async with connect(config.broker, identifier=client_id, base=loaded.base) as client:
                if key is None:
                    key = await _first_use_key(client, topics, known)
                await settled(client.subscribe(reply_topic, qos=1))
                await settled(
                    client.publish(topics.seat(client_id, action), protocol.encode(body), qos=1)
                )
                async for message in client.messages:
                    if message.topic.value != reply_topic or not isinstance(
                        message.payload, bytes | bytearray
                    ):
                        continue
                    with contextlib.suppress(EnvelopeError, msgspec.DecodeError):
                        verified = open_envelope(
                            bytes(message.payload), reply_topic, {key_id(key): key}
                        )
                        reply = _reply_decoder.decode(verified)
                        if reply.nonce == nonce:
                            return reply, key
    except aiomqtt.MqttError as exc:
        raise NoAnswer(
            f"Cannot reach the broker ({config.broker.describe()}): {exc}. Borrowing and "
            "returning need the license server; try again on the network."
        ) from None
    except TimeoutError:
        pass
    raise NoAnswer(
        f"No answer from the license server {config.server!r} within "
        f"{config.connect_timeout:g} s (connect_timeout). Borrowing and returning need the "
        "license server; try again on the network."
    )


async def _first_use_key(
    client: aiomqtt.Client, topics: protocol.Topics, known: KnownServers
) -> Ed25519PublicKey:
    await settled(client.subscribe(topics.identity, qos=1))
    async for message in client.messages:
        if message.topic.value != topics.identity or not isinstance(
            message.payload, bytes | bytearray
        ):
            continue
        with contextlib.suppress(msgspec.DecodeError, ValueError):
            identity = protocol.decode(bytes(message.payload), protocol.Identity)
            key = parse_public_key(identity.public_key)
            with contextlib.suppress(OSError):
                known.pin(topics.root, key)
            return key
    raise TimeoutError


async def borrow_seat(loaded: LoadedAgentConfig, *, days: float, app: str = "") -> HeldBorrow:
    """Borrow a seat for ``days`` and keep its token; return it, verified.

    Raises ``BorrowError`` (the server's refusal, with its reason as ``problem``, or
    ``already_borrowed`` when this computer holds a borrow from the server already),
    ``NoAnswer``, ``ConfigError`` (the state file cannot keep the token).
    """
    topics = loaded.config.topics
    store = BorrowStore(loaded.state_path())
    KnownServers(store.path).check_writable()
    clock = BorrowClock(store)
    held: HeldBorrow | None = None
    with contextlib.suppress(BorrowError):  # an unusable token is replaced
        held = held_borrow(loaded, clock)
    if held is not None:
        raise BorrowError(
            f"This computer already borrows a seat from {topics.server!r} until "
            f"{when(held.ends_at)}. Return it first (floatkey-agent return).",
            problem="already_borrowed",
        )
    seconds = round(days * 86_400)
    if not 1 <= seconds <= protocol.BORROW_MAX_S:
        raise BorrowError(
            "A borrow lasts at least a second and at most 366 days; give --days within that.",
            problem="bad_request",
        )
    client_id = _borrow_client_id()
    nonce = secrets.token_hex(8)
    host_id = host_identity()
    asked_at = clock.now()
    body = SeatBorrow(
        client=client_id,
        nonce=nonce,
        seconds=seconds,
        host_id=host_id,
        app=app,
        user=_user(),
        host=socket.gethostname(),
    )
    reply, key = await _ask(loaded, client_id, body, nonce)
    if isinstance(reply, BorrowDenied):
        raise BorrowError(reply.message, problem=reply.reason)
    if not isinstance(reply, BorrowGranted):
        raise NoAnswer("The license server answered the borrow with something else; try again.")
    token = verify_token(reply.token, topics, key, host_id)
    # Never longer here than it was lent for, whatever this computer's clock says.
    local_end = asked_at + (token.end - token.start)
    try:
        store.keep(topics.root, reply.token, local_end)
    except OSError as exc:
        raise ConfigError(
            f"state_file = '{store.path}': cannot keep the borrow token there "
            f"({exc.strerror or exc}). The seat stays lent until "
            f"{when(token.end)}; ask your administrator to release it "
            f"(floatkeyctl release {client_id})."
        ) from None
    return HeldBorrow(
        root=topics.root, token=token, envelope=reply.token, ends_at=min(token.end, local_end)
    )


async def return_seat(loaded: LoadedAgentConfig) -> str:
    """Give the borrowed seat back; return the sentence saying what happened.

    The token is forgotten once the server has answered (also when it no longer held the
    seat). Raises ``BorrowError`` (``nothing_borrowed``; ``bad_signature`` for a token
    that is not the server's, which is forgotten), ``NoAnswer``.
    """
    topics = loaded.config.topics
    store = BorrowStore(loaded.state_path())
    entry = store.entry(topics.root)
    key = server_key(loaded)
    if entry is None:
        raise BorrowError(
            f"This computer holds no borrowed seat from {topics.server!r}; nothing to return.",
            problem="nothing_borrowed",
        )
    if key is None:
        store.forget(topics.root)
        raise BorrowError(
            "No server key is pinned to check the borrow token; it was deleted.",
            problem="bad_signature",
        )
    try:
        token = _signed_token(entry[0], topics, key)
    except BorrowError:
        store.forget(topics.root)
        raise
    if BorrowClock(store).now() >= min(token.end, entry[1]):
        store.forget(topics.root)
        return f"The borrowed seat ended on {when(token.end)}; it was already back."
    nonce = secrets.token_hex(8)
    reply, _key = await _ask(
        loaded, token.client, SeatReturn(client=token.client, nonce=nonce, lease=token.lease), nonce
    )
    if isinstance(reply, BorrowDenied):
        raise BorrowError(reply.message, problem=reply.reason)
    store.forget(topics.root)
    if isinstance(reply, BorrowReturned):
        return reply.message
    return "The borrowed seat is returned."


def _user() -> str:
    with contextlib.suppress(Exception):
        return getpass.getuser()
    return ""
