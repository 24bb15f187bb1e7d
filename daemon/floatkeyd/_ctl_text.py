"""floatkeyctl's output for people: tables, columns and the sentences of an unlock.

The JSON for scripts is ``floatkeyd.ctl_json``; this module only formats text.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from typing import TYPE_CHECKING

from floatkeyd.ctl_json import seat_of

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from floatkey.protocol import (
        AuditRow,
        ClientRow,
        DenialRow,
        LicenseInfo,
        QueueRow,
        StatusReport,
        UsageReport,
        UsageSummary,
    )
    from floatkeyd.licensechange import LicenseChange

__all__ = [
    "audit_text",
    "change_lines",
    "clients_text",
    "columns",
    "describe_license",
    "in_days",
    "shut_down_progress",
    "shut_down_verdict",
    "status_text",
    "table",
    "usage_csv",
    "usage_sentence",
    "usage_text",
    "when",
]


def describe_license(info: LicenseInfo, names: Mapping[str, str]) -> list[tuple[str, str]]:
    """A license as table rows, features by their display names."""
    return [
        ("Licensee", info.licensee),
        ("Organization", info.organization),
        ("Seats", str(info.seats)),
        ("Features", _features(info.features, names)),
        ("Product version", str(info.product_version)),
        ("Serial", info.serial),
        ("Issued", info.issued),
        ("Expires", info.expires or "never"),
    ]


def status_text(status: StatusReport, names: Mapping[str, str]) -> str:
    """``floatkeyctl status``."""
    seats = str(status.license.seats) if status.license else "-"
    rows = [("Server", status.server), ("Status", status.status)]
    if status.license:
        rows += [
            (label, f"{value} ({in_days(status.days_left)})")
            if label == "Expires" and status.days_left is not None
            else (label, value)
            for label, value in describe_license(status.license, names)
        ]
    dropped = ", ".join(f"{k} {v}" for k, v in sorted(status.dropped.items()))
    rows += [
        ("Seats in use", f"{status.seats_in_use}/{seats}"),
        ("Unlicensed sessions", str(status.unlicensed_sessions)),
        ("Awaiting shutdown", str(status.awaiting_release)),
        ("Generation", str(status.generation)),
        ("Revision", str(status.revision)),
        ("Server fingerprint", status.fingerprint),
        ("Broker", status.broker),
        ("Dropped messages", dropped or "none"),
    ]
    return table(rows)


def in_days(days: int) -> str:
    """``in 32 days``, ``in 1 day``, ``today`` (its last day): a license's time left."""
    if days <= 0:
        return "today is its last day"
    return f"in {days} day{'s' if days != 1 else ''}"


def clients_text(
    clients: list[ClientRow], denials: list[DenialRow], queue: list[QueueRow] | None = None
) -> str:
    """``floatkeyctl clients``: the clients, those waiting for a seat, the latest denials."""
    parts = []
    if not clients:
        parts.append("No clients are connected.")
    else:
        header = ("CLIENT", "LOGIN", "APP", "USER", "HOST", "SEAT", "SINCE (UTC)")
        parts.append(columns((*header, "LEASE EXPIRES (UTC)"), [_client_row(c) for c in clients]))
    borrowed = [c for c in clients if c.borrowed and not c.revoked]
    if borrowed:
        lent = [(c.client, c.user, c.host, when(c.expires_at)) for c in borrowed]
        parts.append(
            "\nBorrowed seats (run offline; counted until returned or until they end):\n"
            + columns(("CLIENT", "USER", "HOST", "BORROWED UNTIL (UTC)"), lent)
        )
    if queue:
        header = ("POSITION", "CLIENT", "LOGIN", "APP", "USER", "HOST", "WAITING SINCE (UTC)")
        rows = [
            (str(q.position), q.client, q.login, q.app, q.user, q.host, when(q.since))
            for q in queue
        ]
        parts.append("\nWaiting for a seat:\n" + columns(header, rows))
    if denials:
        header = ("WHEN (UTC)", "CLIENT", "LOGIN", "APP", "USER", "HOST", "REASON")
        rows = [(when(d.at), d.client, d.login, d.app, d.user, d.host, d.reason) for d in denials]
        parts.append("\nRecently denied a seat:\n" + columns(header, rows))
    return "\n".join(parts)


def _client_row(row: ClientRow) -> tuple[str, ...]:
    return (
        row.client,
        row.login,
        row.app,
        row.user,
        row.host,
        "borrowed" if row.borrowed and not row.revoked else seat_of(row),
        when(row.since),
        when(row.expires_at),
    )


def audit_text(rows: list[AuditRow]) -> str:
    """``floatkeyctl audit``."""
    if not rows:
        return "The audit log has no such rows."
    header = ("SEQ", "WHEN (UTC)", "ACTOR", "ACTION", "OUTCOME", "REASON", "DETAIL")
    return columns(
        header,
        [(str(r.seq), when(r.ts), r.actor, r.action, r.outcome, r.reason, r.detail) for r in rows],
    )


def _features(ids: list[str], names: Mapping[str, str]) -> str:
    return ", ".join(names.get(f, f) for f in ids) or "(none)"


def table(rows: list[tuple[str, str]]) -> str:
    """Label-value rows, the values aligned."""
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)


def columns(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    """Rows in columns as wide as their widest cell."""
    rows = [header, *body]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def when(ms: int) -> str:
    """A protocol time (Unix ms) as UTC, to the second."""
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


_LABELS = {"seats": "Seats", "features": "Features", "expires": "Expires", "issued": "Issued"}


def change_lines(changes: list[LicenseChange], names: Mapping[str, str]) -> list[str]:
    """What a new key changes, before -> after, one line each; reductions say so."""
    rows = []
    for change in changes:
        before, after = change.before, change.after
        note = ""
        if change.what == "features":
            assert isinstance(before, list)
            assert isinstance(after, list)
            removed = [names.get(f, f) for f in before if f not in after]
            added = [names.get(f, f) for f in after if f not in before]
            notes = [f"{', '.join(removed)} removed"] if removed else []
            notes += [f"{', '.join(added)} added"] if added else []
            note = "; ".join(notes)
            before_text, after_text = _features(before, names), _features(after, names)
        elif change.what == "expires":
            before_text, after_text = str(before or "never"), str(after or "never")
            note = "earlier" if change.reduces else "later"
        elif change.what == "issued":
            before_text, after_text = str(before), str(after)
            note = "issued before the active key" if change.reduces else ""
        else:
            before_text, after_text = str(before), str(after)
            note = "fewer" if change.reduces else "more"
        rows.append((_LABELS[change.what], f"{before_text} -> {after_text}", note))
    width = max((len(label) for label, _, _ in rows), default=0)
    return [
        f"  {label:<{width}}  {text}" + (f"  ({note})" if note else "")
        for label, text, note in rows
    ]


def shut_down_progress(done: int, told: int) -> str:
    """The live line while the clients of the old license shut down."""
    whom = "the client" if told == 1 else "the clients"
    return f"Waiting for {whom} to shut down: {done} of {told}"


def shut_down_verdict(told: int, left: int, waited: float) -> str:
    """The closing line: all of them have shut down, or how many have not."""
    if left == 0:
        if told == 1:
            return "The client has shut down; it can restart under the new license."
        return f"All {told} clients have shut down; they can restart under the new license."
    one = left == 1
    who = "The client" if told == 1 else f"{left} of {told} clients"
    return (
        f"{who} {'has' if one else 'have'} not shut down after {waited:g} s; "
        f"{'its seat expires on its' if one else 'their seats expire on their'} own "
        f"(`floatkeyctl clients` lists {'it' if one else 'them'})."
    )


# --- usage ---------------------------------------------------------------------------

_DENIAL_REASONS = ("seats_exhausted", "limit_reached", "expired")


def usage_sentence(summary: UsageSummary, bucket: str) -> str:
    """The one-line verdict: the peak, the limit, and the seats all demand needed."""
    if not summary.peak and not summary.denials:
        return "No seat was in use and nobody was turned away in this period."
    at = _bucket_time(summary.peak_at, "day" if bucket != "hour" else "minute")
    if summary.peak_seats:
        peak = f"Peak {summary.peak} of {summary.peak_seats} seats on {at}"
    else:
        peak = f"Peak {summary.peak} seats on {at} (no license then)"
    hits = summary.limit_hits
    limit = (
        "the limit was never hit"
        if hits == 0
        else "the limit was hit once"
        if hits == 1
        else f"the limit was hit {hits} times"
    )
    needed = summary.would_serve
    return (
        f"{peak}; {limit}; {needed} seat{'s' if needed != 1 else ''} would have served all demand."
    )


def queue_sentence(summary: UsageSummary) -> str:
    """How long clients waited in the seat queue, or "" when none did."""
    waits = summary.waits
    if not waits:
        return ""
    return (
        f"Clients waited for a seat {waits} time{'s' if waits != 1 else ''}: "
        f"{_wait(summary.queued_ms)} in all, the longest {_wait(summary.queued_longest_ms)}."
    )


def _wait(ms: int) -> str:
    """A time in the queue: seconds under a minute (where a wait usually ends)."""
    return f"{max(round(ms / 1000), 1)}s" if ms < 60_000 else _duration(ms)


def usage_text(report: UsageReport, sentence: str) -> str:
    """``floatkeyctl usage``: a table of the buckets, then the sentence."""
    span = f"{when(report.since)[:16]} to {when(report.until)[:16]} UTC"
    head = f"Seat usage {span}, by {report.bucket}"
    if not report.buckets:
        return f"{head}.\nNo usage is recorded for this period."
    grouped = report.group_by != "none"
    header = [report.bucket.upper()]
    if grouped:
        header.append(report.group_by.upper())
    header += ["PEAK", "AVERAGE", "USERS", "GRANTS", "DENIED", "AT LIMIT", "WOULD SERVE"]
    rows = []
    for bucket in report.buckets:
        row = [_bucket_time(bucket.start, report.bucket)]
        if grouped:
            row.append("(all seats)" if bucket.group is None else bucket.group or "-")
        whole = bucket.group is None
        peak = (
            f"{bucket.peak}/{bucket.peak_seats}"
            if whole and bucket.peak_seats
            else str(bucket.peak)
        )
        row += [
            peak,
            f"{bucket.average:.1f}",
            "-" if bucket.users is None else str(bucket.users),
            str(bucket.grants),
            str(sum(bucket.denials.values())),
            _duration(bucket.at_limit_ms) if whole else "",
            str(bucket.demand_peak),
        ]
        rows.append(row)
    parts = [head + ":", "", columns(header, rows), "", sentence]
    if queued := queue_sentence(report.summary):
        parts.append(queued)
    if report.groups_omitted:
        parts.append(
            f"({report.groups_omitted} less used {report.group_by}s are left out; ask for "
            "a shorter period or longer buckets to see them.)"
        )
    return "\n".join(parts)


def usage_csv(report: UsageReport) -> str:
    """``floatkeyctl usage --csv``: one row per bucket, and per group with ``--group``."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(
        [
            "start",
            "group",
            "peak",
            "peak_at",
            "average",
            "users",
            "grants",
            *(f"denied_{reason}" for reason in _DENIAL_REASONS),
            "outstanding_peak",
            "demand_peak",
            "peak_seats",
            "seats",
            "at_limit_s",
            "limit_hits",
        ]
    )
    for bucket in report.buckets:
        whole = bucket.group is None
        writer.writerow(
            [
                _iso(bucket.start),
                "" if whole else bucket.group,
                bucket.peak,
                _iso(bucket.peak_at),
                bucket.average,
                "" if bucket.users is None else bucket.users,
                bucket.grants,
                *(bucket.denials.get(reason, 0) for reason in _DENIAL_REASONS),
                bucket.outstanding_peak,
                bucket.demand_peak,
                bucket.peak_seats if whole else "",
                bucket.seats if whole else "",
                bucket.at_limit_ms / 1000 if whole else "",
                bucket.limit_hits if whole else "",
            ]
        )
    return out.getvalue().rstrip("\n")


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _bucket_time(ms: int, bucket: str) -> str:
    moment = dt.datetime.fromtimestamp(ms / 1000, dt.UTC)
    if bucket in {"hour", "minute"}:
        return moment.strftime("%Y-%m-%d %H:%M")
    if bucket == "month":
        return moment.strftime("%Y-%m")
    if bucket == "week":
        return moment.strftime("%Y-%m-%d") + f" (W{moment.isocalendar().week:02})"
    return moment.strftime("%Y-%m-%d")


def _duration(ms: int) -> str:
    minutes = round(ms / 60_000)
    if minutes == 0:
        return "0" if ms == 0 else "<1m"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02}m" if hours else f"{minutes}m"
