"""Wire protocol v1: topics and message bodies (docs/PROTOCOL.md is the reference).

Every body is a JSON object with a ``type`` tag. Untrusted bytes are decoded here, once,
into typed structs (strict: unknown fields and wrong types are refused); the rest of
floatkey works on these types only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import time
from dataclasses import dataclass
from typing import Annotated, Final, Literal, TypeVar

import msgspec

__all__ = [
    "MAX_PAYLOAD",
    "AdminAudit",
    "AdminClients",
    "AdminCommand",
    "AdminRelease",
    "AdminResult",
    "AdminStatus",
    "AdminUnlock",
    "AdminUsage",
    "AuditRow",
    "AuditVerdict",
    "BorrowDenied",
    "BorrowGranted",
    "BorrowReply",
    "BorrowReturned",
    "BorrowStatus",
    "BorrowToken",
    "ClientRow",
    "ClientTopicBody",
    "DaemonToClient",
    "DenialRow",
    "Event",
    "Identity",
    "LicenseInfo",
    "QueueRow",
    "SealedKey",
    "SeatBorrow",
    "SeatBorrowCheck",
    "SeatCancel",
    "SeatDenied",
    "SeatDeniedReason",
    "SeatGranted",
    "SeatIdleWarning",
    "SeatLost",
    "SeatQueued",
    "SeatRelease",
    "SeatRenew",
    "SeatRenewed",
    "SeatRequest",
    "SeatReturn",
    "SeatRevoked",
    "State",
    "StateRequest",
    "StatusReport",
    "Topics",
    "UnlockReport",
    "UsageBucket",
    "UsageReport",
    "UsageSummary",
    "decode",
    "decode_admin_command",
    "decode_client_topic",
    "decode_seat_request",
    "decode_to_client",
    "encode",
    "envelope_digest",
    "now_ms",
]

#: Inbound payloads above this size are dropped before any parsing (default; configurable).
MAX_PAYLOAD: Final = 64 * 1024

# A client id is used inside topics: no MQTT wildcards or separators, bounded length.
CLIENT_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# A broker login, as it appears in seat topics (never a wildcard or a separator).
LOGIN = re.compile(r"[A-Za-z0-9._:@-]{1,128}")
#: The login in the topics of an agent that logs in to the broker without a username.
ANONYMOUS: Final = "anonymous"

# Bounds on what arrives from the network, checked at decode time: nothing unbounded is
# ever logged, stored or sized a buffer from (a pid of 2**64 once stopped the daemon's
# database writes: SQLite integers are 64-bit signed).
Timestamp = Annotated[int, msgspec.Meta(ge=0, le=2**53)]
ClientId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9._:-]{1,128}$")]
RequestId = ClientId
Token = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Label = Annotated[str, msgspec.Meta(max_length=256)]
Pid = Annotated[int, msgspec.Meta(ge=0, le=2**32)]
#: How long ago the agent's application was last active (ms; a year at most).
IdleMs = Annotated[int, msgspec.Meta(ge=0, le=366 * 86_400_000)]

Status = Literal["unlicensed", "licensed", "expired"]
EventName = Literal["license.activated", "license.expired", "license.expiring"]


def envelope_digest(payload: bytes) -> str:
    """What ``AdminResult.refused`` says of a refused envelope."""
    return hashlib.sha256(payload).hexdigest()[:32]


def now_ms() -> int:
    """Unix time in milliseconds, as every body's ``ts``."""
    return time.time_ns() // 1_000_000


class _Body(msgspec.Struct, forbid_unknown_fields=True, tag_field="type", kw_only=True):
    ts: Timestamp = msgspec.field(default_factory=now_ms)


# --- daemon -> all ------------------------------------------------------------------


class Identity(_Body, tag="identity"):
    """Retained, unsigned: the server's public key, for pinning on first use."""

    server: str
    public_key: str
    kid: str


class LicenseInfo(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The active license, as the state publishes it."""

    licensee: str
    organization: str
    seats: int
    features: list[str]
    product_version: int
    serial: str
    issued: str
    expires: str | None


class State(_Body, tag="state"):
    """Retained, signed: the license state. Not republished on seat changes."""

    server: str
    revision: int
    generation: int
    status: Status
    license: LicenseInfo | None


class Event(_Body, tag="event"):
    """Signed: something every agent must react to (or, ``license.expiring``, know).

    ``license.expiring`` changes nothing (same generation and revision as the state): it
    says that the license's last day is ``expires`` (ISO date), ``days_left`` days from
    the server's today (UTC).
    """

    name: EventName
    generation: int
    revision: int
    clients_told: int = 0
    days_left: Annotated[int, msgspec.Meta(ge=0, le=100_000)] | None = None
    expires: Annotated[str, msgspec.Meta(max_length=10)] | None = None


# --- agent -> daemon (unsigned; the broker ACL binds the topic to the client) ---------


class SeatRequest(_Body, tag="seat.request", omit_defaults=True):
    """Ask for a seat.

    Fields at their defaults are left out: a daemon older than ``wait`` and ``idle_ms``
    refuses unknown fields, and an agent that uses neither must still get a seat there.
    """

    client: ClientId
    nonce: Token
    app: Label = ""
    user: Label = ""
    host: Label = ""
    pid: Pid = 0
    #: Wait in the queue when every seat is taken (``seat.queued``), instead of a denial.
    wait: bool = False
    #: Only from agents that report activity: how long ago the application was last
    #: active. Such a seat may be reclaimed when idle (``[seats] idle_timeout``).
    idle_ms: IdleMs | None = None


class SeatRenew(_Body, tag="seat.renew", omit_defaults=True):
    """Extend a lease (or a queue entry's lease) before it expires (defaults left out)."""

    client: ClientId
    lease: Token
    idle_ms: IdleMs | None = None


class SeatCancel(_Body, tag="seat.cancel"):
    """Stop waiting: leave the queue (``lease``: the queue entry's, from ``seat.queued``)."""

    client: ClientId
    lease: Token


class SeatRelease(_Body, tag="seat.release"):
    """Give the seat back. Also the agent's MQTT will, which cannot know the lease."""

    client: ClientId
    lease: Token | None = None


class StateRequest(_Body, tag="state.request", omit_defaults=True):
    """Ask for the daemon's current state, answered on the agent's own topic.

    Sent on the ``request`` seat topic (no broker ACL changes; a daemon older than it
    drops it as ``bad_body`` and nothing else changes) at every (re)connect: the answer
    does not depend on the broker keeping retained messages, which a clustered broker
    may keep per node. ``identity``: send the server's identity first, signed by the key
    it announces (trust on first use without a retained ``identity``).
    """

    client: ClientId
    identity: bool = False


#: The longest borrow any daemon may grant (its ``[borrow] max_borrow_days`` is less).
#: The longest borrow, in days: the daemon's ``max_borrow_days`` and the agent's
#: ``--days`` have the same bound.
BORROW_MAX_DAYS: Final = 366
BORROW_MAX_S: Final = BORROW_MAX_DAYS * 86_400
#: A host identity: the hex of a hash of the machine id (``floatkey.borrow``).
HostId = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{32}$")]


class SeatBorrow(_Body, tag="seat.borrow"):
    """Borrow a seat for ``seconds``, to run offline on this host until it ends.

    ``host_id`` binds the token to this computer (docs/SECURITY.md). The answer is a
    ``borrow.granted`` (with the signed token) or a ``borrow.denied``.
    """

    client: ClientId
    nonce: Token
    seconds: Annotated[int, msgspec.Meta(ge=1, le=BORROW_MAX_S)]
    host_id: HostId
    app: Label = ""
    user: Label = ""
    host: Label = ""


class SeatBorrowCheck(_Body, tag="seat.borrow_check"):
    """Does the daemon still hold this borrowed seat? (on the ``borrow`` topic).

    Sent by an agent running under a borrow token whenever it reaches the broker: an
    administrator may have released the seat meanwhile. Answered ``borrow.status``.
    """

    client: ClientId
    nonce: Token
    lease: Token


class SeatReturn(_Body, tag="seat.return"):
    """Give a borrowed seat back before its end (``lease``: the token's)."""

    client: ClientId
    nonce: Token
    lease: Token


# --- daemon -> one agent (signed) ----------------------------------------------------


class SeatGranted(_Body, tag="seat.granted"):
    """A seat, or an unlicensed session (``licensed`` false, no features)."""

    nonce: str
    lease: str
    generation: int
    licensed: bool
    features: list[str]
    expires_at: int
    renew_after_s: float


SeatDeniedReason = Literal[
    "seats_exhausted",
    "expired",
    "limit_reached",
    "queue_full",
    "queue_timeout",
    "license_changed",
    "already_borrowed",
]


class SeatDenied(_Body, tag="seat.denied"):
    """No seat: ``reason`` is ``seats_exhausted``, ``expired``, ``limit_reached``, ...

    ``already_borrowed``: the client id holds a borrowed seat.

    Only to an agent that asked to wait: ``queue_full``, ``queue_timeout``, and
    ``license_changed`` (the queue was cleared by a new license: ask again).
    """

    nonce: str
    reason: SeatDeniedReason
    message: str
    seats: int
    in_use: int


class SeatQueued(_Body, tag="seat.queued"):
    """Every seat is taken; the request waits at ``position`` (1: next), ``ahead`` before it.

    Sent when queued, when the position changes, and as the answer to a renewal of the
    queue entry's ``lease``. The grant, when it comes, is a ``seat.granted`` for ``nonce``.
    """

    nonce: str
    lease: str
    position: int
    ahead: int
    seats: int
    in_use: int
    expires_at: int
    renew_after_s: float


class SeatIdleWarning(_Body, tag="seat.idle_warning"):
    """The seat has been idle: it is reclaimed at ``reclaim_at`` (Unix ms) unless used."""

    lease: str
    reclaim_at: int
    message: str


class SeatRenewed(_Body, tag="seat.renewed"):
    """The lease now lasts until ``expires_at`` (Unix ms)."""

    lease: str
    expires_at: int


class SeatLost(_Body, tag="seat.lost"):
    """The daemon does not know this lease (expired, or lost): ask again."""

    lease: str
    message: str


class SeatRevoked(_Body, tag="seat.revoked"):
    """An administrator took the seat back: the application must stop."""

    lease: str
    reason: str
    message: str


class BorrowToken(_Body, tag="borrow.token"):
    """A borrowed seat, signed with the server key on ``Topics.borrow_token(client)``.

    Held by the agent (in its state file) and verified at every start against the pinned
    server key; ``host_id`` must be this computer's. ``start`` and ``end`` are Unix ms of
    the daemon's clock; ``lease`` is the secret that returns it early.
    """

    server: str
    client: str
    lease: str
    generation: int
    licensee: str
    organization: str
    features: list[str]
    host: str
    host_id: str
    user: str
    app: str
    start: int
    end: int


class BorrowGranted(_Body, tag="borrow.granted"):
    """A seat is lent until ``end``: ``token`` is the signed :class:`BorrowToken` envelope."""

    nonce: str
    token: Annotated[str, msgspec.Meta(max_length=16_384)]
    end: int


class BorrowDenied(_Body, tag="borrow.denied"):
    """No seat lent: ``reason`` names the limit hit, ``message`` says what to do.

    Reasons: ``borrow_disabled``, ``borrow_too_long``, ``borrow_limit``,
    ``on_site_reserved``, ``already_borrowed``, ``seats_exhausted``, ``limit_reached``,
    ``expired``, ``unlicensed``, ``store_failed``.
    """

    nonce: str
    reason: Annotated[str, msgspec.Meta(max_length=64)]
    message: Annotated[str, msgspec.Meta(max_length=1024)]
    seats: int = 0
    in_use: int = 0
    borrowed: int = 0


class BorrowReturned(_Body, tag="borrow.returned"):
    """The answer to ``seat.return``: ``returned`` false when the daemon held no such seat."""

    nonce: str
    returned: bool
    message: Annotated[str, msgspec.Meta(max_length=1024)]


class BorrowStatus(_Body, tag="borrow.status"):
    """The answer to ``seat.borrow_check``: ``held`` false when the seat is no longer lent."""

    nonce: str
    held: bool
    message: Annotated[str, msgspec.Meta(max_length=1024)] = ""


BorrowReply = BorrowGranted | BorrowDenied | BorrowReturned | BorrowStatus

DaemonToClient = (
    SeatGranted | SeatDenied | SeatRenewed | SeatLost | SeatRevoked | SeatQueued | SeatIdleWarning
)


# --- admin <-> daemon (both signed) --------------------------------------------------


class _AdminBody(_Body, kw_only=True):
    """Every admin command has a bounded ``request_id``, and on the wire a ``ts``.

    ``ts`` defaults to now when a command is made, but a command that arrives without
    one is refused by :func:`decode_admin_command`: a receiver's default would let it be
    replayed after the replay window.
    """

    request_id: RequestId
    #: Who asked, when a tool acts for a person (the console: ``console:alice``); the
    #: audit log records ``{user} via {admin key id}``.
    user: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9._:@-]{0,64}$")] = ""
    #: The sender's MQTT client id: the answer goes to ``admin/reply/{reply_to}/...``,
    #: which the broker ACL lets only that client read. Filled in by the admin session.
    reply_to: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9._:-]{1,128}$")] = ""


class SealedKey(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A product key sealed to the server (``floatkeyd.unlockbox``), base64url fields."""

    epk: Annotated[str, msgspec.Meta(max_length=64)]
    nonce: Annotated[str, msgspec.Meta(max_length=32)]
    box: Annotated[str, msgspec.Meta(max_length=4096)]


class AdminUnlock(_AdminBody, tag="admin.unlock"):
    """Activate a product key: ``sealed_key`` on the wire; ``key`` only before sealing.

    The daemon refuses a command that carries the key in clear (``cleartext_key``).
    """

    name: Label
    organization: Label
    key: Annotated[str, msgspec.Meta(max_length=2048)] = ""
    sealed_key: SealedKey | None = None


class AdminStatus(_AdminBody, tag="admin.status"):
    """Report the license and seat usage."""


class AdminClients(_AdminBody, tag="admin.clients"):
    """List the connected clients."""


class AdminRelease(_AdminBody, tag="admin.release"):
    """Free a client's seat."""

    client: ClientId


class AdminAudit(_AdminBody, tag="admin.audit"):
    """Read the audit log (rows after ``after_seq``, a page at a time), or verify its chain.

    ``newest_first`` pages backwards instead: the rows before ``before_seq`` (0: from the
    newest), newest first, as the console shows them. ``outcome`` keeps one outcome.
    """

    after_seq: Annotated[int, msgspec.Meta(ge=0, le=2**53)] = 0
    before_seq: Annotated[int, msgspec.Meta(ge=0, le=2**53)] = 0
    since: Timestamp = 0
    action: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    outcome: Annotated[str, msgspec.Meta(max_length=32)] | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=500)] = 200
    newest_first: bool = False
    verify: bool = False


class AdminUsage(_AdminBody, tag="admin.usage"):
    """Seat usage over ``[since, until)`` (Unix ms; ``until`` 0: now), per UTC bucket.

    ``group_by`` adds the figures per app, user or host to those of all seats.
    """

    since: Timestamp = 0
    until: Timestamp = 0
    bucket: Literal["hour", "day", "week", "month"] = "day"
    group_by: Literal["none", "app", "user", "host"] = "none"


AdminCommand = AdminUnlock | AdminStatus | AdminClients | AdminRelease | AdminAudit | AdminUsage


class UnlockReport(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """What an unlock did."""

    changed: bool
    license: LicenseInfo
    generation: int
    clients_told: int


class StatusReport(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The server's state for ``floatkeyctl status``."""

    server: str
    status: Status
    license: LicenseInfo | None
    generation: int
    revision: int
    seats_in_use: int
    unlicensed_sessions: int
    awaiting_release: int
    fingerprint: str
    broker: str
    #: Inbound messages dropped since start, by reason (bad signature, oversized, ...).
    dropped: dict[str, int] = msgspec.field(default_factory=dict)
    #: asyncio tasks in the daemon (flat under load; a leak shows here).
    tasks: int = 0
    #: Admin keys the daemon trusts now (after a SIGHUP reload, say).
    admin_keys: int = 0
    #: The X25519 key product keys are sealed to for an unlock (``x25519:...``).
    unlock_key: str = ""
    #: The product's features, id → display name, from the catalogue (may be empty).
    feature_names: dict[str, str] = msgspec.field(default_factory=dict)
    #: Days from the server's today (UTC) to the license's last day (0: it is the last
    #: day); ``None`` unless licensed with an expiry.
    days_left: int | None = None
    #: Whether ``days_left`` is within the largest of ``[license] warn_days``: the
    #: daemon has warned of the expiry (``license.expiring``).
    expiring: bool = False


class ClientRow(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One connected client for ``floatkeyctl clients``."""

    client: str
    #: The broker login it asked under (vouched for by the broker's ACL).
    login: str = ""
    app: str
    user: str
    host: str
    pid: int
    licensed: bool
    generation: int
    since: int
    expires_at: int
    revoked: bool
    #: A borrowed seat: ``expires_at`` is the borrow's end (floatkey-agent borrow).
    borrowed: bool = False


class QueueRow(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One client waiting for a seat, for ``floatkeyctl clients`` (``position`` 1: next)."""

    position: int
    client: str
    login: str
    app: str
    user: str
    host: str
    pid: int
    since: int


class DenialRow(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A recent seat denial, for ``floatkeyctl clients``."""

    at: int
    client: str
    login: str
    app: str
    user: str
    host: str
    reason: str


class AuditRow(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One audit log row; ``detail`` is its JSON text as stored."""

    seq: int
    ts: int
    actor: str
    action: str
    outcome: str
    reason: str
    detail: str


class AuditVerdict(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """What a walk of the audit chain found (``admin.audit`` with ``verify``)."""

    intact: bool
    rows: int
    message: str
    bad_seq: int | None = None


class UsageBucket(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One bucket's seat usage: of all seats (``group`` null), or of one app, user or host.

    docs/USAGE.md says what each figure means.
    """

    start: int
    group: str | None = None
    peak: int
    peak_at: int
    average: float
    #: Distinct users who held a seat; null where only hourly aggregates are kept.
    users: int | None
    grants: int
    denials: dict[str, int]
    #: Denials outstanding at once, at most; seats held plus those, at most.
    outstanding_peak: int
    demand_peak: int
    #: All seats only: the license's seats when the peak was reached and at the bucket's
    #: end, the time all were in use, and how many times use rose to the limit.
    peak_seats: int = 0
    seats: int = 0
    at_limit_ms: int = 0
    limit_hits: int = 0
    #: Waits in the seat queue that ended in the bucket, their total and the longest (ms).
    waits: int = 0
    queued_ms: int = 0
    queued_longest_ms: int = 0


class UsageSummary(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The whole period: the peak, the limit, and the seats that would have served all."""

    peak: int
    peak_at: int
    #: The license's seats when the peak was reached, and at the end of the period.
    peak_seats: int
    seats: int
    limit_hits: int
    at_limit_ms: int
    grants: int
    denials: dict[str, int]
    #: The most seats held plus denials outstanding at any one moment.
    would_serve: int
    users: int | None
    #: Waits in the seat queue that ended in the period, their total and the longest (ms).
    waits: int = 0
    queued_ms: int = 0
    queued_longest_ms: int = 0


class UsageReport(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The answer to ``admin.usage``: the period measured, its buckets, the summary."""

    since: int
    until: int
    bucket: str
    group_by: str
    buckets: list[UsageBucket]
    summary: UsageSummary
    #: Groups left out to keep the answer to one message (the least used).
    groups_omitted: int = 0


class AdminResult(_Body, tag="admin.result"):
    """The answer to an admin command; ``reason`` and ``message`` when refused."""

    request_id: str
    ok: bool
    reason: str = ""
    message: str = ""
    unlock: UnlockReport | None = None
    status: StatusReport | None = None
    clients: list[ClientRow] | None = None
    #: With ``clients``: the latest seat denials, newest last.
    denials: list[DenialRow] | None = None
    #: With ``clients``: the clients waiting for a seat, first in line first.
    queue: list[QueueRow] | None = None
    #: With ``admin.audit``: a page of rows, oldest first; or the verdict of a walk.
    audit: list[AuditRow] | None = None
    verdict: AuditVerdict | None = None
    #: With ``admin.usage``.
    usage: UsageReport | None = None
    #: With ``not_authorized``: the first 32 hex digits of the SHA-256 of the refused
    #: envelope, so a sender can tell a refusal of its own command from one provoked by
    #: someone who copied its request id into a command of their own.
    refused: str = ""


_encoder = msgspec.json.Encoder()
_decoders: dict[object, msgspec.json.Decoder[object]] = {}


def encode(body: msgspec.Struct) -> bytes:
    """Serialise a body to JSON bytes."""
    return _encoder.encode(body)


T = TypeVar("T")


def decode(data: bytes, kind: type[T]) -> T:
    """Decode ``data`` as ``kind`` (a body type or union); raise ``msgspec.ValidationError``.

    ``msgspec.DecodeError`` (its parent) covers malformed JSON too.
    """
    decoder = _decoders.get(kind)
    if decoder is None:
        decoder = _decoders[kind] = msgspec.json.Decoder(kind)
    return _guarded(decoder, data)  # type: ignore[return-value]


def _guarded(decoder: msgspec.json.Decoder[T], data: bytes) -> T:
    # msgspec lets invalid UTF-8 inside a string escape as UnicodeDecodeError.
    try:
        return decoder.decode(data)
    except UnicodeDecodeError as exc:
        raise msgspec.DecodeError(f"invalid UTF-8: {exc.reason}") from None


_admin_decoder: msgspec.json.Decoder[AdminCommand] = msgspec.json.Decoder(AdminCommand)
_to_client_decoder: msgspec.json.Decoder[DaemonToClient] = msgspec.json.Decoder(DaemonToClient)


class _Stamp(msgspec.Struct):
    ts: Timestamp


_stamp_decoder = msgspec.json.Decoder(_Stamp)


def decode_admin_command(data: bytes) -> AdminCommand:
    """Decode an admin command body (``ts`` required); raise ``msgspec.DecodeError``."""
    _guarded(_stamp_decoder, data)
    return _guarded(_admin_decoder, data)


def decode_to_client(data: bytes) -> DaemonToClient:
    """Decode a body the daemon sent to one agent; raise ``msgspec.DecodeError``."""
    return _guarded(_to_client_decoder, data)


#: What the daemon sends on an agent's own topic: seat replies, and the answer to a
#: ``state.request`` (the state; the identity is read before any key is trusted).
ClientTopicBody = DaemonToClient | State
_client_topic_decoder: msgspec.json.Decoder[ClientTopicBody] = msgspec.json.Decoder(ClientTopicBody)


_seat_request_decoder: msgspec.json.Decoder[SeatRequest | StateRequest] = msgspec.json.Decoder(
    SeatRequest | StateRequest
)


def decode_seat_request(data: bytes) -> SeatRequest | StateRequest:
    """Decode a body from a ``request`` seat topic; raise ``msgspec.DecodeError``."""
    return _guarded(_seat_request_decoder, data)


def decode_client_topic(data: bytes) -> ClientTopicBody:
    """Decode a body from an agent's own topic (a seat reply or the state); ``DecodeError``."""
    return _guarded(_client_topic_decoder, data)


@dataclass(frozen=True, slots=True)
class Topics:
    """The topics of one license server: everything under ``{prefix}/{server}``."""

    prefix: str
    server: str
    #: The broker login seat messages are sent under (the agent's ``[broker] username``).
    login: str = ANONYMOUS

    @property
    def root(self) -> str:
        """``{prefix}/{server}``."""
        return f"{self.prefix}/{self.server}"

    @property
    def identity(self) -> str:
        """Retained server public key."""
        return f"{self.root}/identity"

    @property
    def state(self) -> str:
        """Retained signed license state."""
        return f"{self.root}/state"

    @property
    def events(self) -> str:
        """Signed broadcast events."""
        return f"{self.root}/events"

    @property
    def admin_request(self) -> str:
        """Admin commands."""
        return f"{self.root}/admin/request"

    def admin_reply(self, reply_to: str, request_id: str) -> str:
        """The daemon's answer to one admin command, for the client ``reply_to`` only."""
        return f"{self.root}/admin/reply/{reply_to}/{request_id}"

    def seat(
        self,
        client_id: str,
        action: Literal["request", "renew", "release", "cancel", "borrow", "return"],
    ) -> str:
        """An agent's seat topic: ``seats/{login}/{client_id}/{action}``.

        The broker login is in the topic so that the broker's ACL can vouch for it
        (``pattern write floatkey/+/seats/%u/%c/request``): the daemon can then cap seats
        per login, and a leaked password is one machine's seats, not the site's.
        """
        return f"{self.root}/seats/{self.login}/{client_id}/{action}"

    def for_login(self, login: str) -> Topics:
        """The same server's topics, for a client logged in to the broker as ``login``."""
        return dataclasses.replace(self, login=login)

    @property
    def seats_wildcard(self) -> str:
        """What the daemon subscribes to for every agent's seat messages."""
        return f"{self.root}/seats/+/+/+"

    def client(self, client_id: str) -> str:
        """The daemon's messages to one agent."""
        return f"{self.root}/clients/{client_id}"

    def borrow_token(self, client_id: str) -> str:
        """The topic a borrow token is signed for (never published: kept by the agent)."""
        return f"{self.root}/borrows/{client_id}"

    def parse_seat(self, topic: str) -> tuple[str, str, str] | None:
        """``(login, client_id, action)`` for a seat topic of this server, else ``None``."""
        parts = topic.split("/")
        root = self.root.split("/")
        if len(parts) != len(root) + 4 or parts[: len(root)] != root or parts[len(root)] != "seats":
            return None
        login, client_id, action = parts[-3:]
        if (
            not LOGIN.fullmatch(login)
            or not CLIENT_ID.fullmatch(client_id)
            or action not in {"request", "renew", "release", "cancel", "borrow", "return"}
        ):
            return None
        return login, client_id, action
