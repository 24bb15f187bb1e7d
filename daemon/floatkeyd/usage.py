"""Seat usage: the events the daemon records, and the figures made from them.

Pure and synchronous; ``floatkeyd.usagelog`` stores the events and the hourly aggregates
and calls this module to fold and to answer ``admin.usage`` (docs/USAGE.md).

An **event** is one seat decision: ``granted`` (reason ``borrow`` for a seat lent for
offline use), ``renewed_after_loss`` (a grant to a client the daemon had told
``seat.lost``), ``released`` (reason ``agent``, ``will`` or ``expiry``; a borrowed seat:
``returned`` or ``borrow_ended``), ``revoked`` (``admin``, or a license change:
``unlock``, ``license_expired``, ``license_refused``), ``denied`` (with the denial's
reason) and ``license`` (a new license generation: every seat is revoked, ``seats`` is
the new limit). Renewals are not events: a seat held for a month by one agent is two
rows, its grant and its end.

A :class:`Replay` walks the events in the order they were decided, from a known
:class:`UsageState` (the seats held, by whom, and the denials still outstanding), and
measures each group of seats (all of them, or per app, user or host) over periods:
the exact peak of seats held at once, seat-milliseconds (for the time-weighted
average), the time the license was at its limit, grants, denials by reason, and the
peak of demand: seats held plus denials outstanding.

A denial is **outstanding** from the moment a client is refused a seat for want of one
(``seats_exhausted``) until that client is granted a seat, or :data:`OUTSTANDING_MS`
after its latest such denial, whichever comes first: a client that keeps asking keeps
counting, one that gave up stops. Denials for a per-user/host/login cap or an expired
license are counted but are not demand more seats would serve.
"""

from __future__ import annotations

import calendar
import datetime as dt
import heapq
import itertools
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, NamedTuple

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Sequence

    from floatkeyd.ledger import Lease, Waiter

__all__ = [
    "DIMS",
    "HOUR_MS",
    "OUTSTANDING_MS",
    "Bucket",
    "DenialFilter",
    "Dim",
    "Figures",
    "Replay",
    "UsageEvent",
    "UsageState",
    "Who",
    "bucket_starts",
    "carried",
    "combine",
    "denied",
    "floor_bucket",
    "granted",
    "hour_floor",
    "license_changed",
    "released",
    "revoked",
]

HOUR_MS = 3_600_000
#: How long a denied client counts as demand after its latest denial, unless granted.
OUTSTANDING_MS = 120_000
#: A client refused again for the same reason within this time is the same denial.
DENIAL_REPEAT_MS = 60_000
#: At most this many denial rows a minute; beyond, denials are only logged as a count.
DENIAL_ROWS_PER_MINUTE = 6_000

Kind = Literal[
    "granted",
    "renewed_after_loss",
    "released",
    "revoked",
    "denied",
    "license",
    "queued",
    "unqueued",
]
Dim = Literal["", "app", "user", "host"]
#: Every grouping: "" is all seats together.
DIMS: tuple[Dim, ...] = ("", "app", "user", "host")
Bucket = Literal["hour", "day", "week", "month"]
GRANTS: frozenset[str] = frozenset({"granted", "renewed_after_loss"})
ENDS: frozenset[str] = frozenset({"released", "revoked"})


class Who(NamedTuple):
    """Whose seat: what the agent said of itself when it asked."""

    app: str
    user: str
    host: str

    def name(self, dim: Dim) -> str:
        """This seat's group name along ``dim`` ("" for all seats together)."""
        if dim == "app":
            return self.app
        if dim == "user":
            return self.user
        if dim == "host":
            return self.host
        return ""


@dataclass(frozen=True, slots=True)
class UsageEvent:
    """One recorded seat decision (a row of ``usage_events`` without its ``seq``)."""

    at: int
    kind: Kind
    client: str = ""
    login: str = ""
    app: str = ""
    user: str = ""
    host: str = ""
    reason: str = ""
    #: The license generation the seat belongs to (``license``: the new one).
    generation: int = 0
    #: ``license`` only: the seats of the new license (0 unlicensed or expired).
    seats: int = 0
    #: How many decisions this row stands for (1; more only for a count of denials);
    #: ``unqueued``: how long the client waited (ms).
    n: int = 1

    @property
    def who(self) -> Who:
        """The seat's app, user and host."""
        return Who(self.app, self.user, self.host)


# --- events from the ledger's decisions ---------------------------------------------


def _seat_event(
    holder: Lease | Waiter, at: int, kind: Kind, reason: str = "", n: int = 1
) -> UsageEvent:
    """An event about a seat or a place in the queue, with who holds it."""
    return UsageEvent(
        at=at,
        kind=kind,
        client=holder.client,
        login=holder.login,
        app=holder.app,
        user=holder.user,
        host=holder.host,
        reason=reason,
        generation=holder.generation,
        n=n,
    )


def granted(lease: Lease, at: int, *, after_loss: bool = False) -> UsageEvent:
    """A licensed seat granted (``after_loss``: to a client told ``seat.lost`` before)."""
    return _seat_event(lease, at, "renewed_after_loss" if after_loss else "granted")


def released(
    lease: Lease,
    at: int,
    reason: Literal["agent", "will", "expiry", "returned", "borrow_ended", "license_changed"],
) -> UsageEvent:
    """A licensed seat freed by its agent, by its MQTT will, or at the end of its lease.

    A borrowed seat: ``returned`` early by its agent, ``borrow_ended`` at its end, or
    ``license_changed`` when its laptop came back after a new license.
    """
    return _seat_event(lease, at, "released", reason)


def borrowed(lease: Lease, at: int) -> UsageEvent:
    """A seat lent for offline use: a grant (reason ``borrow``), held until its release."""
    return _seat_event(lease, at, "granted", "borrow")


def revoked(lease: Lease, at: int, reason: str) -> UsageEvent:
    """A licensed seat taken back: ``admin`` or a license change (``unlock``, ...)."""
    return _seat_event(lease, at, "revoked", reason)


def denied(  # noqa: PLR0913 - the request's fields and the decision
    client: str, at: int, *, login: str, who: Who, reason: str, generation: int
) -> UsageEvent:
    """A request refused, with the denial's reason code."""
    return UsageEvent(
        at=at,
        kind="denied",
        client=client,
        login=login,
        app=who.app,
        user=who.user,
        host=who.host,
        reason=reason,
        generation=generation,
    )


def queued(waiter: Waiter, at: int) -> UsageEvent:
    """A client started waiting for a seat (``seat.queued``)."""
    return _seat_event(waiter, at, "queued")


def unqueued(waiter: Waiter, at: int, reason: str) -> UsageEvent:
    """A client stopped waiting; ``n`` is how long it waited (ms).

    ``reason``: ``granted``, ``cancel``, ``will``, ``expiry``, ``queue_timeout`` or
    ``license_changed``.
    """
    return _seat_event(waiter, at, "unqueued", reason, n=max(at - waiter.since, 0))


def license_changed(at: int, *, generation: int, seats: int, status: str) -> UsageEvent:
    """A new license generation: every seat of the old one is revoked."""
    return UsageEvent(at=at, kind="license", reason=status, generation=generation, seats=seats)


class DenialFilter:
    """Which denials become rows: one per client and reason per minute, a capped number.

    A client told "all seats are in use" that asks again twenty times a minute is one
    unserved demand, not twenty; and a flood of requests under many client ids must not
    grow the database without bound (beyond the cap, denials are counted in
    :attr:`unrecorded` and logged).
    """

    def __init__(self) -> None:
        self._minute = -1
        self._rows = 0
        self._last: dict[tuple[str, str], int] = {}
        #: Denials not recorded because of the cap, since start.
        self.unrecorded = 0

    def admit(self, client: str, reason: str, at: int) -> bool:
        """Whether this denial is recorded as a row of its own."""
        minute = at // 60_000
        if minute != self._minute:
            self._minute, self._rows = minute, 0
            # Keep only what can still suppress a repeat: bounded by a minute of denials.
            self._last = {k: t for k, t in self._last.items() if at - t < DENIAL_REPEAT_MS}
        last = self._last.get((client, reason))
        if last is not None and at - last < DENIAL_REPEAT_MS:
            return False
        if self._rows >= DENIAL_ROWS_PER_MINUTE:
            self.unrecorded += 1
            return False
        self._rows += 1
        self._last[(client, reason)] = at
        return True


# --- the state a replay starts from ---------------------------------------------------


@dataclass(slots=True)
class UsageState:
    """Seats held (client → whose) and outstanding denials (client → until, whose)."""

    generation: int = 0
    seats: int = 0
    held: dict[str, Who] = field(default_factory=dict)
    waiting: dict[str, tuple[int, Who]] = field(default_factory=dict)

    def copy(self) -> UsageState:
        """An independent copy (a replay changes the state it is given)."""
        return UsageState(self.generation, self.seats, dict(self.held), dict(self.waiting))

    def counts(self, dim: Dim) -> Counter[str]:
        """Seats held per group along ``dim``."""
        return Counter(who.name(dim) for who in self.held.values())

    def to_plain(self) -> dict[str, object]:
        """A JSON-able form (the fold's checkpoint)."""
        return {
            "generation": self.generation,
            "seats": self.seats,
            "held": [[client, *who] for client, who in self.held.items()],
            "waiting": [[client, until, *who] for client, (until, who) in self.waiting.items()],
        }

    @classmethod
    def from_plain(cls, plain: dict[str, object]) -> UsageState:
        """The state :meth:`to_plain` wrote."""
        held_rows: list[list[str]] = plain.get("held", [])  # type: ignore[assignment]
        waiting_rows: list[list[str | int]] = plain.get("waiting", [])  # type: ignore[assignment]
        return cls(
            generation=int(plain.get("generation", 0)),  # type: ignore[call-overload]
            seats=int(plain.get("seats", 0)),  # type: ignore[call-overload]
            held={str(r[0]): Who(str(r[1]), str(r[2]), str(r[3])) for r in held_rows},
            waiting={
                str(r[0]): (int(r[1]), Who(str(r[2]), str(r[3]), str(r[4]))) for r in waiting_rows
            },
        )


# --- the figures of a period ----------------------------------------------------------


@dataclass(slots=True)
class Figures:
    """One group's seats over one period ``[start, end)``.

    ``seats_*`` and the limit figures mean something for the group of all seats only.
    ``users`` is ``None`` where it cannot be known (periods read from hourly aggregates).
    """

    start: int
    end: int
    held_start: int
    held_end: int
    peak: int
    peak_at: int
    peak_seats: int
    seat_ms: int = 0
    limit_ms: int = 0
    limit_hits: int = 0
    grants: int = 0
    denials: dict[str, int] = field(default_factory=dict)
    waiting_peak: int = 0
    demand_peak: int = 0
    seats_start: int = 0
    seats_end: int = 0
    #: Waits in the seat queue that ended in the period (granted or not), their total
    #: and the longest (from the ``unqueued`` events: ``n`` is the wait in ms).
    waits: int = 0
    wait_ms: int = 0
    wait_longest_ms: int = 0
    users: set[str] | None = None
    #: Something happened to this group in the period (else it held ``held_start`` all along).
    touched: bool = False

    @property
    def average(self) -> float:
        """Seats held on average over the period (time-weighted)."""
        span = self.end - self.start
        return self.seat_ms / span if span > 0 else float(self.held_start)


def carried(start: int, end: int, held: int, seats: int) -> Figures:
    """A period in which nothing happened to the group: ``held`` seats all along."""
    at_limit = seats > 0 and held >= seats
    return Figures(
        start=start,
        end=end,
        held_start=held,
        held_end=held,
        peak=held,
        peak_at=start,
        peak_seats=seats,
        seat_ms=held * (end - start),
        limit_ms=(end - start) if at_limit else 0,
        demand_peak=held,
        seats_start=seats,
        seats_end=seats,
    )


def combine(first: Figures, then: Figures) -> Figures:
    """The figures of two consecutive periods of one group, as one."""
    denials = Counter(first.denials)
    denials.update(then.denials)
    peak_from = then if then.peak > first.peak else first
    users = None if first.users is None or then.users is None else first.users | then.users
    return Figures(
        start=first.start,
        end=then.end,
        held_start=first.held_start,
        held_end=then.held_end,
        peak=peak_from.peak,
        peak_at=peak_from.peak_at,
        peak_seats=peak_from.peak_seats,
        seat_ms=first.seat_ms + then.seat_ms,
        limit_ms=first.limit_ms + then.limit_ms,
        limit_hits=first.limit_hits + then.limit_hits,
        grants=first.grants + then.grants,
        denials=dict(denials),
        waiting_peak=max(first.waiting_peak, then.waiting_peak),
        demand_peak=max(first.demand_peak, then.demand_peak),
        seats_start=first.seats_start,
        seats_end=then.seats_end,
        waits=first.waits + then.waits,
        wait_ms=first.wait_ms + then.wait_ms,
        wait_longest_ms=max(first.wait_longest_ms, then.wait_longest_ms),
        users=users,
        touched=first.touched or then.touched,
    )


class _Running:
    """One group's figures while its period is open."""

    __slots__ = ("fig", "held", "last", "waiting")

    def __init__(self, start: int, held: int, waiting: int, seats: int, *, users: bool) -> None:
        self.last = start
        self.held = held
        self.waiting = waiting
        self.fig = Figures(
            start=start,
            end=start,
            held_start=held,
            held_end=held,
            peak=held,
            peak_at=start,
            peak_seats=seats,
            waiting_peak=waiting,
            demand_peak=held + waiting,
            seats_start=seats,
            seats_end=seats,
            users=set() if users else None,
            touched=waiting > 0,
        )

    def to(self, at: int, seats: int, *, whole: bool) -> None:
        """Account for the time up to ``at`` at the current count."""
        span = at - self.last
        if span > 0:
            self.fig.seat_ms += self.held * span
            if whole and seats > 0 and self.held >= seats:
                self.fig.limit_ms += span
            self.last = at

    def demand(self) -> None:
        self.fig.waiting_peak = max(self.fig.waiting_peak, self.waiting)
        self.fig.demand_peak = max(self.fig.demand_peak, self.held + self.waiting)


GroupKey = tuple[Dim, str]


class Replay:
    """Walks events from a state, and measures the groups along ``dims`` over periods.

    The state it is given is changed as it goes (:attr:`state` is where it stands).
    """

    def __init__(self, state: UsageState, dims: Sequence[Dim], *, users: bool = True) -> None:
        self.state = state
        self._dims: tuple[Dim, ...] = tuple(dict.fromkeys(("", *dims)))
        self._users = users
        self._held: Counter[GroupKey] = Counter()
        self._waiting: Counter[GroupKey] = Counter()
        for who in state.held.values():
            for dim in self._dims:
                self._held[(dim, who.name(dim))] += 1
        self._expiry: list[tuple[int, str]] = []
        for client, (until, who) in state.waiting.items():
            heapq.heappush(self._expiry, (until, client))
            for dim in self._dims:
                self._waiting[(dim, who.name(dim))] += 1
        self._open: dict[GroupKey, _Running] | None = None
        self._start = 0

    # --- periods --------------------------------------------------------------------

    def run(
        self, events: Iterable[UsageEvent], boundaries: Sequence[int]
    ) -> Iterator[dict[GroupKey, Figures]]:
        """The figures of each period between consecutive ``boundaries``.

        Events before the first boundary only move the state; events from the last one
        on are not read.
        """
        pending = iter(events)
        event = next(pending, None)
        while event is not None and event.at < boundaries[0]:
            self.apply(event)
            event = next(pending, None)
        for start, end in itertools.pairwise(boundaries):
            self.open(start)
            while event is not None and event.at < end:
                self.apply(event)
                event = next(pending, None)
            yield self.close(end)

    def open(self, start: int) -> None:
        """Start measuring at ``start``: all seats, and every group holding or awaiting some."""
        self._expire(start)
        self._start = start
        self._open = {}
        for key in {("", ""), *self._held.keys(), *self._waiting.keys()}:
            self._group(key)
        if self._users:
            for who in self.state.held.values():
                for dim in self._dims:
                    users = self._open[(dim, who.name(dim))].fig.users
                    assert users is not None
                    users.add(who.user)

    def close(self, end: int) -> dict[GroupKey, Figures]:
        """Stop measuring at ``end``; the figures of every group seen since :meth:`open`."""
        self._expire(end)
        assert self._open is not None, "close() without open()"
        figures = {}
        for key, running in self._open.items():
            running.to(end, self.state.seats, whole=key[0] == "")
            running.fig.end = end
            running.fig.held_end = running.held
            running.fig.seats_end = self.state.seats
            figures[key] = running.fig
        self._open = None
        return figures

    # --- events ---------------------------------------------------------------------

    def apply(self, event: UsageEvent) -> None:
        """One event, in the order it was decided."""
        self._expire(event.at)
        if event.kind == "license":
            self._license(event)
        elif event.kind in GRANTS:
            self._grant(event)
        elif event.kind in ENDS:
            held = self.state.held.pop(event.client, None)
            if held is not None:
                self._count(held, -1, event.at)
        elif event.kind == "denied":
            self._denied(event)
        elif event.kind == "unqueued":
            self._unqueued(event)

    def _unqueued(self, event: UsageEvent) -> None:
        """A wait in the queue ended: counted where it ends, with its length."""
        for dim in self._dims:
            running = self._group((dim, event.who.name(dim)))
            if running is not None:
                fig = running.fig
                fig.waits += 1
                fig.wait_ms += event.n
                fig.wait_longest_ms = max(fig.wait_longest_ms, event.n)
                fig.touched = True

    def _license(self, event: UsageEvent) -> None:
        state = self.state
        for who in state.held.values():
            self._count(who, -1, event.at)
        state.held.clear()
        whole = self._group(("", ""))
        if whole is not None:
            whole.to(event.at, state.seats, whole=True)
            whole.fig.touched = True
        state.seats, state.generation = event.seats, event.generation

    def _grant(self, event: UsageEvent) -> None:
        state = self.state
        # A grant decided under an older license, recorded after the change that revoked
        # it (the change's commit and the ledger's switch are not one step).
        if event.generation < state.generation:
            return
        before = state.held.get(event.client)
        if before is not None:
            self._count(before, -1, event.at)
        # The demand is served: it stops waiting as it starts holding (never counted twice).
        waited = state.waiting.pop(event.client, None)
        if waited is not None:
            self._wait(waited[1], -1, event.at)
        state.held[event.client] = event.who
        self._count(event.who, +1, event.at, grant=True)

    def _denied(self, event: UsageEvent) -> None:
        for dim in self._dims:
            running = self._group((dim, event.who.name(dim)))
            if running is not None:
                denials = running.fig.denials
                denials[event.reason] = denials.get(event.reason, 0) + event.n
                running.fig.touched = True
        if event.reason != "seats_exhausted" or not event.client:
            return
        until = event.at + OUTSTANDING_MS
        waiting = self.state.waiting.get(event.client)
        if waiting is None:
            self.state.waiting[event.client] = (until, event.who)
            self._wait(event.who, +1, event.at)
        else:
            self.state.waiting[event.client] = (until, waiting[1])
        heapq.heappush(self._expiry, (until, event.client))

    def _expire(self, at: int) -> None:
        """Outstanding denials whose time ran out by ``at`` stop counting."""
        while self._expiry and self._expiry[0][0] <= at:
            until, client = heapq.heappop(self._expiry)
            waiting = self.state.waiting.get(client)
            if waiting is not None and waiting[0] == until:
                del self.state.waiting[client]
                self._wait(waiting[1], -1, until)

    def _group(self, key: GroupKey) -> _Running | None:
        if self._open is None:
            return None
        running = self._open.get(key)
        if running is None:
            running = _Running(
                self._start,
                self._held[key],
                self._waiting[key],
                self.state.seats,
                users=self._users,
            )
            self._open[key] = running
        return running

    def _count(self, who: Who, delta: int, at: int, *, grant: bool = False) -> None:
        seats = self.state.seats
        for dim in self._dims:
            key = (dim, who.name(dim))
            running = self._group(key)
            if running is not None:
                running.to(at, seats, whole=dim == "")
            self._held[key] += delta
            if self._held[key] <= 0:
                del self._held[key]
            if running is None:
                continue
            before, running.held = running.held, self._held[key]
            fig = running.fig
            fig.touched = True
            if grant:
                fig.grants += 1
                if fig.users is not None:
                    fig.users.add(who.user)
            if running.held > fig.peak:
                fig.peak, fig.peak_at, fig.peak_seats = running.held, at, seats
            if dim == "" and seats > 0 and before < seats <= running.held:
                fig.limit_hits += 1
            running.demand()

    def _wait(self, who: Who, delta: int, at: int) -> None:
        for dim in self._dims:
            key = (dim, who.name(dim))
            running = self._group(key)
            self._waiting[key] += delta
            if self._waiting[key] <= 0:
                del self._waiting[key]
            if running is not None:
                running.to(at, self.state.seats, whole=dim == "")
                running.waiting = self._waiting[key]
                running.fig.touched = True
                running.demand()


# --- calendar buckets (UTC) ---------------------------------------------------------


def hour_floor(ms: int) -> int:
    """The start of the UTC hour of ``ms``."""
    return ms - ms % HOUR_MS


def floor_bucket(ms: int, bucket: Bucket) -> int:
    """The start of the bucket (UTC hour, day, ISO week from Monday, month) of ``ms``."""
    if bucket == "hour":
        return hour_floor(ms)
    day = dt.datetime.fromtimestamp(ms / 1000, dt.UTC).date()
    if bucket == "week":
        day -= dt.timedelta(days=day.weekday())
    elif bucket == "month":
        day = day.replace(day=1)
    return calendar.timegm(day.timetuple()) * 1000


def _next_bucket(ms: int, bucket: Bucket) -> int:
    if bucket == "hour":
        return ms + HOUR_MS
    day = dt.datetime.fromtimestamp(ms / 1000, dt.UTC).date()
    if bucket == "day":
        day += dt.timedelta(days=1)
    elif bucket == "week":
        day += dt.timedelta(days=7)
    else:
        day = (day.replace(day=28) + dt.timedelta(days=4)).replace(day=1)
    return calendar.timegm(day.timetuple()) * 1000


def bucket_starts(start: int, end: int, bucket: Bucket) -> list[int]:
    """The starts of the buckets that meet ``[start, end)``, the first one's aligned start."""
    starts, at = [], floor_bucket(start, bucket)
    while at < end:
        starts.append(at)
        at = _next_bucket(at, bucket)
    return starts


# --- answering a question ---------------------------------------------------------------

#: At most this many buckets in one answer (three weeks of hours, 16 months of days).
MAX_BUCKETS = 500
#: What the rows of one answer may take, encoded: it must fit one MQTT message (the
#: shipped Mosquitto's max_packet_size is 256 KiB; the signed envelope adds a third).
MAX_ANSWER_BYTES = 150_000
_ROW_BYTES = 280  # one row's JSON without its group name, figures at their longest


@dataclass(frozen=True, slots=True)
class Question:
    """``admin.usage``: ``[since, until)`` by ``bucket``, optionally per ``group_by``."""

    since: int
    until: int
    bucket: Bucket
    group_by: Dim
    now: int


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Where the folding stands: the exact state at ``until``; data kept from ``kept_from``.

    Raw events exist from ``until`` on; hourly aggregates before it, back to ``kept_from``.
    """

    until: int
    kept_from: int
    state: UsageState
    last_seq: int = 0


@dataclass(frozen=True, slots=True)
class HourRow:
    """One stored hourly aggregate: a group's figures over one hour (or less, at the edges)."""

    dim: Dim
    name: str
    fig: Figures


@dataclass(frozen=True, slots=True)
class Row:
    """One bucket of the answer: all seats (``group`` None) or one group."""

    start: int
    end: int
    group: str | None
    fig: Figures
    #: The part of the bucket measured (the current bucket is measured up to now).
    covered_ms: int
    users: int | None

    @property
    def average(self) -> float:
        """Seats held on average over the measured part of the bucket."""
        return self.fig.seat_ms / self.covered_ms if self.covered_ms > 0 else 0.0


@dataclass(frozen=True, slots=True)
class Summary:
    """The whole period: its peak, the limit, and the seats all demand needed."""

    peak: int
    peak_at: int
    peak_seats: int
    seats: int
    limit_hits: int
    limit_ms: int
    grants: int
    denials: dict[str, int]
    demand_peak: int
    users: int | None
    #: Waits in the seat queue that ended in the period, their total and the longest (ms).
    waits: int = 0
    wait_ms: int = 0
    wait_longest_ms: int = 0


@dataclass(frozen=True, slots=True)
class Answer:
    """Rows (totals first in each bucket, then its groups) and the summary."""

    start: int
    end: int
    rows: list[Row]
    summary: Summary
    groups_omitted: int


class TooManyBuckets(ValueError):
    """The question would need more than :data:`MAX_BUCKETS` buckets."""

    def __init__(self, count: int) -> None:
        super().__init__(count)
        self.count = count


def measured_span(question: Question, checkpoint: Checkpoint) -> tuple[int, int]:
    """``[start, end)`` actually measured: from the first bucket (and the data kept) to now.

    ``until`` is rounded up to the hour where it falls in the hourly aggregates.
    """
    start = max(floor_bucket(question.since, question.bucket), checkpoint.kept_from)
    until = question.until
    if until < checkpoint.until:
        until = -(-until // HOUR_MS) * HOUR_MS
    return start, min(until, question.now)


def answer(
    question: Question,
    checkpoint: Checkpoint,
    hours: Sequence[HourRow],
    events: Sequence[UsageEvent],
) -> Answer:
    """Figures per bucket (and group) and the summary, from the aggregates and the events.

    ``hours``: the stored hourly rows of ``[start, checkpoint.until)`` for all seats and
    the grouping asked; ``events``: every raw event (they start at ``checkpoint.until``).
    Raises :class:`TooManyBuckets`.
    """
    start, end = measured_span(question, checkpoint)
    starts = bucket_starts(start, end, question.bucket) if start < end else []
    if len(starts) > MAX_BUCKETS:
        raise TooManyBuckets(len(starts))
    spans = (
        [
            (max(s, start), min(e, end))
            for s, e in itertools.pairwise([*starts, _next_bucket(starts[-1], question.bucket)])
        ]
        if starts
        else []
    )
    dims: tuple[Dim, ...] = ("",) if question.group_by == "" else ("", question.group_by)
    pieces: list[dict[GroupKey, list[Figures]]] = [{} for _ in spans]
    if spans and spans[0][0] < checkpoint.until:
        _hours_into(pieces, spans, checkpoint, hours, dims)
    if spans and end > max(start, checkpoint.until):
        _events_into(pieces, spans, checkpoint, events, dims)
    rows: list[Row] = []
    for index, (s, e) in enumerate(spans):
        exact = s >= checkpoint.until
        for (dim, name), parts in pieces[index].items():
            fig = parts[0]
            for part in parts[1:]:
                fig = combine(fig, part)
            users = len(fig.users) if exact and fig.users is not None else None
            rows.append(
                Row(
                    starts[index],
                    _next_bucket(starts[index], question.bucket),
                    None if dim == "" else name,
                    fig,
                    e - s,
                    users,
                )
            )
    rows, omitted = _bounded(rows, grouped=question.group_by != "")
    return Answer(start, end, rows, _summary(rows, checkpoint), omitted)


def _hours_into(
    pieces: list[dict[GroupKey, list[Figures]]],
    spans: list[tuple[int, int]],
    checkpoint: Checkpoint,
    hours: Sequence[HourRow],
    dims: tuple[Dim, ...],
) -> None:
    """The buckets' parts before the checkpoint, from hourly rows and counts carried back.

    The seats a group held at the start are its count in the checkpoint less every
    change the hourly rows record since: each row has the group's count at its start and
    end, and a group has a row in every hour its count changed.
    """
    folded = [(s, min(e, checkpoint.until)) for s, e in spans if s < checkpoint.until]
    for dim in dims:
        by_name: dict[str, list[Figures]] = {}
        for row in hours:
            if row.dim == dim and row.fig.start >= spans[0][0]:
                by_name.setdefault(row.name, []).append(row.fig)
        held_now = checkpoint.state.counts(dim)
        for name in by_name.keys() | held_now.keys():
            figs = sorted(by_name.get(name, []), key=lambda f: f.start)
            held = held_now.get(name, 0) - sum(f.held_end - f.held_start for f in figs)
            seats = (figs[0].seats_start if figs else checkpoint.state.seats) if dim == "" else 0
            for index, fig in enumerate(_from_hours(figs, held, seats, folded, whole=dim == "")):
                if fig is not None and (dim == "" or fig.peak > 0 or fig.touched):
                    pieces[index].setdefault((dim, name), []).append(fig)


def _from_hours(
    figs: list[Figures], held: int, seats: int, spans: list[tuple[int, int]], *, whole: bool
) -> Iterator[Figures | None]:
    """One group's figures per span: its hourly rows, and its count carried between them."""
    cursor = 0
    for start, end in spans:
        at, fig = start, None
        while cursor < len(figs) and figs[cursor].start < end:
            hour = figs[cursor]
            if hour.start > at:
                fig = _then(fig, carried(at, hour.start, held, seats))
            fig = _then(fig, hour)
            held, at = hour.held_end, hour.end
            seats = hour.seats_end if whole else 0  # the limit is all seats' alone
            cursor += 1
        if at < end:
            fig = _then(fig, carried(at, end, held, seats))
        yield fig


def _then(fig: Figures | None, more: Figures) -> Figures:
    return more if fig is None else combine(fig, more)


def _events_into(
    pieces: list[dict[GroupKey, list[Figures]]],
    spans: list[tuple[int, int]],
    checkpoint: Checkpoint,
    events: Sequence[UsageEvent],
    dims: tuple[Dim, ...],
) -> None:
    """The buckets' parts from the checkpoint on, replayed from the raw events."""
    first = max(spans[0][0], checkpoint.until)
    boundaries = [first] + [s for s, _ in spans if s > first] + [spans[-1][1]]
    owners = [i for i, (s, e) in enumerate(spans) if e > first]
    replay = Replay(checkpoint.state.copy(), dims)
    for index, figures in zip(owners, replay.run(events, boundaries), strict=True):
        for key, fig in figures.items():
            if key[0] == "" or fig.peak > 0 or fig.touched:
                pieces[index].setdefault(key, []).append(fig)


def _bounded(rows: list[Row], *, grouped: bool) -> tuple[list[Row], int]:
    """Totals and as many groups as fit :data:`MAX_ANSWER_BYTES`, the busiest first."""
    if not grouped:
        return rows, 0
    totals = [row for row in rows if row.group is None]
    weight: Counter[str] = Counter()
    size: Counter[str] = Counter()
    for row in rows:
        if row.group is not None:
            weight[row.group] += row.fig.seat_ms + row.fig.grants + sum(row.fig.denials.values())
            size[row.group] += _ROW_BYTES + len(row.group.encode())
    room = MAX_ANSWER_BYTES - _ROW_BYTES * len(totals)
    kept: set[str] = set()
    for name, _ in sorted(weight.items(), key=lambda item: (-item[1], item[0])):
        if size[name] > room:
            break
        kept.add(name)
        room -= size[name]
    chosen = [row for row in rows if row.group is None or row.group in kept]
    chosen.sort(key=lambda row: (row.start, row.group is not None, row.group or ""))
    return chosen, len(weight) - len(kept)


def _summary(rows: list[Row], checkpoint: Checkpoint) -> Summary:
    totals = [row for row in rows if row.group is None]
    denials: Counter[str] = Counter()
    users: set[str] | None = set()
    for row in totals:
        denials.update(row.fig.denials)
        if users is not None and row.users is not None and row.fig.users is not None:
            users |= row.fig.users
        else:
            users = None
    best = max(totals, key=lambda row: (row.fig.peak, -row.fig.peak_at), default=None)
    return Summary(
        peak=best.fig.peak if best else 0,
        peak_at=best.fig.peak_at if best else 0,
        peak_seats=best.fig.peak_seats if best else 0,
        seats=totals[-1].fig.seats_end if totals else checkpoint.state.seats,
        limit_hits=sum(row.fig.limit_hits for row in totals),
        limit_ms=sum(row.fig.limit_ms for row in totals),
        grants=sum(row.fig.grants for row in totals),
        denials=dict(denials),
        demand_peak=max((row.fig.demand_peak for row in totals), default=0),
        users=len(users) if users is not None and totals else None,
        waits=sum(row.fig.waits for row in totals),
        wait_ms=sum(row.fig.wait_ms for row in totals),
        wait_longest_ms=max((row.fig.wait_longest_ms for row in totals), default=0),
    )
