"""The seat ledger: who holds a seat, under which license generation, until when.

Pure and synchronous: the daemon feeds it requests and the clock, and persists what it
decides. The one invariant it exists for: never more licensed leases than seats.

A lease belongs to one generation of the license. Activating a new license revokes
every lease of the old one: revoked leases hold no seat, and wait in ``revoked`` until
their agent releases them (or they expire), so an administrator can watch the old
clients go.
"""

from __future__ import annotations

import heapq
import secrets
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["Denied", "Granted", "Lease", "LedgerMode", "SeatLedger", "SeatLimits"]

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


@dataclass(frozen=True, slots=True)
class Granted:
    """A seat was granted; ``fresh`` is false when the client already held one (replaced)."""

    lease: Lease
    fresh: bool


@dataclass(frozen=True, slots=True)
class Denied:
    """No seat, with the reason code and the sentence the client application shows."""

    reason: Literal["seats_exhausted", "expired", "limit_reached"]
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
    """Leases of the current generation plus revoked ones awaiting release."""

    mode: LedgerMode
    seats: int
    generation: int
    lease_ms: int
    limits: SeatLimits = field(default_factory=SeatLimits)
    leases: dict[str, Lease] = field(default_factory=dict)
    revoked: dict[str, Lease] = field(default_factory=dict)
    _licensed_in_use: int = 0
    # Licensed seats held now, by login, host and user: for the limits.
    _held: Counter[tuple[str, str]] = field(default_factory=Counter)
    # (expires_at, client, token): entries go stale when a lease is renewed or
    # released and are skipped when popped, which keeps every operation O(log n).
    _expiry: list[tuple[int, str, str]] = field(default_factory=list)

    @property
    def in_use(self) -> int:
        """Licensed seats held under the current generation."""
        return self._licensed_in_use

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
        """Put back a lease read from the database at start."""
        if lease.revoked or lease.generation != self.generation:
            lease.revoked = True
            self.revoked[lease.client] = lease
            heapq.heappush(self._expiry, (lease.expires_at, lease.client, lease.token))
        else:
            self._add(lease)

    def request(  # noqa: PLR0913 - the request's fields, as the wire carries them
        self,
        client: str,
        now: int,
        *,
        app: str = "",
        user: str = "",
        host: str = "",
        pid: int = 0,
        login: str = "",
    ) -> Granted | Denied:
        """Grant a seat, or say why not.

        A client that asks again while it holds a seat gets the same seat under a new
        token, never the old one: whoever asks on a client id may not be who asked
        first (an id can be taken over on the broker), so a lease's secret is only ever
        sent once. The old token stops working; a genuine agent told ``seat.lost`` asks
        again.
        """
        held = self.leases.get(client)
        licensed = self.mode == "licensed"  # a held lease is of this generation and mode
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
        )
        # A restarted client may still have a revoked lease from before the unlock.
        self.revoked.pop(client, None)
        self._add(lease)
        return Granted(lease, fresh=held is None)

    def renew(self, client: str, token: str, now: int) -> Lease | None:
        """Extend a lease; ``None`` when the daemon does not hold it (it must ask again)."""
        lease = self.leases.get(client)
        if lease is None or not secrets.compare_digest(lease.token, token):
            return None
        lease.expires_at = now + self.lease_ms
        heapq.heappush(self._expiry, (lease.expires_at, client, token))
        return lease

    def release(self, client: str, token: str | None = None) -> Lease | None:
        """Free ``client``'s seat (current or revoked). With a token, only that lease."""
        lease = self.leases.get(client) or self.revoked.get(client)
        if lease is None or (token is not None and not secrets.compare_digest(lease.token, token)):
            return None
        self._drop(lease)
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
            if revoked is not None:
                self._drop(revoked)
            return revoked
        deadline = now + grace_ms
        if deadline < lease.expires_at:
            lease.expires_at = deadline
            heapq.heappush(self._expiry, (deadline, client, lease.token))
        return None

    def extend_all(self, delta_ms: int) -> list[Lease]:
        """Push every lease's end ``delta_ms`` later; return them (to be persisted)."""
        every = [*self.leases.values(), *self.revoked.values()]
        for lease in every:
            lease.expires_at += delta_ms
            heapq.heappush(self._expiry, (lease.expires_at, lease.client, lease.token))
        return every

    def expire(self, now: int) -> list[Lease]:
        """Drop and return every lease whose time is up."""
        gone: list[Lease] = []
        while self._expiry and self._expiry[0][0] <= now:
            expires_at, client, token = heapq.heappop(self._expiry)
            lease = self.leases.get(client) or self.revoked.get(client)
            if lease is not None and lease.token == token and lease.expires_at == expires_at:
                self._drop(lease)
                gone.append(lease)
        return gone

    def next_expiry(self) -> int | None:
        """When the next lease may expire (Unix ms), to sleep until then."""
        while self._expiry:
            expires_at, client, token = self._expiry[0]
            lease = self.leases.get(client) or self.revoked.get(client)
            if lease is not None and lease.token == token and lease.expires_at == expires_at:
                return expires_at
            heapq.heappop(self._expiry)
        return None

    def awaiting_release(self, generation: int) -> int:
        """Revoked leases of ``generation`` still held by their agents.

        After an unlock to generation ``g`` these are the clients told to shut down that
        have not yet gone; leases revoked by earlier changes are not counted.
        """
        return sum(1 for lease in self.revoked.values() if lease.generation == generation)

    def change_license(self, mode: LedgerMode, seats: int, generation: int) -> list[Lease]:
        """Switch to a new license generation; revoke and return every current lease."""
        revoked = list(self.leases.values())
        for lease in revoked:
            lease.revoked = True
            self.revoked[lease.client] = lease
        self.leases.clear()
        self._licensed_in_use = 0
        self._held.clear()
        self.mode, self.seats, self.generation = mode, seats, generation
        return revoked
