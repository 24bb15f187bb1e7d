"""Borrowed seats on the client: ask, keep, verify, return.

``floatkey-agent borrow --days N`` asks the license server to lend a seat; the answer is
a **borrow token** (``borrow.token``, signed with the server key on a topic of its own)
that this module keeps in the agent's state file, beside the pinned server keys::

    {"servers": {...}, "latest_seen_ms": 1795000000000,
     "borrows": {"floatkey/srv1": {"token": "<envelope>", "client": "borrow-lap-1a2b",
                                   "local_end_ms": 1795259200000}},
     "borrow_pending": {"floatkey/srv1": {"client": "borrow-lap-1a2b", "nonce": "..."}}}

``borrow_pending`` is written before a borrow is asked for: a retry after a lost answer
asks again as the same client with the same nonce, and the daemon sends the same seat's
token again instead of lending a second seat.

While it is held, :class:`floatkey.Agent` runs the application without the server
(:func:`held_borrow` verifies it at every start), one application at a time
(:class:`BorrowLock`). Tamper resistance:

- the token is verified against the pinned server key (before anything in it is read):
  an edited end, feature or host breaks the signature;
- it names the host it was lent to (:func:`floatkey.hostid.host_identity`, a hash of the
  machine id): copied to another computer it is refused;
- the clock: the latest time seen is kept in the state file. A clock found more than
  :data:`CLOCK_TOLERANCE_MS` behind it was set back: the token is not used offline
  (the agent asks the server instead). While it runs, time never goes backwards
  (:class:`BorrowClock`). ``local_end_ms`` (this computer's clock at the grant plus the
  borrow's length) keeps a clock that was behind the server's from lengthening it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import getpass
import hashlib
import os
import secrets
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import aiomqtt
import msgspec

from floatkey import protocol
from floatkey.broker import connect, settled
from floatkey.envelope import EnvelopeError, open_envelope
from floatkey.errors import BorrowError, ConfigError, NoAnswer
from floatkey.hostid import HostIdentity, default_client_id, host_identity, identify_host
from floatkey.pinning import KnownServers, signed_identity
from floatkey.protocol import (
    BorrowDenied,
    BorrowGranted,
    BorrowReply,
    BorrowReturned,
    BorrowToken,
    SeatBorrow,
    SeatReturn,
    StateRequest,
)
from floatkey.signing import key_id, parse_public_key

if TYPE_CHECKING:
    from pathlib import Path

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from floatkey.config import LoadedAgentConfig

__all__ = [
    "CLOCK_TOLERANCE_MS",
    "BorrowClock",
    "BorrowLock",
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

#: How far behind the latest time seen the clock may be before it counts as set back
#: (a clock corrected by NTP moves by seconds, rarely minutes).
CLOCK_TOLERANCE_MS = 5 * 60 * 1000
_reply_decoder: msgspec.json.Decoder[BorrowReply] = msgspec.json.Decoder(BorrowReply)


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


@dataclass(frozen=True, slots=True)
class _Entry:
    envelope: str
    client: str
    local_end: int


class BorrowStore:
    """The borrow tokens and the latest time seen, in the agent's state file (0600).

    Every change is a read-modify-write under the file's lock (:meth:`KnownServers.update`),
    keeping whatever else the file holds.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = KnownServers(path)

    @staticmethod
    def _section(data: dict[str, object], name: str) -> dict[str, dict[str, object]]:
        section = data.get(name)
        if not isinstance(section, dict):
            return {}
        return {k: v for k, v in section.items() if isinstance(v, dict)}

    def latest_seen(self) -> int:
        """The latest time (Unix ms) any floatkey-agent on this account has seen."""
        value = self._file.read().get("latest_seen_ms")
        return value if isinstance(value, int) else 0

    def saw(self, now_ms: int) -> None:
        """Remember ``now_ms`` as the latest time seen, if it is later (best effort)."""

        def later(data: dict[str, object]) -> bool:
            seen = data.get("latest_seen_ms")
            if isinstance(seen, int) and seen >= now_ms:
                return False
            data["latest_seen_ms"] = now_ms
            return True

        with contextlib.suppress(OSError):
            self._file.update(later)

    def entry(self, root: str) -> _Entry | None:
        """The token envelope held for ``root``, its client id and local end, unverified."""
        entry = self._section(self._file.read(), "borrows").get(root)
        if entry is None:
            return None
        envelope, client = entry.get("token"), entry.get("client")
        local_end = entry.get("local_end_ms")
        if not (
            isinstance(envelope, str) and isinstance(client, str) and isinstance(local_end, int)
        ):
            return None
        return _Entry(envelope, client, local_end)

    def keep(self, root: str, envelope: str, client: str, local_end_ms: int, seen: int) -> None:
        """Hold ``envelope`` for ``root``; the latest time seen becomes ``seen``.

        The pending request is done with. Raises ``OSError``.
        """

        def hold(data: dict[str, object]) -> bool:
            borrows = self._section(data, "borrows")
            borrows[root] = {"token": envelope, "client": client, "local_end_ms": local_end_ms}
            data["borrows"] = borrows
            pending = self._section(data, "borrow_pending")
            pending.pop(root, None)
            data["borrow_pending"] = pending
            # Lowered too: a clock once ahead must not make a fresh borrow look ended.
            data["latest_seen_ms"] = seen
            return True

        self._file.update(hold)

    def forget(self, root: str) -> None:
        """Drop the token held for ``root`` (best effort)."""
        self._drop("borrows", root)

    def pending(self, root: str) -> tuple[str, str] | None:
        """``(client_id, nonce)`` of a borrow asked for ``root`` and not answered."""
        entry = self._section(self._file.read(), "borrow_pending").get(root)
        if entry is None:
            return None
        client, nonce = entry.get("client"), entry.get("nonce")
        if not isinstance(client, str) or not isinstance(nonce, str):
            return None
        return client, nonce

    def hold_pending(self, root: str, client: str, nonce: str) -> None:
        """Remember the borrow about to be asked for. Raises ``OSError``."""

        def hold(data: dict[str, object]) -> bool:
            pending = self._section(data, "borrow_pending")
            pending[root] = {"client": client, "nonce": nonce}
            data["borrow_pending"] = pending
            return True

        self._file.update(hold)

    def drop_pending(self, root: str) -> None:
        """The borrow asked for was answered without a seat (best effort)."""
        self._drop("borrow_pending", root)

    def _drop(self, name: str, root: str) -> None:
        def drop(data: dict[str, object]) -> bool:
            section = self._section(data, name)
            if section.pop(root, None) is None:
                return False
            data[name] = section
            return True

        with contextlib.suppress(OSError):
            self._file.update(drop)


class BorrowLock:
    """Held for the whole of a borrowed run: one borrowed seat runs one application.

    An exclusive ``flock`` on a file beside the state file, one per server; the kernel
    drops it when the process ends, however it ends.
    """

    def __init__(self, state_path: Path, root: str) -> None:
        digest = hashlib.sha256(root.encode()).hexdigest()[:16]
        self.path = state_path.with_name(f"{state_path.name}.{digest}.borrow.lock")
        self._fd: int | None = None

    def acquire(self) -> bool:
        """Take the lock; ``False`` when another run holds it. Raises ``OSError``."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        """Let the lock go (idempotent)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def _clock_set_back(latest: int) -> BorrowError:
    return BorrowError(
        f"This computer's clock is behind the latest time floatkey saw on it "
        f"({when(latest)}): it was set back. A borrowed seat does not run without the "
        "license server while the clock is behind; set the clock right, or connect to the "
        "network so that the license server can give this application a seat.",
        problem="clock_set_back",
    )


class BorrowClock:
    """Time that a clock set back cannot turn back (Unix ms).

    Never behind the latest time seen (kept in the state file), nor, while it runs,
    behind the time it started plus the monotonic time since. ``strict`` (a borrowed
    run starting): a clock more than :data:`CLOCK_TOLERANCE_MS` behind the latest time
    seen raises ``BorrowError`` (``clock_set_back``) instead: taking the latest time
    seen as now would let no time pass while the application was closed.
    """

    def __init__(self, store: BorrowStore, *, strict: bool = False) -> None:
        self._store = store
        wall, latest = _wall_ms(), store.latest_seen()
        if strict and wall < latest - CLOCK_TOLERANCE_MS:
            raise _clock_set_back(latest)
        self._base = max(wall, latest)
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
    envelope: str,
    topics: protocol.Topics,
    server_key: Ed25519PublicKey,
    host_id: str,
    client: str,
) -> BorrowToken:
    """The token in ``envelope`` lent to ``client``, verified: signed, for this host.

    Raises ``BorrowError`` (``bad_signature``, ``other_server``, ``other_host``).
    """
    token = _signed_token(envelope, topics, server_key, client)
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


def _signed_token(
    envelope: str, topics: protocol.Topics, key: Ed25519PublicKey, client: str
) -> BorrowToken:
    """The token's body, if the server's signature for ``client``'s token topic holds.

    Verified before anything in it is read (the client id comes from the state file).
    """
    try:
        if not protocol.CLIENT_ID.fullmatch(client):
            raise ValueError(client)  # noqa: TRY301 - one refusal for every malformed token
        body = open_envelope(envelope.encode(), topics.borrow_token(client), {key_id(key): key})
        token = protocol.decode(body, BorrowToken)
        if token.client != client:
            raise ValueError(token.client)  # noqa: TRY301
    except (EnvelopeError, msgspec.DecodeError, ValueError):
        raise BorrowError(
            "The borrow token kept in the agent's state file does not carry the license "
            "server's signature (it was edited, or comes from another server); it cannot be "
            "used. Delete it with floatkey-agent return, then borrow again.",
            problem="bad_signature",
        ) from None
    return token


def server_key(loaded: LoadedAgentConfig) -> Ed25519PublicKey | None:
    """The server key pinned for the config's server (in the config, or first use)."""
    if loaded.config.server_key:
        return parse_public_key(loaded.config.server_key)
    return KnownServers(loaded.state_path()).key_of(loaded.config.topics.root)


def held_borrow(loaded: LoadedAgentConfig, clock: BorrowClock | None = None) -> HeldBorrow | None:
    """The borrow held for the config's server, verified; ``None`` when none is held.

    One that has ended is forgotten here (``None``). Raises ``BorrowError`` for a token
    this computer may not use (edited, another server's, another computer's) or may not
    use now (``clock_set_back``: without ``clock``, the clock is checked strictly).
    """
    topics = loaded.config.topics
    store = BorrowStore(loaded.state_path())
    entry = store.entry(topics.root)
    if entry is None:
        return None
    key = server_key(loaded)
    if key is None:
        raise BorrowError(
            "A borrow token is held but no server key is pinned to verify it; set "
            "server_key in the agent config.",
            problem="bad_signature",
        )
    token = verify_token(entry.envelope, topics, key, host_identity(), entry.client)
    ends_at = min(token.end, entry.local_end)
    now = (clock or BorrowClock(store, strict=True)).now()
    if now >= ends_at:
        store.forget(topics.root)
        return None
    return HeldBorrow(root=topics.root, token=token, envelope=entry.envelope, ends_at=ends_at)


def _borrow_client_id(loaded: LoadedAgentConfig) -> str:
    return loaded.config.own_client_id(default_client_id("borrow"))


async def _ask(
    loaded: LoadedAgentConfig, body: SeatBorrow | SeatReturn
) -> tuple[BorrowReply, Ed25519PublicKey]:
    """Send ``body`` as its client and return the daemon's verified answer.

    Tries each broker address in turn (``[broker] hosts``, from the one the agent would
    start at). Raises ``NoAnswer`` after ``connect_timeout``, ``ConfigError`` when a key
    to be trusted on first use cannot be kept.
    """
    config = loaded.config
    known = KnownServers(loaded.state_path())
    key = server_key(loaded)
    if key is None:
        known.check_writable()
    addresses = config.broker.addresses(body.client)
    failures: list[str] = []
    try:
        async with asyncio.timeout(config.connect_timeout):
            for host, port in addresses:
                options = config.broker.at(host, port)
                try:
                    async with connect(options, identifier=body.client, base=loaded.base) as client:
                        return await _converse(loaded, client, body, key)
                except aiomqtt.MqttError as exc:
                    failures.append(f"{options.describe()}: {exc}")
    except TimeoutError:
        pass
    if len(failures) >= len(addresses):
        raise NoAnswer(
            f"Cannot reach the broker ({'; '.join(failures)}). Borrowing and returning need "
            "the license server; try again on the network."
        )
    raise NoAnswer(
        f"No answer from the license server {config.server!r} within "
        f"{config.connect_timeout:g} s (connect_timeout). Borrowing and returning need the "
        "license server; try again on the network."
    )


async def _converse(
    loaded: LoadedAgentConfig,
    client: aiomqtt.Client,
    body: SeatBorrow | SeatReturn,
    key: Ed25519PublicKey | None,
) -> tuple[BorrowReply, Ed25519PublicKey]:
    """One broker connection's exchange; without ``key``, the server's is trusted first.

    The key to trust on first use comes as the agent's does: the daemon's answer to a
    ``state.request`` asking for its identity, on this client's own topic, signed by the
    key it announces (``floatkey.pinning.signed_identity``); no retained message needed.
    """
    config = loaded.config
    topics = config.topics
    client_id, nonce = body.client, body.nonce
    reply_topic = topics.client(client_id)
    action: Literal["borrow", "return"] = "borrow" if isinstance(body, SeatBorrow) else "return"
    await settled(client.subscribe(reply_topic, qos=1))
    if key is None:
        ask = StateRequest(client=client_id, identity=True)
        await settled(
            client.publish(topics.seat(client_id, "request"), protocol.encode(ask), qos=1)
        )
    await settled(client.publish(topics.seat(client_id, action), protocol.encode(body), qos=1))
    waiting: list[bytes] = []  # replies that came before the key to check them
    async for message in client.messages:
        if message.topic.value != reply_topic or not isinstance(message.payload, bytes | bytearray):
            continue
        waiting.append(bytes(message.payload))
        if key is None:
            with contextlib.suppress(EnvelopeError):
                key = signed_identity(waiting[-1], reply_topic, config.server)
            if key is None:
                continue
            with contextlib.suppress(OSError):
                KnownServers(loaded.state_path()).pin(topics.root, key)
        for payload in waiting:
            with contextlib.suppress(EnvelopeError, msgspec.DecodeError):
                verified = open_envelope(payload, reply_topic, {key_id(key): key})
                reply = _reply_decoder.decode(verified)
                if reply.nonce == nonce:
                    return reply, key
        waiting.clear()
    raise aiomqtt.MqttError("the broker closed the connection")


def _may_borrow(loaded: LoadedAgentConfig) -> HostIdentity:
    """This computer's identity, if it may borrow from the config's server now."""
    host = identify_host()
    if host.kind != "machine-id":
        raise BorrowError(
            "This computer has no machine id (/etc/machine-id), to which a borrowed seat is "
            "bound; its host name alone is too easily copied. Ask your administrator to "
            "create one (systemd-machine-id-setup), then borrow again.",
            problem="no_machine_id",
        )
    held: HeldBorrow | None = None
    try:
        held = held_borrow(loaded)
    except BorrowError as exc:
        if exc.problem == "clock_set_back":
            raise  # the seat may still be lent: it is to be returned, not replaced
        # Any other unusable token is replaced.
    if held is not None:
        raise BorrowError(
            f"This computer already borrows a seat from {loaded.config.server!r} until "
            f"{when(held.ends_at)}. Return it first (floatkey-agent return).",
            problem="already_borrowed",
        )
    return host


async def borrow_seat(loaded: LoadedAgentConfig, *, days: float, app: str = "") -> HeldBorrow:
    """Borrow a seat for ``days`` and keep its token; return it, verified.

    Raises ``BorrowError`` (the server's refusal, with its reason as ``problem``;
    ``already_borrowed`` when this computer holds a borrow from the server already;
    ``clock_set_back``; ``no_machine_id``; ``ended`` for a token this computer's clock
    already sees ended, which is given back), ``NoAnswer``, ``ConfigError`` (the state
    file cannot keep the token).
    """
    topics = loaded.config.topics
    store = BorrowStore(loaded.state_path())
    KnownServers(store.path).check_writable()
    seconds = round(days * 86_400)
    if not 1 <= seconds <= protocol.BORROW_MAX_S:
        raise BorrowError(
            f"A borrow lasts at least a second and at most {protocol.BORROW_MAX_DAYS} days; "
            "give --days within that.",
            problem="bad_request",
        )
    host = _may_borrow(loaded)
    # A borrow asked for before and never answered is asked for again, as the same
    # client with the same nonce: the daemon then sends the seat it lent then, if any.
    client_id, nonce = store.pending(topics.root) or (
        _borrow_client_id(loaded),
        secrets.token_hex(8),
    )
    try:
        store.hold_pending(topics.root, client_id, nonce)
    except OSError as exc:
        raise ConfigError(
            f"state_file = '{store.path}': cannot keep the borrow request there "
            f"({exc.strerror or exc})."
        ) from None
    asked_at = _wall_ms()
    body = SeatBorrow(
        client=client_id,
        nonce=nonce,
        seconds=seconds,
        host_id=host.id,
        app=app,
        user=_user(),
        host=socket.gethostname(),
    )
    reply, key = await _ask(loaded, body)
    if isinstance(reply, BorrowDenied):
        store.drop_pending(topics.root)
        raise BorrowError(reply.message, problem=reply.reason)
    if not isinstance(reply, BorrowGranted):
        raise NoAnswer("The license server answered the borrow with something else; try again.")
    token = verify_token(reply.token, topics, key, host.id, client_id)
    # Never longer here than it was lent for, whatever this computer's clock says.
    local_end = asked_at + (token.end - token.start)
    ends_at = min(token.end, local_end)
    now = _wall_ms()
    if now >= ends_at:
        # This computer's clock is past the borrow's end already: a seat it cannot use.
        with contextlib.suppress(NoAnswer, BorrowError):
            await _give_back(loaded, token)
        store.drop_pending(topics.root)
        raise BorrowError(
            f"The license server lent the seat until {when(token.end)}, a time this "
            f"computer's clock ({when(now)}) has passed already; the seat was given back. "
            "Set the clock right, then borrow again.",
            problem="ended",
        )
    try:
        # The latest time seen becomes the server's (or this clock's, if behind it).
        store.keep(topics.root, reply.token, client_id, local_end, min(now, token.start))
    except OSError as exc:
        raise ConfigError(
            f"state_file = '{store.path}': cannot keep the borrow token there "
            f"({exc.strerror or exc}). The seat stays lent until "
            f"{when(token.end)}; ask your administrator to release it "
            f"(floatkeyctl release {client_id})."
        ) from None
    return HeldBorrow(root=topics.root, token=token, envelope=reply.token, ends_at=ends_at)


async def _give_back(loaded: LoadedAgentConfig, token: BorrowToken) -> BorrowReply:
    nonce = secrets.token_hex(8)
    body = SeatReturn(client=token.client, nonce=nonce, lease=token.lease)
    reply, _key = await _ask(loaded, body)
    return reply


async def return_seat(loaded: LoadedAgentConfig) -> str:
    """Give the borrowed seat back; return the sentence saying what happened.

    The token is forgotten once the server has answered (also when it no longer held the
    seat). Raises ``BorrowError`` (``nothing_borrowed``; ``in_use`` while an application
    runs on the seat; ``bad_signature`` for a token that is not the server's, which is
    forgotten), ``NoAnswer``.
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
        token = _signed_token(entry.envelope, topics, key, entry.client)
    except BorrowError:
        store.forget(topics.root)
        raise
    lock = BorrowLock(store.path, topics.root)
    if not lock.acquire():
        raise BorrowError(
            f"The seat borrowed from {topics.server!r} is in use by an application running "
            "on it (floatkey-agent run); stop the application first, then return the seat.",
            problem="in_use",
        )
    try:
        if BorrowClock(store).now() >= min(token.end, entry.local_end):
            store.forget(topics.root)
            return f"The borrowed seat ended on {when(token.end)}; it was already back."
        reply = await _give_back(loaded, token)
        if isinstance(reply, BorrowDenied):
            raise BorrowError(reply.message, problem=reply.reason)
        store.forget(topics.root)
    finally:
        lock.release()
    if isinstance(reply, BorrowReturned):
        return reply.message
    return "The borrowed seat is returned."


def _user() -> str:
    with contextlib.suppress(Exception):
        return getpass.getuser()
    return ""
