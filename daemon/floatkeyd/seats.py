"""The seat desk: seat messages in, decisions of the pure :class:`SeatLedger` out.

It decodes and checks every seat message (size, shape, the client id in the topic,
rate), asks the ledger, stages what changed for the database (the lease, and the usage
event that records the decision: ``floatkeyd.usage``), and queues the signed reply.
Two loops belong to it, each one step at a time (the daemon runs them and survives a
step that fails):

- :meth:`SeatDesk.expire_step` sleeps until the next lease runs out, then frees it;
- :meth:`SeatDesk.flush_step` writes staged lease changes, one transaction per burst,
  with the usage events staged since (denials too, which change no lease);
- :meth:`SeatDesk.idle_step` warns idle seats and reclaims them (``idle_timeout``);
- :meth:`SeatDesk.queue_step` tells waiters their new place in the queue (at most
  twice a second each).

A seat that frees goes to the first waiter at once, in the same step that freed it
(:meth:`SeatDesk._settle`): no loop or poll stands between a release and the grant.

While the broker is unreachable nobody can renew, so no lease expires then, and the
time it was away is given back to every lease when it returns.

A renewal is not written to the database (at 50,000 agents that was 1,250 rows a second
for one changed column). Instead the database holds a bound, ``renewals_before_ms``:
written one renewal interval ahead at start, before serving, and moved one interval ahead
of a renewal whenever one comes within half an interval of it (so it is committed before
it is needed). A renewal is answered at once when the committed bound covers it; else (a
commit stalled) its reply waits for the next commit. At start a lease row flagged
"renewed since written" ends no earlier than one lease after that bound (or the start,
whichever is earlier): :func:`restored_lease_end`; rows so extended are written back at
once with that end and the flag cleared, and a lease's first renewal after the start
rewrites its row flagged again (its reply, too, waits for that commit): one write per
lease per start, none per renewal. A will's grace is written the same way, unflagged. A
clean stop writes every lease as it is (:meth:`SeatDesk.write_back`). What a crash may
cost: a seat whose agent stopped renewing before it (its lease still running) is held up
to one lease and one renewal interval longer than it would have been, once, not again at
each later start; a renewal whose reply went out is never lost while the database writes
(held replies are sent after a failed flush: a failing disk must not stop every agent's
application). A grant whose row was not yet written is lost (its agent is told
``seat.lost`` and asks again).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
import time
from collections import Counter, OrderedDict, deque
from typing import TYPE_CHECKING, cast

import msgspec
import structlog

from floatkey import protocol
from floatkey.protocol import (
    ClientRow,
    DenialRow,
    QueueRow,
    SeatCancel,
    SeatDenied,
    SeatGranted,
    SeatIdleWarning,
    SeatLost,
    SeatQueued,
    SeatRelease,
    SeatRenew,
    SeatRenewed,
    SeatRequest,
    SeatRevoked,
    StateRequest,
)
from floatkeyd import usage
from floatkeyd.ledger import Denied, Granted, Queued, SeatLimits, Waiter
from floatkeyd.store import AuditEntry
from floatkeyd.usage import DENIAL_ROWS_PER_MINUTE, DenialFilter, Who

if TYPE_CHECKING:
    from collections.abc import Callable

    from floatkey.envelope import Signer
    from floatkey.protocol import SeatDeniedReason
    from floatkeyd.authority import LicenseAuthority
    from floatkeyd.clock import Clock
    from floatkeyd.config import DaemonConfig, Limits
    from floatkeyd.drops import Drops
    from floatkeyd.ledger import Lease, SeatLedger
    from floatkeyd.link import Link
    from floatkeyd.store import Store

__all__ = ["SeatDesk", "seat_limits"]

log = structlog.get_logger("floatkeyd")

_FLUSH_DELAY = 0.05
_DENIALS_KEPT = 100
_LOST_KEPT = 10_000  # clients told seat.lost, to record their next grant as regained
_STORE_RETRY_S = 1.0  # after a failed database write (disk full, locked)
_POSITION_EVERY_S = 0.5  # position updates to one waiter, at most this often

_BODY_OF: dict[str, type[SeatRequest | SeatRenew | SeatRelease | SeatCancel]] = {
    "request": SeatRequest,
    "renew": SeatRenew,
    "cancel": SeatCancel,
    "release": SeatRelease,
}
_UNQUEUED_MESSAGES = {
    "queue_timeout": "You waited {waited} for a seat, the longest this server lets "
    "a client wait. Try again later, or ask your administrator for more seats.",
    "license_changed": "A new license was activated while you waited; asking again under it.",
    "license_expired": "The license on this server expired while you waited; asking again.",
}


def _duration(seconds: float) -> str:
    """``seconds`` as a customer reads it: "1 minute", "5 minutes", "90 seconds"."""
    whole = max(round(seconds), 1)
    if whole >= 120 or (whole >= 60 and whole % 60 == 0):
        minutes = round(whole / 60)
        return "1 minute" if minutes == 1 else f"{minutes} minutes"
    return "1 second" if whole == 1 else f"{whole} seconds"


def restored_lease_end(expires_at: int, renewals_before: int, now: int, lease_ms: int) -> int:
    """When a lease read from the database at start ends.

    ``expires_at`` is as last written; an unwritten renewal (see the module docstring) was
    no later than ``renewals_before`` nor than ``now`` (the start), so the lease it
    renewed lasts at most ``lease_ms`` after the earlier of them. 0: none is unwritten.
    """
    if not renewals_before:
        return expires_at
    return max(expires_at, min(renewals_before, now) + lease_ms)


def seat_limits(limits: Limits) -> SeatLimits:
    """The ledger's caps from the config's ``[limits]``."""
    return SeatLimits(
        per_login=limits.seats_per_login,
        per_host=limits.seats_per_host,
        per_user=limits.seats_per_user,
    )


class SeatDesk:
    """Seat requests, renewals, releases and wills; lease expiry and persistence."""

    def __init__(  # noqa: PLR0913 - wired once by the daemon's factory
        self,
        *,
        config: DaemonConfig,
        topics: protocol.Topics,
        ledger: SeatLedger,
        store: Store,
        clock: Clock,
        authority: LicenseAuthority,
        signer: Signer,
        link: Link,
        drops: Drops,
        answer_state: Callable[[StateRequest], None] = lambda _request: None,
    ) -> None:
        self._lease_s = config.lease_seconds
        self._answer_state = answer_state
        self._renew_ms = config.lease_seconds * 1000 // 3
        # The bound on unwritten renewals staged last (0: every lease is written as is).
        self._renewals_before = 0
        # Clients whose committed lease row says "not renewed since written" (extended at
        # this start): the first renewal of each rewrites it, flagged renewed.
        self._unflagged: set[str] = set()
        # Clients whose lease row is staged flagged renewed but not yet committed (taken
        # off by the store once a flush commits it, whichever flush that is).
        self._flagging: set[str] = set()
        self._will_grace_ms = config.will_grace_seconds * 1000
        self._max_rate = config.max_requests_per_client
        self._topics = topics
        self._reply_prefix = topics.client("")
        self.ledger = ledger
        self._store = store
        self._clock = clock
        self._authority = authority
        self._signer = signer
        self._link = link
        self._drops = drops
        self._staged = asyncio.Event()
        self._expiry_moved = asyncio.Event()
        self._broker_back = asyncio.Event()
        self._broker_back.set()
        self._offline_since: int | None = None
        self._rate_window = 0
        self._rate_counts: Counter[str] = Counter()
        #: The latest seat denials, for ``floatkeyctl clients`` (bounded).
        self.denials: deque[DenialRow] = deque(maxlen=_DENIALS_KEPT)
        #: Since start, for the metrics: seats granted (``licensed``/``unlicensed``/
        #: ``borrowed``), denied by reason (written only through :meth:`count_grant` and
        #: :meth:`count_denial`), and leases that ran out unrenewed. A counter each, no more:
        #: a renewal costs nothing here.
        self.granted: Counter[str] = Counter()
        self.denied: Counter[str] = Counter()
        self.leases_expired = 0
        self._usage = store.usage_log
        self._denial_rows = DenialFilter()
        self._flood_minute = -1
        # Clients told seat.lost (their next grant is "renewed after loss"), and clients
        # whose will came (their lease's end is "released by its will").
        self._lost: OrderedDict[str, None] = OrderedDict()
        # Waiters just granted a seat, by client: (queue lease, seat lease), until the
        # agent renews the seat. A cancel sent before the grant arrived frees the seat.
        self._promoted_from: OrderedDict[str, tuple[str, str]] = OrderedDict()
        self._willed: set[str] = set()
        # The queue: the place each waiter was last told, and whether places moved.
        self._told_ahead: dict[str, int] = {}
        self._queue_moved = asyncio.Event()
        self._idle_moved = asyncio.Event()
        self._queue_wait_ms = config.queue_max_wait_seconds * 1000
        authority.on_change.append(self._license_changed)

    # --- inbound ------------------------------------------------------------------

    def handle(self, login: str, client_id: str, action: str, payload: bytes) -> None:
        """One message on ``seats/{login}/{client_id}/{action}``; dropped if bad."""
        body = self._decode(action, payload, login, client_id)
        if body is None:
            return
        if body.client != client_id:
            self._drops(
                "client_mismatch", self._inbound(login, client_id, action), claimed=body.client
            )
            return
        if self.rate_limited(client_id):
            self._drops("rate_limited", self._inbound(login, client_id, action))
            return
        if isinstance(body, StateRequest):
            self._answer_state(body)
            return
        now = self._clock.now()
        if not isinstance(body, SeatRequest) and not self.same_login(client_id, login):
            # A client id taken over under another login (its will, say) must not touch
            # the seat its owner holds; the owner's own login is in its lease.
            self._drops("login_mismatch", self._inbound(login, client_id, action))
            return
        if isinstance(body, SeatRequest):
            self._request(body, login, now)
        elif isinstance(body, SeatRenew):
            self._renew(body, now)
        elif isinstance(body, SeatCancel):
            self._cancel(body, now)
        elif body.lease is None:
            self._will(client_id, now)
        else:
            self._release(body, now, login)

    def _inbound(self, login: str, client_id: str, action: str) -> str:
        """The topic a message came on, for the drop log (built only for a drop)."""
        return f"{self._topics.root}/seats/{login}/{client_id}/{action}"

    def _decode(
        self, action: str, payload: bytes, login: str, client_id: str
    ) -> SeatRequest | SeatRenew | SeatRelease | SeatCancel | StateRequest | None:
        try:
            if action == "request":
                # A state.request shares the request topic: no new topic for the ACL.
                return protocol.decode_seat_request(payload)
            return protocol.decode(payload, _BODY_OF.get(action, SeatRelease))
        except msgspec.DecodeError as exc:
            self._drops("bad_body", self._inbound(login, client_id, action), error=exc)
            return None

    def same_login(self, client_id: str, login: str) -> bool:
        """Whether ``login`` may touch what ``client_id`` holds (its own login's)."""
        lease = self.ledger.leases.get(client_id) or self.ledger.revoked.get(client_id)
        waiter = self.ledger.queue.get(client_id)
        # Leases from before logins were recorded carry none.
        return (lease is None or lease.login in {"", login}) and (
            waiter is None or waiter.login == login
        )

    def count_grant(self, kind: str) -> None:
        """One more seat granted of ``kind`` (``licensed``, ``unlicensed``, ``borrowed``)."""
        self.granted[kind] += 1

    def count_denial(self, row: DenialRow) -> None:
        """One more denial, for the metrics and ``floatkeyctl clients``."""
        self.denied[row.reason] += 1
        self.denials.append(row)

    def settle(self, now: int) -> None:
        """A seat freed outside this desk (a borrow returned): grants to waiters go out."""
        self.ledger.promote(now)
        self._settle(now)

    def rate_limited(self, client_id: str) -> bool:
        """Count one message of ``client_id``; whether it is over the rate (to be dropped)."""
        window = int(time.monotonic())
        if window != self._rate_window:
            self._rate_window, self._rate_counts = window, Counter()
        self._rate_counts[client_id] += 1
        return self._rate_counts[client_id] > self._max_rate

    def _request(self, body: SeatRequest, login: str, now: int) -> None:
        held = self.ledger.leases.get(body.client)
        was_waiting = self.ledger.queue.get(body.client)
        decision = self.ledger.request(
            body.client,
            now,
            app=body.app[:128],
            user=body.user[:128],
            host=body.host[:256],
            pid=body.pid,
            login=login,
            wait=body.wait,
            nonce=body.nonce,
            active_at=None if body.idle_ms is None else now - body.idle_ms,
        )
        if was_waiting is not None and body.client not in self.ledger.queue:
            # It asked again without waiting: out of the queue, whatever the answer.
            self._store.stage_unqueue(body.client)
            reason = "granted" if isinstance(decision, Granted) else "cancel"
            self._usage.stage(usage.unqueued(was_waiting, now, reason))
            self._told_ahead.pop(body.client, None)
            self._queue_moved.set()
        if isinstance(decision, Queued):
            self._queued(decision, now)
            return
        if isinstance(decision, Denied):
            log.info(
                "seat denied",
                client=body.client,
                login=login,
                reason=decision.reason,
                in_use=decision.in_use,
                seats=decision.seats,
            )
            self.count_denial(
                DenialRow(
                    at=now,
                    client=body.client,
                    login=login,
                    app=body.app[:128],
                    user=body.user[:128],
                    host=body.host[:256],
                    reason=decision.reason,
                )
            )
            self._record_denial(body, login, decision.reason, now)
            self.reply(
                body.client,
                SeatDenied(
                    nonce=body.nonce,
                    # request() never answers with a borrow rule's refusal.
                    reason=cast("SeatDeniedReason", decision.reason),
                    message=decision.message,
                    seats=decision.seats,
                    in_use=decision.in_use,
                ),
            )
            return
        self._grant(decision.lease, body.nonce, held, now, fresh=decision.fresh)
        if not decision.fresh:
            self._settle(now)  # a seat asked for again under another login may free a cap
        if decision.lease.active_at is not None:
            self._idle_moved.set()

    def _grant(
        self, lease: Lease, nonce: str, held: Lease | None, now: int, *, fresh: bool
    ) -> None:
        self._stage(lease)
        self.count_grant("licensed" if lease.licensed else "unlicensed")
        self._record_grant(lease, held, now, fresh=fresh)
        if fresh:
            log.info(
                "seat granted",
                client=lease.client,
                login=lease.login,
                app=lease.app,
                user=lease.user,
                host=lease.host,
                licensed=lease.licensed,
                generation=lease.generation,
                in_use=self.ledger.in_use,
            )
        self.reply(
            lease.client,
            SeatGranted(
                nonce=nonce,
                lease=lease.token,
                generation=lease.generation,
                licensed=lease.licensed,
                features=self._authority.features if lease.licensed else [],
                expires_at=lease.expires_at,
                renew_after_s=self._lease_s / 3,
            ),
        )

    # --- the queue ----------------------------------------------------------------

    def _queued(self, decision: Queued, now: int) -> None:
        waiter = decision.waiter
        self._store.stage_waiter(waiter)
        self._staged.set()
        self._expiry_moved.set()  # its queue lease (and maximum wait) runs out too
        if decision.fresh:
            self._usage.stage(usage.queued(waiter, now))
            log.info(
                "client queued",
                client=waiter.client,
                login=waiter.login,
                app=waiter.app,
                position=decision.ahead + 1,
                in_use=decision.in_use,
                seats=decision.seats,
            )
        self._tell_place(waiter, decision.ahead)

    def _tell_place(self, waiter: Waiter, ahead: int) -> None:
        self._told_ahead[waiter.client] = ahead
        self.reply(
            waiter.client,
            SeatQueued(
                nonce=waiter.nonce,
                lease=waiter.token,
                position=ahead + 1,
                ahead=ahead,
                seats=self.ledger.seats,
                in_use=self.ledger.in_use,
                expires_at=waiter.expires_at,
                renew_after_s=self._lease_s / 3,
            ),
        )

    def _cancel(self, body: SeatCancel, now: int) -> None:
        waiter = self.ledger.cancel(body.client, body.lease)
        if waiter is not None:
            self._unqueued(waiter, now, "cancel")
            return
        promoted = self._promoted_from.get(body.client)
        if promoted is not None and promoted[0] == body.lease:
            # The agent gave up waiting before our grant reached it: the seat it will
            # never use goes back (to the next waiter).
            del self._promoted_from[body.client]
            self._release(SeatRelease(client=body.client, lease=promoted[1]), now, "")

    def _unqueued(self, waiter: Waiter, now: int, reason: str) -> None:
        """``waiter`` left the queue without a seat: stored, recorded, places moved."""
        self._store.stage_unqueue(waiter.client)
        self._staged.set()
        self._usage.stage(usage.unqueued(waiter, now, reason))
        self._told_ahead.pop(waiter.client, None)
        self._queue_moved.set()
        log.info("client left the queue", client=waiter.client, reason=reason)

    def _settle(self, now: int) -> None:
        """Send the grants the ledger gave waiters, and tell those it dropped why.

        Called in the same step as whatever freed a seat, so the grant goes out with
        no delay but the broker's.
        """
        for waiter, lease in self.ledger.take_promoted():
            self._promoted_from[waiter.client] = (waiter.token, lease.token)
            self._promoted_from.move_to_end(waiter.client)
            if len(self._promoted_from) > _LOST_KEPT:
                self._promoted_from.popitem(last=False)
            self._store.stage_unqueue(waiter.client)
            self._usage.stage(usage.unqueued(waiter, now, "granted"))
            self._told_ahead.pop(waiter.client, None)
            self._grant(lease, waiter.nonce, None, now, fresh=True)
            self._queue_moved.set()
            if lease.active_at is not None:
                self._idle_moved.set()
        for gone in self.ledger.take_unqueued():
            self._unqueued(gone.waiter, now, gone.reason)
            if gone.reason == "queue_timeout":
                denial = protocol.SeatDenied(
                    nonce=gone.waiter.nonce,
                    reason="queue_timeout",
                    message=_UNQUEUED_MESSAGES["queue_timeout"].format(
                        waited=_duration(self._queue_wait_ms / 1000)
                    ),
                    seats=self.ledger.seats,
                    in_use=self.ledger.in_use,
                )
            elif gone.reason == "license_changed":
                denial = protocol.SeatDenied(
                    nonce=gone.waiter.nonce,
                    reason="license_changed",
                    message=_UNQUEUED_MESSAGES[
                        "license_expired" if self.ledger.mode == "expired" else "license_changed"
                    ],
                    seats=self.ledger.seats,
                    in_use=self.ledger.in_use,
                )
            else:
                continue  # an entry not renewed: its agent is gone
            self.denied[gone.reason] += 1
            self.reply(gone.waiter.client, denial)

    def settle_restored(self) -> None:
        """At the first connection: seats freed while the daemon was down go to waiters.

        Not before: a grant sent without a broker is dropped. Leases and queue entries
        that ran out meanwhile are expired first, so no lapsed waiter is granted.
        """
        now = self._clock.now()
        self._expire(now)
        self.ledger.promote(now)
        self._settle(now)

    def _license_changed(self) -> None:
        """A new license cleared the queue: each waiter is told, and asks again."""
        self._settle(self._clock.now())

    async def queue_step(self) -> None:
        """Tell each waiter whose place changed its new place (bounded in rate)."""
        await self._queue_moved.wait()
        await asyncio.sleep(_POSITION_EVERY_S)
        self._queue_moved.clear()
        for ahead, waiter in enumerate(list(self.ledger.queue.values())):
            if self._told_ahead.get(waiter.client) != ahead:
                self._tell_place(waiter, ahead)

    def _record_denial(self, body: SeatRequest, login: str, reason: str, now: int) -> None:
        """A denial becomes a usage event, unless it repeats one (DenialFilter)."""
        unrecorded = self._denial_rows.unrecorded
        if not self._denial_rows.admit(body.client, reason, now):
            if self._denial_rows.unrecorded > unrecorded and now // 60_000 != self._flood_minute:
                self._flood_minute = now // 60_000
                log.warning(
                    "seat denials not recorded in the usage history: too many this minute",
                    per_minute=DENIAL_ROWS_PER_MINUTE,
                    unrecorded_since_start=self._denial_rows.unrecorded,
                )
            return
        who = Who(body.app[:128], body.user[:128], body.host[:256])
        self._usage.stage(
            usage.denied(
                body.client,
                now,
                login=login,
                who=who,
                reason=reason,
                generation=self.ledger.generation,
            )
        )
        # Written with the next lease flush, or by the usage loop within a minute.

    def _record_grant(self, lease: Lease, held: Lease | None, now: int, *, fresh: bool) -> None:
        """A licensed seat taken, as a usage event (a seat kept under a new token is none)."""
        after_loss = lease.client in self._lost
        self._lost.pop(lease.client, None)
        self._willed.discard(lease.client)
        if not lease.licensed:
            return  # an unlicensed session holds no seat
        if fresh:
            self._usage.stage(usage.granted(lease, now, after_loss=after_loss))
        elif held is not None and (held.app, held.user, held.host) != (
            lease.app,
            lease.user,
            lease.host,
        ):
            # The same seat, now said to be another app, user or host's: move it.
            self._usage.stage(usage.released(held, now, "agent"))
            self._usage.stage(usage.granted(lease, now))

    def _renew(self, body: SeatRenew, now: int) -> None:
        active_at = None if body.idle_ms is None else now - body.idle_ms
        lease = self.ledger.renew(body.client, body.lease, now, active_at)
        if isinstance(lease, Waiter):
            self._store.stage_waiter(lease)
            self._staged.set()
            self.ledger.promote(now)  # back from its will's grace: a free seat may be its
            self._settle(now)
            if body.client in self.ledger.queue:
                self._tell_place(lease, self.ledger.ahead(body.client))
            return
        if lease is None:
            message = "The license server no longer holds this seat; ask again."
            self._lost[body.client] = None
            self._lost.move_to_end(body.client)
            if len(self._lost) > _LOST_KEPT:
                self._lost.popitem(last=False)
            self.reply(body.client, SeatLost(lease=body.lease, message=message))
            return
        self._willed.discard(body.client)  # back within the will's grace
        self._promoted_from.pop(body.client, None)  # the agent has its grant
        if lease.active_at is not None:
            self._idle_moved.set()
        # Not written: moves the bound ahead half an interval before it is reached, so it
        # is committed before any renewal needs it (module docstring).
        if now >= self._renewals_before - self._renew_ms // 2:
            self._renewals_before = now + self._renew_ms
            self._store.stage_renewals_before(self._renewals_before)
            self._staged.set()
        reply = SeatRenewed(lease=lease.token, expires_at=lease.expires_at)
        if body.client in self._unflagged:
            self._stage(lease)  # its row, flagged renewed: once per lease per start
        if body.client in self._flagging or now >= self._store.renewals_before_committed:
            # Not yet covered by what is committed: answered once the commit that covers
            # it is done, by whichever flush commits it.
            self._store.after_commit(functools.partial(self._send_held, body.client, reply))
            self._staged.set()
            return
        self.reply(body.client, reply)

    def _send_held(self, client_id: str, reply: SeatRenewed) -> None:
        # The seat may have gone (released, reclaimed, revoked) or been shortened (a
        # will) while its reply waited: only what is still true is sent.
        lease = self.ledger.leases.get(client_id)
        if lease is None or lease.token != reply.lease:
            return
        if lease.expires_at < reply.expires_at:
            reply = SeatRenewed(lease=reply.lease, expires_at=lease.expires_at)
        self.reply(client_id, reply)

    def _will(self, client_id: str, now: int) -> None:
        # The MQTT will cannot know the lease; the agent may only have been cut off by a
        # broker restart (which sends every will), so the seat is kept for a short grace;
        # so is a waiter's place (it leaves the queue if it does not renew within it).
        self.ledger.orphan_waiter(client_id, now, self._will_grace_ms)
        freed = self.ledger.orphan(client_id, now, self._will_grace_ms)
        self._expiry_moved.set()
        if (lease := self.ledger.leases.get(client_id)) is not None:
            self._willed.add(client_id)
            if not lease.borrowed:
                # Its grace written, "not renewed since": a crash does not give it a lease
                # more; a renewal within the grace rewrites it (as after a start).
                self._store.stage_lease(lease, renewed=False)
                self._flagging.discard(client_id)
                self._unflagged.add(client_id)
                self._staged.set()
        if freed is not None:
            self._stage_release(client_id)
            self._staged.set()
        log.info("client gone (will)", client=client_id, freed=freed is not None)

    def _release(self, body: SeatRelease, now: int, login: str) -> None:
        lease = self.ledger.leases.get(body.client)
        if lease is not None and lease.borrowed:
            # A borrowed seat is given back with seat.return (recorded, audited), never
            # by a seat.release: its laptop may run on under its token.
            self._drops("borrowed_seat", self._inbound(login, body.client, "release"))
            return
        released = self.ledger.release(body.client, body.lease, now)
        if released is None:
            return
        self._stage_release(body.client)
        self._willed.discard(body.client)
        if released.licensed and not released.revoked:
            self._usage.stage(usage.released(released, now, "agent"))
        self._staged.set()
        log.info(
            "seat released",
            client=body.client,
            generation=released.generation,
            revoked=released.revoked,
        )
        self._settle(now)

    def reply(self, client_id: str, body: msgspec.Struct) -> None:
        """Send ``body`` to ``client_id``'s agent, signed for its topic."""
        topic = self._reply_prefix + client_id  # self._topics.client(client_id), sooner
        self._link.send(topic, self._signer.seal(topic, protocol.encode(body)))

    def _stage(self, lease: Lease) -> None:
        self._store.stage_lease(lease)  # flagged renewed, as every ordinary write
        self._unflagged.discard(lease.client)
        self._flagging.add(lease.client)
        self._store.after_commit(functools.partial(self._flagging.discard, lease.client))
        self._staged.set()

    def _stage_release(self, client_id: str) -> None:
        self._store.stage_release(client_id)
        self._unflagged.discard(client_id)
        self._flagging.discard(client_id)

    def restored(self, unflagged: set[str], renewals_before: int) -> None:
        """At start: the rows written not renewed, and the bound committed before serving."""
        self._unflagged = unflagged
        self._renewals_before = renewals_before

    def write_back(self) -> None:
        """At a clean stop: stage every lease as it is, renewals and all, for the last flush.

        The database then needs no bound on unwritten renewals.
        """
        if not self._renewals_before:
            return
        for lease in [*self.ledger.leases.values(), *self.ledger.revoked.values()]:
            if not lease.borrowed:  # kept in a table of their own, never renewed
                self._stage(lease)
        self._store.stage_renewals_before(0)
        self._renewals_before = 0

    def set_limits(self, limits: Limits) -> None:
        """New caps per login, host and user (a reload); seats already held are kept."""
        self.ledger.limits = seat_limits(limits)
        now = self._clock.now()
        self.ledger.promote(now)  # a waiter held back by a cap may go now
        self._settle(now)
        log.info(
            "seat limits",
            per_login=limits.seats_per_login,
            per_host=limits.seats_per_host,
            per_user=limits.seats_per_user,
        )

    # --- on an administrator's order ----------------------------------------------

    async def release_by_admin(self, client_id: str, actor: str) -> bool:
        """Free ``client_id``'s seat and tell its agent; ``False`` if it holds none.

        The database first (the lease row and the audit row in one transaction): if that
        fails, ``sqlite3.Error`` is raised and the seat is still held, as the reply says.
        """
        lease = self.ledger.leases.get(client_id) or self.ledger.revoked.get(client_id)
        if lease is None:
            return False
        audit = AuditEntry(actor, "admin.release", "accepted", "", {"client": client_id})
        now = self._clock.now()
        counted = lease.licensed and not lease.revoked
        revoked = usage.revoked(lease, now, "admin") if counted else None
        await self._store.release_lease(client_id, audit, now, revoked)
        self._staged.set()  # the delete the store staged again goes out with the next flush
        released = self.ledger.release(client_id, lease.token, now)
        self._willed.discard(client_id)
        if released is None:
            return True  # its agent released it meanwhile
        self._settle(now)
        self.reply(
            client_id,
            SeatRevoked(
                lease=released.token,
                reason="released_by_admin",
                message="An administrator released this seat; the application must stop.",
            ),
        )
        log.info("seat released by an administrator", client=client_id, admin=actor)
        return True

    # --- the broker's absence -----------------------------------------------------

    def broker_lost(self) -> None:
        """No agent can renew from now on: stop expiring leases until the broker is back."""
        if self._offline_since is None:
            self._offline_since = self._clock.now()
            self._broker_back.clear()

    def broker_back(self) -> None:
        """Give every lease back the time the broker was unreachable.

        Nor may that time count against a will's grace: a broker shutting down sends
        every connected client's will.
        """
        since, self._offline_since = self._offline_since, None
        if since is None:
            return
        self._broker_back.set()
        outage = self._clock.now() - since
        extended = self.ledger.extend_all(outage + self._will_grace_ms)
        for lease in extended:
            if lease.client in self._unflagged:
                # Still not renewed since its row was written (a will's grace, a start):
                # a crash must not give it a lease more.
                self._store.stage_lease(lease, renewed=False)
            else:
                self._stage(lease)
        self._staged.set()
        log.info(
            "broker back; leases extended by the outage", outage_ms=outage, leases=len(extended)
        )

    # --- loops, one step at a time ------------------------------------------------

    async def expire_step(self) -> None:
        """Wait for the next lease to run out (or for that moment to move), then free it."""
        await self._broker_back.wait()
        self._expiry_moved.clear()
        nxt = self.ledger.next_expiry()
        now = self._clock.now()
        if nxt is None or nxt > now:
            delay = self._lease_s if nxt is None else min((nxt - now) / 1000, self._lease_s)
            # Woken early when a lease's end moves closer (a will's grace).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay + 0.01):
                    await self._expiry_moved.wait()
            return
        self._expire(now)

    def _expire(self, now: int) -> None:
        """Free every lease and queue entry whose time is up; freed seats go to waiters."""
        expired = self.ledger.expire(now)
        self._settle(now)
        self.leases_expired += len(expired)
        for lease in expired:
            self._stage_release(lease.client)
            willed = lease.client in self._willed
            self._willed.discard(lease.client)
            if lease.licensed and not lease.revoked:
                self._usage.stage(
                    usage.released(
                        lease,
                        now,
                        "borrow_ended" if lease.borrowed else "will" if willed else "expiry",
                    )
                )
            log.info(
                "lease expired",
                client=lease.client,
                generation=lease.generation,
                revoked=lease.revoked,
            )
        if expired:
            self._staged.set()

    async def idle_step(self) -> None:
        """Wait for the next idle warning or reclaim (``idle_timeout``), then do it."""
        await self._broker_back.wait()
        self._idle_moved.clear()
        nxt = self.ledger.next_idle()
        now = self._clock.now()
        if nxt is None or nxt > now:
            delay = self._lease_s if nxt is None else min((nxt - now) / 1000, self._lease_s)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay + 0.01):
                    await self._idle_moved.wait()
            return
        warned, reclaimed = self.ledger.idle(now)
        for lease in warned:
            reclaim_at = self.ledger.reclaim_at(lease)
            left = _duration((reclaim_at - now) / 1000)
            self.reply(
                lease.client,
                SeatIdleWarning(
                    lease=lease.token,
                    reclaim_at=reclaim_at,
                    message=f"Your seat will be released in {left} unless you continue working.",
                ),
            )
            log.info("idle seat warned", client=lease.client, reclaim_at=reclaim_at)
        for lease in reclaimed:
            self._stage_release(lease.client)
            self._staged.set()
            self._usage.stage(usage.revoked(lease, now, "idle"))
            self.reply(
                lease.client,
                SeatRevoked(
                    lease=lease.token,
                    reason="idle",
                    message="This seat was idle too long and was given back to the license "
                    "server; the application must stop.",
                ),
            )
            log.info("idle seat reclaimed", client=lease.client, app=lease.app, user=lease.user)
        self._settle(now)

    async def flush_step(self) -> None:
        """Write the staged lease changes of one burst in one transaction.

        Gathered over a few milliseconds: each flush costs four hops to the SQLite thread
        and an fsync. A lease change lost in a crash is only a ``seat.lost`` and a new
        request for its agent.
        """
        await self._staged.wait()
        await asyncio.sleep(_FLUSH_DELAY)
        self._staged.clear()
        try:
            await self._store.flush_leases()
        except sqlite3.Error as exc:
            # The changes stay staged (see Store.flush_leases) and go with the next try.
            log.error("database write failed; retrying", task="lease-flush", error=str(exc))
            # Held renewal replies are not held through a failing database: agents would
            # stop their applications at the end of their offline grace. Until it writes
            # again, a crash may lose a renewal answered meanwhile (docs/PERFORMANCE.md).
            for action in self._store.take_after_commit():
                action()
            self._staged.set()
            await asyncio.sleep(_STORE_RETRY_S)
        except BaseException:
            self._staged.set()
            raise

    # --- reports ------------------------------------------------------------------

    def client_rows(self) -> list[ClientRow]:
        """Every lease, current and awaiting release, oldest first."""
        leases = [*self.ledger.leases.values(), *self.ledger.revoked.values()]
        return [
            ClientRow(
                client=lease.client,
                login=lease.login,
                app=lease.app,
                user=lease.user,
                host=lease.host,
                pid=lease.pid,
                licensed=lease.licensed,
                generation=lease.generation,
                since=lease.since,
                expires_at=lease.expires_at,
                revoked=lease.revoked,
                borrowed=lease.borrowed,
            )
            for lease in sorted(leases, key=lambda lease: lease.since)
        ]

    def queue_rows(self) -> list[QueueRow]:
        """The clients waiting for a seat, first in line first."""
        return [
            QueueRow(
                position=ahead + 1,
                client=w.client,
                login=w.login,
                app=w.app,
                user=w.user,
                host=w.host,
                pid=w.pid,
                since=w.since,
            )
            for ahead, w in enumerate(self.ledger.queue.values())
        ]
