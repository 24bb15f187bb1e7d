"""The seat ledger: who holds a seat, under which license generation, until when.

Pure and synchronous: the daemon feeds it requests and the clock, and persists what it
decides. The one invariant it exists for: never more licensed leases than seats.

A lease belongs to one generation of the license. Activating a new license revokes
every lease of the old one: revoked leases hold no seat, and wait in ``revoked`` until
their agent releases them (or they expire), so an administrator can watch the old
clients go.

A client that asks to wait when every seat is taken is queued (``queue``, first in
first out). A queue entry has a lease of its own, renewed like a seat. Whatever frees a
seat (a release, a will, an expiry, an idle reclaim, more seats) grants it to the first
waiter at once; the grants are collected in :meth:`SeatLedger.take_promoted` for the
daemon to send. So the ledger keeps, after every call: while a seat is free, nobody
who may take it waits.

Leases of agents that report activity (``active_at`` not ``None``) may be reclaimed
when idle (:meth:`SeatLedger.idle`): always warned first, then revoked no earlier than
``idle_warning_ms`` after the warning.

A **borrowed** seat (:meth:`SeatLedger.borrow`, rules in ``floatkeyd.borrowing``) is a
licensed lease whose end is fixed when granted: counted until its agent returns it
(:meth:`SeatLedger.release`) or it ends (:meth:`SeatLedger.expire`, by the daemon's own
clock), never renewed, never shortened by a will nor lengthened by a broker outage. A
license change does not revoke it (its laptop runs on and cannot be told): it stays in
``leases``, under its old generation, counted, until it ends, is returned, or its laptop
next reaches the daemon and learns of the change (the borrow desk then ends it). While
such seats hold more than a new license's seats, nothing new is granted.
"""

from __future__ import annotations

import heapq
import secrets
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

from floatkeyd.borrowing import BorrowRefusal, BorrowRules

__all__ = [
    "Denied",
    "Granted",
    "Lease",
    "LedgerMode",
    "Queued",
    "SeatLedger",
    "SeatLimits",
    "Unqueued",
    "Waiter",
]

LedgerMode = Literal["unlicensed", "licensed", "expired"]


@dataclass(slots=True)
class Lease:
    """One client's seat (or, while unlicensed, its unlicensed session)."""

    client: str
    token: str
    generation: int
    licensed: bool
    since: int
    expires_at: int
    app: str = ""
    user: str = ""
    host: str = ""
    pid: int = 0
    revoked: bool = False
    login: str = ""
    #: When its agent was last active (Unix ms, daemon clock); ``None``: the agent does
    #: not report activity, and its seat is never reclaimed as idle.
    active_at: int | None = None
    #: When the idle warning was sent (``None``: not warned since the last activity).
    warned_at: int | None = None
    #: A borrowed seat: ``expires_at`` is the borrow's end, fixed when it was granted.
    borrowed: bool = False


@dataclass(slots=True)
class Waiter:
    """A client waiting for a seat: ``token`` is its queue lease, ``nonce`` its request's."""

    client: str
    token: str
    nonce: str
    generation: int
    since: int
    expires_at: int
    seq: int
    app: str = ""
    user: str = ""
    host: str = ""
    pid: int = 0
    login: str = ""
    reports_activity: bool = False
    #: Its MQTT will came: it keeps its place only if it renews (or asks again) within
    #: the will's grace, as a seat does (a broker restart sends every will).
    orphaned: bool = False


@dataclass(frozen=True, slots=True)
class Queued:
    """Every seat is taken: the client waits, ``ahead`` others before it."""

    waiter: Waiter
    ahead: int
    seats: int
    in_use: int
    fresh: bool


@dataclass(frozen=True, slots=True)
class Unqueued:
    """A waiter that left the queue without a seat, and why."""

    waiter: Waiter
    reason: Literal["cancel", "will", "expiry", "queue_timeout", "license_changed"]


@dataclass(frozen=True, slots=True)
class Granted:
    """A seat was granted; ``fresh`` is false when the client already held one (replaced)."""

    lease: Lease
    fresh: bool


@dataclass(frozen=True, slots=True)
class Denied:
    """No seat, with the reason code and the sentence the client application shows."""

    reason: (
        Literal[
            "seats_exhausted",
            "expired",
            "limit_reached",
            "queue_full",
            "unlicensed",
            "already_borrowed",
            "seat_held",
        ]
        | BorrowRefusal
    )
    message: str
    seats: int
    in_use: int


@dataclass(frozen=True, slots=True)
class SeatLimits:
    """The most licensed seats one broker login, one host or one user may hold (0: no cap).

    The login is vouched for by the broker (it is in the topic the ACL checks); the host
    and user are what the agent says, which caps honest use (FlexNet's MAX) rather than
    stopping a liar: a liar is capped by its login.
    """

    per_login: int = 0
    per_host: int = 0
    per_user: int = 0


@dataclass(slots=True)
class SeatLedger:
    """Leases of the current generation plus revoked ones awaiting release.

    ``leases`` also holds seats borrowed under an earlier generation (still counted).
    """

    mode: LedgerMode
    seats: int
    generation: int
    lease_ms: int
    limits: SeatLimits = field(default_factory=SeatLimits)
    leases: dict[str, Lease] = field(default_factory=dict)
    revoked: dict[str, Lease] = field(default_factory=dict)
    #: The waiters, first in first out (a dict keeps insertion order).
    queue: dict[str, Waiter] = field(default_factory=dict)
    #: The most waiters at once (0: no queue), and the longest wait (0: no limit).
    queue_max: int = 0
    queue_max_wait_ms: int = 0
    #: Idle reclaim: a seat idle this long is revoked (0: never), warned this much before.
    idle_ms: int = 0
    idle_warning_ms: int = 0
    #: What may be borrowed (off by default).
    borrow_rules: BorrowRules = field(default_factory=BorrowRules)
    _promoted: list[tuple[Waiter, Lease]] = field(default_factory=list)
    _unqueued: list[Unqueued] = field(default_factory=list)
    _seq: int = 0
    _now: int = 0
    _licensed_in_use: int = 0
    _borrowed: int = 0
    # Licensed seats held now, by login, host and user: for the limits.
    _held: Counter[tuple[str, str]] = field(default_factory=Counter)
    # (expires_at, client, token): entries go stale when a lease is renewed or
    # released and are skipped when popped, which keeps every operation O(log n).
    _expiry: list[tuple[int, str, str]] = field(default_factory=list)

    @property
    def in_use(self) -> int:
        """Licensed seats held now (borrowed ones included, also those of earlier licenses)."""
        return self._licensed_in_use

    @property
    def borrowed(self) -> int:
        """Seats borrowed now, under this license or an earlier one (in :attr:`in_use` too)."""
        return self._borrowed

    def _add(self, lease: Lease) -> None:
        old = self.leases.get(lease.client)
        if old is not None and old.licensed:
            self._count(old, -1)
        self.leases[lease.client] = lease
        if lease.licensed:
            self._count(lease, +1)
        heapq.heappush(self._expiry, (lease.expires_at, lease.client, lease.token))

    def _drop(self, lease: Lease) -> None:
        if self.leases.get(lease.client) is lease:
            del self.leases[lease.client]
            if lease.licensed:
                self._count(lease, -1)
        elif self.revoked.get(lease.client) is lease:
            del self.revoked[lease.client]

    def _count(self, lease: Lease, delta: int) -> None:
        self._licensed_in_use += delta
        if lease.borrowed:
            self._borrowed += delta
        for key in (("login", lease.login), ("host", lease.host), ("user", lease.user)):
            self._held[key] += delta
            if self._held[key] <= 0:
                del self._held[key]  # names are the agents' own: keep only those in use

    def _over_limit(self, login: str, host: str, user: str) -> Denied | None:
        """The denial if one more seat for this login, host or user would pass a cap."""
        for kind, name, cap in (
            ("login", login, self.limits.per_login),
            ("host", host, self.limits.per_host),
            ("user", user, self.limits.per_user),
        ):
            if cap and self._held[(kind, name)] >= cap:
                return Denied(
                    "limit_reached",
                    f"The {kind} {name!r} already holds {cap} of this server's seats, the "
                    f"most one {kind} may hold. Close the application elsewhere, or ask "
                    "your administrator.",
                    self.seats,
                    self._licensed_in_use,
                )
        return None

    def restore(self, lease: Lease) -> None:
        """Put back a lease read from the database at start.

        A borrowed seat is counted whatever its generation (see :meth:`change_license`).
        """
        if lease.borrowed:
            self._add(lease)
        elif lease.revoked or lease.generation != self.generation:
            lease.revoked = True
            self.revoked[lease.client] = lease
            heapq.heappush(self._expiry, (lease.expires_at, lease.client, lease.token))
        else:
            self._add(lease)

    def request(  # noqa: PLR0913, PLR0911 - the request's fields; one return per outcome
        self,
        client: str,
        now: int,
        *,
        app: str = "",
        user: str = "",
        host: str = "",
        pid: int = 0,
        login: str = "",
        wait: bool = False,
        nonce: str = "",
        active_at: int | None = None,
    ) -> Granted | Denied | Queued:
        """Grant a seat, queue the client (``wait``, every seat taken), or say why not.

        A client that asks again while it holds a seat gets the same seat under a new
        token, never the old one: whoever asks on a client id may not be who asked
        first (an id can be taken over on the broker), so a lease's secret is only ever
        sent once. The old token stops working; a genuine agent told ``seat.lost`` asks
        again. A waiter that asks again keeps its place, under a new token too.
        """
        self._now = max(self._now, now)
        held = self.leases.get(client)
        queued = self.queue.pop(client, None)
        licensed = self.mode == "licensed"  # a held lease is of this generation and mode
        if self._borrowing(client) is not None:
            # Replacing it would leave its token valid on the laptop, counted nowhere.
            return Denied(
                "already_borrowed",
                "This client id holds a borrowed seat; run the application with floatkey-"
                "agent on the computer that borrowed it, or return the seat first.",
                self.seats,
                self._licensed_in_use,
            )
        if held is not None:
            if held.licensed:
                # The same seat, perhaps under another login, host or user: their caps.
                self._count(held, -1)
                over = self._over_limit(login, host, user)
                self._count(held, +1)
                if over is not None:
                    return over
        elif self.mode == "expired":
            return Denied(
                "expired",
                "The license on this server has expired; ask your administrator to enter "
                "a new product key.",
                self.seats,
                self._licensed_in_use,
            )
        elif licensed and (over := self._over_limit(login, host, user)) is not None:
            return over
        elif licensed and self._licensed_in_use >= self.seats:
            if wait and self.queue_max > 0:
                return self._enqueue(
                    client, now, queued, nonce=nonce, app=app, user=user, host=host, pid=pid,
                    login=login, reports_activity=active_at is not None,
                )  # fmt: skip
            return Denied(
                "seats_exhausted",
                f"All {self.seats} seats are in use. Close the application on another "
                "computer, or ask your administrator for more seats.",
                self.seats,
                self._licensed_in_use,
            )
        lease = Lease(
            client=client,
            token=secrets.token_urlsafe(16),
            generation=self.generation,
            licensed=licensed,
            since=now,
            expires_at=now + self.lease_ms,
            app=app,
            user=user,
            host=host,
            pid=pid,
            login=login,
            active_at=active_at,
        )
        # A restarted client may still have a revoked lease from before the unlock.
        self.revoked.pop(client, None)
        self._add(lease)
        if held is not None and licensed:
            # The seat may have moved to another login, host or user: a waiter held back
            # by the old one's cap may go now (collected in take_promoted).
            self.promote(now)
        return Granted(lease, fresh=held is None)

    def _enqueue(  # noqa: PLR0913 - the request's fields
        self,
        client: str,
        now: int,
        queued: Waiter | None,
        *,
        nonce: str,
        app: str,
        user: str,
        host: str,
        pid: int,
        login: str,
        reports_activity: bool,
    ) -> Queued | Denied:
        if queued is None and len(self.queue) >= self.queue_max:
            return Denied(
                "queue_full",
                f"All {self.seats} seats are in use and {len(self.queue)} clients already "
                "wait for one, the most this server lets wait. Try again later, or ask your "
                "administrator for more seats.",
                self.seats,
                self._licensed_in_use,
            )
        if queued is None:
            self._seq += 1
        waiter = Waiter(
            client=client,
            token=secrets.token_urlsafe(16),
            nonce=nonce,
            generation=self.generation,
            since=queued.since if queued else now,
            expires_at=now + self.lease_ms,
            seq=queued.seq if queued else self._seq,
            app=app,
            user=user,
            host=host,
            pid=pid,
            login=login,
            reports_activity=reports_activity,
        )
        self.queue[client] = waiter
        if queued is not None:  # back to its place
            order = sorted(self.queue.values(), key=lambda w: w.seq)
            self.queue = {w.client: w for w in order}
        return Queued(
            waiter, self.ahead(client), self.seats, self._licensed_in_use, fresh=queued is None
        )

    def ahead(self, client: str) -> int:
        """How many waiters are before ``client`` in the queue."""
        for ahead, name in enumerate(self.queue):
            if name == client:
                return ahead
        return 0

    def restore_waiter(self, waiter: Waiter) -> None:
        """Put back a queue entry read from the database at start (in ``seq`` order).

        Skipped when the client also holds a seat. Then call :meth:`promote`: a seat may
        have freed while the daemon was down.
        """
        if (
            waiter.generation != self.generation
            or self.mode != "licensed"
            or waiter.client in self.leases
        ):
            return
        self.queue[waiter.client] = waiter
        self._seq = max(self._seq, waiter.seq)

    def cancel(self, client: str, token: str | None = None) -> Waiter | None:
        """Take ``client`` out of the queue (with a token, only that entry)."""
        waiter = self.queue.get(client)
        if waiter is None or (
            token is not None and not secrets.compare_digest(waiter.token, token)
        ):
            return None
        del self.queue[client]
        return waiter

    def promote(self, now: int) -> None:
        """Grant free seats to the first waiters who may take them (limits permitting)."""
        self._now = max(self._now, now)
        while self.mode == "licensed" and self.queue and self._licensed_in_use < self.seats:
            # A waiter whose will came is passed over while its grace runs: a seat given
            # to a client that may be dead would sit unused for a whole lease. It keeps
            # its place, and is granted once it is back (a renewal or a new request).
            chosen = next(
                (
                    w
                    for w in self.queue.values()
                    if not w.orphaned and not self._over_limit(w.login, w.host, w.user)
                ),
                None,
            )
            if chosen is None:
                return
            del self.queue[chosen.client]
            lease = Lease(
                client=chosen.client,
                token=secrets.token_urlsafe(16),
                generation=self.generation,
                licensed=True,
                since=now,
                expires_at=now + self.lease_ms,
                app=chosen.app,
                user=chosen.user,
                host=chosen.host,
                pid=chosen.pid,
                login=chosen.login,
                active_at=now if chosen.reports_activity else None,
            )
            self.revoked.pop(chosen.client, None)
            self._add(lease)
            self._promoted.append((chosen, lease))

    def take_promoted(self) -> list[tuple[Waiter, Lease]]:
        """The waiters granted a seat since the last call, in order, with their leases."""
        promoted, self._promoted = self._promoted, []
        return promoted

    def take_unqueued(self) -> list[Unqueued]:
        """Waiters that left the queue without a seat since the last call (to be told)."""
        unqueued, self._unqueued = self._unqueued, []
        return unqueued

    def renew(
        self, client: str, token: str, now: int, active_at: int | None = None
    ) -> Lease | Waiter | None:
        """Extend a lease or a queue entry; ``None`` when unknown (the agent asks again).

        ``active_at``: the agent's last activity, which ends an idle warning unless it is
        itself within the warning's time.
        """
        self._now = max(self._now, now)
        waiter = self.queue.get(client)
        if waiter is not None and secrets.compare_digest(waiter.token, token):
            waiter.expires_at = now + self.lease_ms
            waiter.orphaned = False
            return waiter
        lease = self.leases.get(client)
        if lease is None or lease.borrowed or not secrets.compare_digest(lease.token, token):
            return None  # a borrowed seat lasts to its fixed end, never longer
        lease.expires_at = now + self.lease_ms
        heapq.heappush(self._expiry, (lease.expires_at, client, token))
        if active_at is not None:
            # Set even when unknown: the leases table does not keep it across a restart.
            lease.active_at = max(lease.active_at or 0, min(active_at, now))
            if lease.warned_at is not None and now < self._warn_at(lease):
                lease.warned_at = None
        return lease

    def release(
        self, client: str, token: str | None = None, now: int | None = None
    ) -> Lease | None:
        """Free ``client``'s seat (current or revoked). With a token, only that lease.

        The seat goes to the first waiter at once (at ``now``, or the latest time seen).
        """
        lease = self.leases.get(client) or self.revoked.get(client)
        if lease is None or (token is not None and not secrets.compare_digest(lease.token, token)):
            return None
        self._drop(lease)
        self.promote(self._now if now is None else now)
        return lease

    def orphan(self, client: str, now: int, grace_ms: int) -> Lease | None:
        """The client's MQTT will says it is gone: keep the seat ``grace_ms`` more.

        A broker that shuts down (Mosquitto does this) publishes the will of every
        client still connected; when the agent renews within the grace, it keeps its
        seat. A revoked lease holds no seat and goes at once. Returns the lease freed
        at once, if any.
        """
        lease = self.leases.get(client)
        if lease is None:
            revoked = self.revoked.get(client)
            if revoked is not None and not revoked.borrowed:
                self._drop(revoked)
                return revoked
            return None
        if lease.borrowed:
            return None  # the borrowing connection's will: the borrow goes on offline
        deadline = now + grace_ms
        if deadline < lease.expires_at:
            lease.expires_at = deadline
            heapq.heappush(self._expiry, (deadline, client, lease.token))
        return None

    def orphan_waiter(self, client: str, now: int, grace_ms: int) -> Waiter | None:
        """The waiter's MQTT will came: it keeps its place ``grace_ms`` more (as :meth:`orphan`)."""
        waiter = self.queue.get(client)
        if waiter is None:
            return None
        waiter.orphaned = True
        waiter.expires_at = min(waiter.expires_at, now + grace_ms)
        return waiter

    def extend_all(self, delta_ms: int) -> list[Lease]:
        """Push every lease's end ``delta_ms`` later; return them (to be persisted)."""
        # A borrow's end is in the token its agent holds: an outage does not move it.
        every = [
            lease for lease in (*self.leases.values(), *self.revoked.values()) if not lease.borrowed
        ]
        for lease in every:
            lease.expires_at += delta_ms
            # Nobody could report activity meanwhile: the outage is not idleness.
            if lease.active_at is not None:
                lease.active_at += delta_ms
            if lease.warned_at is not None:
                lease.warned_at += delta_ms
            heapq.heappush(self._expiry, (lease.expires_at, lease.client, lease.token))
        for waiter in self.queue.values():
            waiter.expires_at += delta_ms
        return every

    def expire(self, now: int) -> list[Lease]:
        """Drop and return every lease whose time is up; drop waiters whose time is up.

        The waiters go to :meth:`take_unqueued` (``expiry``: not renewed;
        ``queue_timeout``: waited ``queue_max_wait_ms``); freed seats to the next waiters.
        """
        self._now = max(self._now, now)
        gone: list[Lease] = []
        while self._expiry and self._expiry[0][0] <= now:
            expires_at, client, token = heapq.heappop(self._expiry)
            lease = self.leases.get(client) or self.revoked.get(client)
            if lease is not None and lease.token == token and lease.expires_at == expires_at:
                self._drop(lease)
                gone.append(lease)
        for waiter in list(self.queue.values()):
            if waiter.expires_at <= now:
                del self.queue[waiter.client]
                self._unqueued.append(Unqueued(waiter, "will" if waiter.orphaned else "expiry"))
            elif self.queue_max_wait_ms and waiter.since + self.queue_max_wait_ms <= now:
                del self.queue[waiter.client]
                self._unqueued.append(Unqueued(waiter, "queue_timeout"))
        self.promote(now)
        return gone

    def next_expiry(self) -> int | None:
        """When the next lease or queue entry may expire (Unix ms), to sleep until then."""
        ends = [w.expires_at for w in self.queue.values()]
        if self.queue_max_wait_ms:
            ends += [w.since + self.queue_max_wait_ms for w in self.queue.values()]
        while self._expiry:
            expires_at, client, token = self._expiry[0]
            lease = self.leases.get(client) or self.revoked.get(client)
            if lease is not None and lease.token == token and lease.expires_at == expires_at:
                ends.append(expires_at)
                break
            heapq.heappop(self._expiry)
        return min(ends, default=None)

    # --- idle seats -------------------------------------------------------------------

    def _warn_at(self, lease: Lease) -> int:
        assert lease.active_at is not None
        return lease.active_at + self.idle_ms - self.idle_warning_ms

    def _idle_leases(self) -> list[Lease]:
        if not self.idle_ms:
            return []
        return [
            lease
            for lease in self.leases.values()
            if lease.licensed and lease.active_at is not None
        ]

    def idle(self, now: int) -> tuple[list[Lease], list[Lease]]:
        """Warn the seats idle for ``idle_ms - idle_warning_ms``; reclaim those idle ``idle_ms``.

        Returns ``(warned, reclaimed)``; a reclaimed seat goes to the next waiter.
        """
        self._now = max(self._now, now)
        warned: list[Lease] = []
        reclaimed: list[Lease] = []
        for lease in self._idle_leases():
            if lease.warned_at is None:
                # Never reclaimed unwarned, even when this check comes late: warned now,
                # reclaimed no earlier than idle_warning_ms from now.
                if now >= self._warn_at(lease):
                    lease.warned_at = now
                    warned.append(lease)
            elif now >= self.reclaim_at(lease):
                self._drop(lease)
                reclaimed.append(lease)
        if reclaimed:
            self.promote(now)
        return warned, reclaimed

    def reclaim_at(self, lease: Lease) -> int:
        """When an idle ``lease`` will be reclaimed (Unix ms).

        ``idle_ms`` after its last activity, and never less than ``idle_warning_ms``
        after its warning (with no warning time: at the check after the warning).
        """
        assert lease.active_at is not None
        end = lease.active_at + self.idle_ms
        if lease.warned_at is not None:
            end = max(end, lease.warned_at + self.idle_warning_ms)
        return end

    def next_idle(self) -> int | None:
        """When :meth:`idle` next has something to do (Unix ms), or ``None``."""
        return min(
            (
                self.reclaim_at(lease) if lease.warned_at is not None else self._warn_at(lease)
                for lease in self._idle_leases()
            ),
            default=None,
        )

    # --- borrowed seats ---------------------------------------------------------------

    def _borrow_refused(self, duration_ms: int, login: str, host: str, user: str) -> Denied | None:
        """The rules, caps and seats that refuse a borrow."""
        refusal = self.borrow_rules.refusal(duration_ms, self._borrowed, self.seats)
        if refusal is not None:
            return Denied(*refusal, self.seats, self._licensed_in_use)
        over = self._over_limit(login, host, user)
        if over is None and self._licensed_in_use >= self.seats:
            over = Denied(
                "seats_exhausted",
                f"All {self.seats} seats are in use; none is free to borrow. Try again "
                "later, or ask your administrator for more seats.",
                self.seats,
                self._licensed_in_use,
            )
        return over

    def _borrowing(self, client: str) -> Lease | None:
        """``client``'s borrowed seat (of this license, or revoked by a new one), if any."""
        lease = self.leases.get(client) or self.revoked.get(client)
        return lease if lease is not None and lease.borrowed else None

    def borrow(  # noqa: PLR0913 - the request's fields
        self,
        client: str,
        now: int,
        duration_ms: int,
        *,
        until: int | None = None,
        app: str = "",
        user: str = "",
        host: str = "",
        login: str = "",
    ) -> Granted | Denied:
        """Lend a seat until ``now + duration_ms`` (never past ``until``), or say why not.

        ``until``: when the license expires, if it is dated: a borrow never outlasts the
        license it was lent under. A client id that holds a seat or waits for one is
        refused (``seat_held``): a borrow has a client id of its own. A borrowed seat is
        counted until :meth:`release` (its return) or :meth:`expire` at its end.
        """
        self._now = max(self._now, now)

        def denied(
            reason: BorrowRefusal | Literal["expired", "unlicensed", "seat_held"], why: str
        ) -> Denied:
            return Denied(reason, why, self.seats, self._licensed_in_use)

        if self._borrowing(client) is not None:
            return Denied(
                "already_borrowed",
                "This computer has borrowed a seat from this server already; return it "
                "first (floatkey-agent return) to borrow again.",
                self.seats,
                self._licensed_in_use,
            )
        if self.mode == "expired":
            return denied(
                "expired",
                "The license on this server has expired; there is no seat to borrow.",
            )
        if self.mode != "licensed":
            return denied(
                "unlicensed",
                "This license server has no license yet; there is no seat to borrow.",
            )
        if client in self.leases or client in self.queue:
            return denied(
                "seat_held",
                "This client id holds a seat on the network (or waits for one); a borrowed "
                "seat is asked for with floatkey-agent borrow, under a client id of its own.",
            )
        over = self._borrow_refused(duration_ms, login, host, user)
        if over is not None:
            return over
        end = now + duration_ms if until is None else min(now + duration_ms, until)
        lease = Lease(
            client=client,
            token=secrets.token_urlsafe(16),
            generation=self.generation,
            licensed=True,
            since=now,
            expires_at=end,
            app=app,
            user=user,
            host=host,
            login=login,
            borrowed=True,
        )
        self.revoked.pop(client, None)
        self._add(lease)
        return Granted(lease, fresh=True)

    def awaiting_release(self, generation: int) -> int:
        """Revoked leases of ``generation`` still held by their agents.

        After an unlock to generation ``g`` these are the clients told to shut down that
        have not yet gone; leases revoked by earlier changes are not counted.
        """
        return sum(
            1
            for lease in self.revoked.values()
            if lease.generation == generation and not lease.borrowed
        )

    def change_license(self, mode: LedgerMode, seats: int, generation: int) -> list[Lease]:
        """Switch to a new license generation; revoke and return every current lease.

        Borrowed seats are not revoked: their laptops run on under their tokens, so they
        stay counted (in :attr:`in_use` and :attr:`borrowed`) until they end, are
        returned, or their laptop learns of the change (the borrow desk then ends them).
        """
        lent = {c: lease for c, lease in self.leases.items() if lease.borrowed}
        revoked = [lease for lease in self.leases.values() if not lease.borrowed]
        for lease in revoked:
            lease.revoked = True
            self.revoked[lease.client] = lease
        self.leases = lent
        self._licensed_in_use = 0
        self._borrowed = 0
        self._held.clear()
        for lease in lent.values():
            self._count(lease, +1)
        # The waiters ask again under the new license (told through take_unqueued).
        self._unqueued += [Unqueued(w, "license_changed") for w in self.queue.values()]
        self.queue.clear()
        self.mode, self.seats, self.generation = mode, seats, generation
        return revoked
