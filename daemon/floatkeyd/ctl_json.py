"""``floatkeyctl --json``: the shapes scripts read, one typed struct each.

docs/SCRIPTING.md documents every shape with an example. They are a contract, kept
apart from the wire protocol on purpose: the protocol's messages carry what the daemon
and floatkeyctl need (request ids, epoch milliseconds, internal counters); these carry
what a script needs, and change only by adding fields.

* Every output is one JSON object with ``ok``. A refusal or an error is
  ``{"ok": false, "error": {"reason": ..., "message": ...}}``: ``reason`` is a stable
  code, ``message`` the sentence floatkeyctl prints for people.
* Times are ISO 8601 in UTC (``2026-11-18T11:06:40.123000Z``); days are ``YYYY-MM-DD``.
* Features are ``{"id": "dataflow", "name": "Dataflow"}`` (the name from the product
  catalogue; the id where there is none).
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any, Literal

import msgspec

if TYPE_CHECKING:
    from collections.abc import Mapping

    from floatkey import protocol
    from floatkeyd.licensechange import LicenseChange

__all__ = [
    "AdminKeyCreated",
    "AuditEntry",
    "AuditLog",
    "AuditVerified",
    "Change",
    "Client",
    "Clients",
    "Denial",
    "Error",
    "Failure",
    "Feature",
    "License",
    "NotConfirmed",
    "Output",
    "Released",
    "ServerKey",
    "Status",
    "Unlocked",
    "Usage",
    "UsageBucket",
    "UsageSummary",
    "Waiting",
    "audit_of",
    "change_of",
    "clients_of",
    "dump",
    "failure",
    "features",
    "from_ms",
    "license_of",
    "seat_of",
    "status_of",
    "usage_of",
    "verdict_of",
]


class Output(msgspec.Struct, kw_only=True):
    """What every output has first: ``ok``."""

    ok: bool = True


class Error(msgspec.Struct, kw_only=True):
    """Why a command was refused or failed."""

    reason: str
    message: str


class Failure(Output, kw_only=True):
    """A refusal (by the daemon) or an error (configuration, broker, ...)."""

    ok: bool = False
    error: Error


class Feature(msgspec.Struct, kw_only=True):
    """A feature's id (what keys and agents use) and its display name."""

    id: str
    name: str


class License(msgspec.Struct, kw_only=True):
    """A license: the active one, or the one an unlock activated."""

    licensee: str
    organization: str
    seats: int
    features: list[Feature]
    product_version: int
    serial: str
    issued: dt.date
    expires: dt.date | None


class Status(Output, kw_only=True):
    """``floatkeyctl status``."""

    server: str
    status: Literal["unlicensed", "licensed", "expired"]
    license: License | None
    seats_in_use: int
    unlicensed_sessions: int
    #: Clients told to shut down by the latest change that still hold their seat.
    awaiting_shutdown: int
    #: Grows by one with every activation and expiry.
    generation: int
    #: Grows with every publication of the license state.
    revision: int
    fingerprint: str
    broker: str
    admin_keys: int
    #: Messages the daemon dropped since it started, by reason.
    dropped: dict[str, int]
    #: Days from the server's today (UTC) to the license's last day (0 on the last
    #: day); null unless licensed with an expiry.
    days_left: int | None = None
    #: Whether the daemon is warning of the expiry (days_left within [license] warn_days).
    expiring: bool = False


class Client(msgspec.Struct, kw_only=True):
    """A connected client (``floatkeyctl clients``)."""

    client: str
    login: str
    app: str
    user: str
    host: str
    pid: int
    seat: Literal["licensed", "unlicensed", "revoked"]
    since: dt.datetime
    lease_expires: dt.datetime
    #: A borrowed seat (``floatkey-agent borrow``): when the borrow ends; else null.
    borrowed_until: dt.datetime | None = None


class Denial(msgspec.Struct, kw_only=True):
    """A recent seat denial."""

    at: dt.datetime
    client: str
    login: str
    app: str
    user: str
    host: str
    reason: str


class Waiting(msgspec.Struct, kw_only=True):
    """A client waiting for a seat (``position`` 1: the next to be granted)."""

    position: int
    client: str
    login: str
    app: str
    user: str
    host: str
    pid: int
    since: dt.datetime


class Clients(Output, kw_only=True):
    """``floatkeyctl clients``."""

    clients: list[Client]
    denials: list[Denial]
    #: The clients waiting for a seat, first in line first.
    queue: list[Waiting]


class Released(Output, kw_only=True):
    """``floatkeyctl release``."""

    client: str
    message: str


class Change(msgspec.Struct, kw_only=True):
    """What an unlock changes: seats, features (ids), expires or issued (days)."""

    what: Literal["seats", "features", "expires", "issued"]
    before: int | str | list[str] | None
    after: int | str | list[str] | None
    reduces: bool


class Unlocked(Output, kw_only=True):
    """``floatkeyctl unlock``: the license now active and what the change did."""

    changed: bool
    message: str
    license: License
    #: Against the license active before (empty when there was none).
    changes: list[Change]
    clients_told: int
    #: Of those, still running when floatkeyctl stopped waiting; ``None``: not waited for.
    clients_still_running: int | None


class NotConfirmed(Failure, kw_only=True):
    """``floatkeyctl unlock`` of a key that reduces the license, not confirmed: not sent."""

    changes: list[Change]


class AuditEntry(msgspec.Struct, kw_only=True):
    """One row of the audit log."""

    seq: int
    at: dt.datetime
    actor: str
    action: str
    outcome: str
    reason: str
    detail: dict[str, Any]


class AuditLog(Output, kw_only=True):
    """``floatkeyctl audit``."""

    entries: list[AuditEntry]


class AuditVerified(Output, kw_only=True):
    """``floatkeyctl audit verify``: ``intact`` is the verdict."""

    intact: bool
    rows: int
    message: str
    bad_seq: int | None


class ServerKey(Output, kw_only=True):
    """``floatkeyctl server-key``."""

    server: str
    public_key: str
    fingerprint: str
    #: The line to put in agent.toml to pin this key.
    agent_config: str


class AdminKeyCreated(Output, kw_only=True):
    """``floatkeyctl admin-key create``."""

    public_key: str
    key_id: str
    private_key_file: str


class UsageBucket(msgspec.Struct, kw_only=True):
    """One bucket of ``floatkeyctl usage``: all seats (``group`` null) or one group's."""

    start: dt.datetime
    group: str | None
    peak: int
    peak_at: dt.datetime
    average: float
    #: Null where only hourly aggregates are kept (older than ``keep_events_days``).
    users: int | None
    grants: int
    denials: dict[str, int]
    outstanding_peak: int
    #: Seats held plus denials outstanding, at most at once.
    demand_peak: int
    #: All seats only (null in a group's row): the license's seats when the peak was
    #: reached and at the bucket's end, the time every seat was in use, how many times
    #: use rose to the limit.
    peak_seats: int | None
    seats: int | None
    at_limit_s: float | None
    limit_hits: int | None
    #: Waits in the seat queue that ended in the bucket, their total and the longest.
    waits: int
    queued_s: float
    queued_longest_s: float


class UsageSummary(msgspec.Struct, kw_only=True):
    """The whole period, and the sentence floatkeyctl prints."""

    peak: int
    peak_at: dt.datetime | None
    peak_seats: int
    seats: int
    limit_hits: int
    at_limit_s: float
    grants: int
    denials: dict[str, int]
    would_serve: int
    users: int | None
    waits: int
    queued_s: float
    queued_longest_s: float
    sentence: str


class Usage(Output, kw_only=True):
    """``floatkeyctl usage``."""

    since: dt.datetime
    until: dt.datetime
    bucket: Literal["hour", "day", "week", "month"]
    group_by: Literal["none", "app", "user", "host"]
    buckets: list[UsageBucket]
    summary: UsageSummary
    #: Groups left out of ``buckets`` (the least used) to keep the answer to one message.
    groups_omitted: int


_encoder = msgspec.json.Encoder()


def dump(output: Output) -> str:
    """The JSON text of ``output``, indented."""
    return msgspec.json.format(_encoder.encode(output), indent=2).decode()


def from_ms(ms: int) -> dt.datetime:
    """A protocol time (Unix milliseconds) as an aware UTC datetime."""
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC)


def features(ids: list[str], names: Mapping[str, str]) -> list[Feature]:
    """Features with their display names."""
    return [Feature(id=f, name=names.get(f, f)) for f in ids]


def license_of(info: protocol.LicenseInfo, names: Mapping[str, str]) -> License:
    """The script's view of a license."""
    return License(
        licensee=info.licensee,
        organization=info.organization,
        seats=info.seats,
        features=features(info.features, names),
        product_version=info.product_version,
        serial=info.serial,
        issued=dt.date.fromisoformat(info.issued),
        expires=dt.date.fromisoformat(info.expires) if info.expires else None,
    )


def status_of(report: protocol.StatusReport, names: Mapping[str, str]) -> Status:
    """``status`` from the daemon's report."""
    return Status(
        server=report.server,
        status=report.status,
        license=license_of(report.license, names) if report.license else None,
        seats_in_use=report.seats_in_use,
        unlicensed_sessions=report.unlicensed_sessions,
        awaiting_shutdown=report.awaiting_release,
        generation=report.generation,
        revision=report.revision,
        fingerprint=report.fingerprint,
        broker=report.broker,
        admin_keys=report.admin_keys,
        dropped=dict(sorted(report.dropped.items())),
        days_left=report.days_left,
        expiring=report.expiring,
    )


def seat_of(row: protocol.ClientRow) -> Literal["licensed", "unlicensed", "revoked"]:
    """What kind of seat a client holds."""
    if row.revoked:
        return "revoked"
    return "licensed" if row.licensed else "unlicensed"


def clients_of(
    rows: list[protocol.ClientRow],
    denials: list[protocol.DenialRow],
    queue: list[protocol.QueueRow],
) -> Clients:
    """``clients`` from the daemon's rows."""
    return Clients(
        clients=[
            Client(
                client=r.client,
                login=r.login,
                app=r.app,
                user=r.user,
                host=r.host,
                pid=r.pid,
                seat=seat_of(r),
                since=from_ms(r.since),
                lease_expires=from_ms(r.expires_at),
                borrowed_until=from_ms(r.expires_at) if r.borrowed else None,
            )
            for r in rows
        ],
        denials=[
            Denial(
                at=from_ms(d.at),
                client=d.client,
                login=d.login,
                app=d.app,
                user=d.user,
                host=d.host,
                reason=d.reason,
            )
            for d in denials
        ],
        queue=[
            Waiting(
                position=q.position,
                client=q.client,
                login=q.login,
                app=q.app,
                user=q.user,
                host=q.host,
                pid=q.pid,
                since=from_ms(q.since),
            )
            for q in queue
        ],
    )


def change_of(change: LicenseChange) -> Change:
    """One change of an unlock."""
    return Change(
        what=change.what, before=change.before, after=change.after, reduces=change.reduces
    )


def _detail(text: str) -> dict[str, Any]:
    # The daemon stores each row's detail as a JSON object; anything else is kept as text.
    try:
        value = msgspec.json.decode(text)
    except msgspec.DecodeError:
        return {"text": text}
    return value if isinstance(value, dict) else {"value": value}


def audit_of(rows: list[protocol.AuditRow]) -> AuditLog:
    """``audit`` from the daemon's rows."""
    return AuditLog(
        entries=[
            AuditEntry(
                seq=r.seq,
                at=from_ms(r.ts),
                actor=r.actor,
                action=r.action,
                outcome=r.outcome,
                reason=r.reason,
                detail=_detail(r.detail),
            )
            for r in rows
        ]
    )


def verdict_of(verdict: protocol.AuditVerdict) -> AuditVerified:
    """``audit verify`` from the daemon's verdict."""
    return AuditVerified(
        intact=verdict.intact, rows=verdict.rows, message=verdict.message, bad_seq=verdict.bad_seq
    )


def usage_of(report: protocol.UsageReport, sentence: str) -> Usage:
    """``usage`` from the daemon's report."""
    summary = report.summary
    return Usage(
        since=from_ms(report.since),
        until=from_ms(report.until),
        bucket=report.bucket,  # type: ignore[arg-type]
        group_by=report.group_by,  # type: ignore[arg-type]
        buckets=[
            UsageBucket(
                start=from_ms(b.start),
                group=b.group,
                peak=b.peak,
                peak_at=from_ms(b.peak_at),
                average=b.average,
                users=b.users,
                grants=b.grants,
                denials=b.denials,
                outstanding_peak=b.outstanding_peak,
                demand_peak=b.demand_peak,
                peak_seats=b.peak_seats if b.group is None else None,
                seats=b.seats if b.group is None else None,
                at_limit_s=b.at_limit_ms / 1000 if b.group is None else None,
                limit_hits=b.limit_hits if b.group is None else None,
                waits=b.waits,
                queued_s=b.queued_ms / 1000,
                queued_longest_s=b.queued_longest_ms / 1000,
            )
            for b in report.buckets
        ],
        summary=UsageSummary(
            peak=summary.peak,
            peak_at=from_ms(summary.peak_at) if summary.peak else None,
            peak_seats=summary.peak_seats,
            seats=summary.seats,
            limit_hits=summary.limit_hits,
            at_limit_s=summary.at_limit_ms / 1000,
            grants=summary.grants,
            denials=summary.denials,
            would_serve=summary.would_serve,
            users=summary.users,
            waits=summary.waits,
            queued_s=summary.queued_ms / 1000,
            queued_longest_s=summary.queued_longest_ms / 1000,
            sentence=sentence,
        ),
        groups_omitted=report.groups_omitted,
    )


def failure(reason: str, message: str) -> Failure:
    """A refusal or an error."""
    return Failure(error=Error(reason=reason, message=message))
