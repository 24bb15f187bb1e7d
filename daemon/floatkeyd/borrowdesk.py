"""The borrow desk: ``seat.borrow`` and ``seat.return`` in, signed borrow tokens out.

A borrowed seat is a lease of the seat ledger (:meth:`SeatLedger.borrow`, rules in
``floatkeyd.borrowing``) whose end is fixed. Unlike a lease it is written to the
database (with its usage event and an audit row) *before* its token is sent: a token
the daemon forgot in a crash would be a seat running uncounted for days. Its end needs
no message: the seat desk's expiry loop frees it by the daemon's own clock.

The token (``borrow.token``) is signed with the server key, on a topic of its own that
is never published (``Topics.borrow_token``), so it cannot pass for any other message.
"""

from __future__ import annotations

import secrets
import sqlite3
from typing import TYPE_CHECKING

import msgspec
import structlog

from floatkey import protocol
from floatkey.protocol import (
    BorrowDenied,
    BorrowGranted,
    BorrowReturned,
    BorrowStatus,
    BorrowToken,
    DenialRow,
    SeatBorrow,
    SeatBorrowCheck,
    SeatReturn,
)
from floatkeyd import usage
from floatkeyd.borrowing import days_text
from floatkeyd.ledger import Denied
from floatkeyd.store import AuditEntry

if TYPE_CHECKING:
    from floatkey.envelope import Signer
    from floatkeyd.authority import LicenseAuthority
    from floatkeyd.clock import Clock
    from floatkeyd.drops import Drops
    from floatkeyd.ledger import Lease
    from floatkeyd.seats import SeatDesk
    from floatkeyd.store import Store

__all__ = ["BorrowDesk"]

log = structlog.get_logger("floatkeyd")


class BorrowDesk:
    """Lends seats for offline use and takes them back early."""

    def __init__(  # noqa: PLR0913 - wired once by the daemon's factory
        self,
        *,
        server: str,
        topics: protocol.Topics,
        seats: SeatDesk,
        store: Store,
        clock: Clock,
        authority: LicenseAuthority,
        signer: Signer,
        drops: Drops,
    ) -> None:
        self._server = server
        self._topics = topics
        self._seats = seats
        self._ledger = seats.ledger
        self._store = store
        self._clock = clock
        self._authority = authority
        self._signer = signer
        self._drops = drops
        self.reply = seats.reply  # one sender of signed replies to agents
        # Each borrowed seat's request, (host_id, nonce), by client: a request repeated
        # after a lost answer gets the same seat's token again. Not kept across restarts.
        self._asked: dict[str, tuple[str, str]] = {}

    async def handle(self, login: str, client_id: str, action: str, payload: bytes) -> None:
        """One message on ``seats/{login}/{client_id}/borrow`` or ``.../return``."""
        topic = f"{self._topics.root}/seats/{login}/{client_id}/{action}"
        body: SeatBorrow | SeatBorrowCheck | SeatReturn
        try:
            if action == "borrow":
                body = protocol.decode(payload, SeatBorrow | SeatBorrowCheck)  # type: ignore[arg-type]
            else:
                body = protocol.decode(payload, SeatReturn)
        except msgspec.DecodeError as exc:
            self._drops("bad_body", topic, error=exc)
            return
        if body.client != client_id:
            self._drops("client_mismatch", topic, claimed=body.client)
            return
        if self._seats.rate_limited(client_id):
            self._drops("rate_limited", topic)
            return
        if not self._seats.same_login(client_id, login):
            self._drops("login_mismatch", topic)
            return
        if isinstance(body, SeatBorrow):
            await self._borrow(body, login)
        elif isinstance(body, SeatBorrowCheck):
            await self._check(body)
        else:
            await self._return(body)

    def _held(self, client: str, token: str) -> Lease | None:
        lease = self._ledger.leases.get(client) or self._ledger.revoked.get(client)
        if lease is None or not lease.borrowed or not secrets.compare_digest(lease.token, token):
            return None
        return lease

    async def _check(self, body: SeatBorrowCheck) -> None:
        """Does the daemon still lend the seat? One lent under an earlier license ends here.

        Its laptop reached the broker, so it now reads the new generation and restarts
        for a seat of the new license: the borrow ends (recorded), freeing its seat.
        """
        lease = self._held(body.client, body.lease)
        if lease is None:
            self.reply(
                body.client,
                BorrowStatus(
                    nonce=body.nonce,
                    held=False,
                    message="The license server no longer lends this seat: an administrator "
                    "released it, it was returned, or it ended. Connect to the network to get "
                    "a seat, or borrow again.",
                ),
            )
            return
        if lease.generation == self._ledger.generation:
            self.reply(body.client, BorrowStatus(nonce=body.nonce, held=True))
            return
        now = self._clock.now()
        audit = AuditEntry(
            f"agent:{lease.login}",
            "seat.return",
            "done",
            "license_changed",
            {"client": body.client, "generation": lease.generation},
        )
        try:
            await self._store.end_borrow(
                body.client, now, usage.released(lease, now, "license_changed"), audit
            )
        except sqlite3.Error as exc:
            # Still counted until its end; the laptop restarts on the new state anyway.
            log.error("database write failed; borrow kept", client=body.client, error=str(exc))
            return
        self._ledger.release(body.client, body.lease, now)
        self._seats.settle(now)
        log.info("borrowed seat of an earlier license ended", client=body.client)
        self.reply(
            body.client,
            BorrowStatus(
                nonce=body.nonce,
                held=False,
                message="A new license is active on the license server; the seat borrowed "
                "under the previous one has ended. The application restarts to get a seat "
                "under the new license.",
            ),
        )

    def _seal(self, lease: Lease, host_id: str, now: int) -> str:
        """The signed borrow token of ``lease``, lent to the computer ``host_id``."""
        info = self._authority.info
        token = BorrowToken(
            server=self._server,
            client=lease.client,
            lease=lease.token,
            generation=lease.generation,
            licensee=info.licensee if info else "",
            organization=info.organization if info else "",
            features=self._authority.features,
            host=lease.host,
            host_id=host_id,
            user=lease.user,
            app=lease.app,
            start=lease.since,
            end=lease.expires_at,
            ts=now,
        )
        topic = self._topics.borrow_token(lease.client)
        return self._signer.seal(topic, protocol.encode(token)).decode()

    def _asked_again(self, body: SeatBorrow) -> Lease | None:
        """The seat lent to this very request before (its answer was lost), if any."""
        lease = self._ledger.leases.get(body.client)
        if (
            lease is None
            or not lease.borrowed
            or lease.generation != self._ledger.generation
            or self._asked.get(body.client) != (body.host_id, body.nonce)
        ):
            return None
        return lease

    async def _borrow(self, body: SeatBorrow, login: str) -> None:
        now = self._clock.now()
        again = self._asked_again(body)
        if again is not None:
            # The agent asks again as the same client, from the same computer, with the
            # same nonce: the answer was lost. The same seat, not a second one.
            log.info("borrow token sent again", client=body.client)
            self.reply(
                body.client,
                BorrowGranted(
                    nonce=body.nonce,
                    token=self._seal(again, body.host_id, now),
                    end=again.expires_at,
                ),
            )
            return
        who = usage.Who(body.app[:128], body.user[:128], body.host[:256])
        decision = self._ledger.borrow(
            body.client,
            now,
            body.seconds * 1000,
            until=self._authority.expiry_deadline(),
            app=who.app,
            user=who.user,
            host=who.host,
            login=login,
        )
        if isinstance(decision, Denied):
            self._deny(body, login, who, decision.reason, decision.message, now)
            return
        lease = decision.lease
        sealed = self._seal(lease, body.host_id, now)
        audit = AuditEntry(
            f"agent:{login}",
            "seat.borrow",
            "accepted",
            "",
            {
                "client": lease.client,
                "host": lease.host,
                "user": lease.user,
                "end": lease.expires_at,
            },
        )
        try:
            await self._store.add_borrow(
                lease, body.host_id, now, usage.borrowed(lease, now), audit
            )
        except sqlite3.Error as exc:
            # Not recorded: not lent (a token the daemon could forget is a seat uncounted).
            self._ledger.release(lease.client, lease.token, now)
            self._seats.settle(now)
            log.error("database write failed; borrow refused", client=lease.client, error=str(exc))
            self._deny(
                body,
                login,
                who,
                "store_failed",
                "The license server could not record the borrowed seat; try again later, or "
                "ask your administrator to look at the server's log.",
                now,
            )
            return
        if self._ledger.generation != lease.generation:
            # The license changed while the borrow was being recorded: its token would
            # name a license no longer in force. Undone (still counted if that fails).
            await self._undo(lease, now)
            self._deny(
                body,
                login,
                who,
                "license_changed",
                "The license on the server changed while the seat was being lent; borrow again.",
                now,
            )
            return
        self._seats.count_grant("borrowed")
        # Forget requests whose borrows are over; remember this one (see _asked_again).
        self._asked = {
            client: asked
            for client, asked in self._asked.items()
            if client in self._ledger.leases and self._ledger.leases[client].borrowed
        }
        self._asked[lease.client] = (body.host_id, body.nonce)
        log.info(
            "seat borrowed",
            client=lease.client,
            login=login,
            user=lease.user,
            host=lease.host,
            until=lease.expires_at,
            days=days_text(lease.expires_at - lease.since),
            borrowed=self._ledger.borrowed,
        )
        self.reply(
            lease.client,
            BorrowGranted(nonce=body.nonce, token=sealed, end=lease.expires_at),
        )

    def _deny(  # noqa: PLR0913, PLR0917 - what a denial reports
        self, body: SeatBorrow, login: str, who: usage.Who, reason: str, message: str, now: int
    ) -> None:
        log.info("borrow denied", client=body.client, login=login, reason=reason)
        self._seats.count_denial(
            DenialRow(
                at=now,
                client=body.client,
                login=login,
                app=who.app,
                user=who.user,
                host=who.host,
                reason=reason,
            )
        )
        self._store.usage_log.stage(
            usage.denied(
                body.client,
                now,
                login=login,
                who=who,
                reason=reason,
                generation=self._ledger.generation,
            )
        )
        self.reply(
            body.client,
            BorrowDenied(
                nonce=body.nonce,
                reason=reason,
                message=message,
                seats=self._ledger.seats,
                in_use=self._ledger.in_use,
                borrowed=self._ledger.borrowed,
            ),
        )

    async def _return(self, body: SeatReturn) -> None:
        now = self._clock.now()
        lease = self._held(body.client, body.lease)
        if lease is None:
            self.reply(
                body.client,
                BorrowReturned(
                    nonce=body.nonce,
                    returned=False,
                    message="The license server holds no such borrowed seat (it ended, or an "
                    "administrator released it); there is nothing to return.",
                ),
            )
            return
        counted = not lease.revoked
        audit = AuditEntry(
            f"agent:{lease.login}", "seat.return", "done", "", {"client": body.client}
        )
        returned = usage.released(lease, now, "returned") if counted else None
        try:
            await self._store.end_borrow(body.client, now, returned, audit)
        except sqlite3.Error as exc:
            log.error("database write failed; return refused", client=body.client, error=str(exc))
            self.reply(
                body.client,
                BorrowDenied(
                    nonce=body.nonce,
                    reason="store_failed",
                    message="The license server could not record the return; try again later.",
                ),
            )
            return
        self._ledger.release(body.client, body.lease, now)
        self._seats.settle(now)  # the seat goes to the first waiter at once
        log.info("borrowed seat returned", client=body.client, in_use=self._ledger.in_use)
        self.reply(
            body.client,
            BorrowReturned(
                nonce=body.nonce,
                returned=True,
                message="The borrowed seat is returned to the license server.",
            ),
        )

    async def _undo(self, lease: Lease, now: int) -> None:
        """Take back a borrow recorded but never sent (its row, and its seat)."""
        audit = AuditEntry(
            f"agent:{lease.login}", "seat.borrow", "refused", "license_changed",
            {"client": lease.client},
        )  # fmt: skip
        try:
            await self._store.end_borrow(lease.client, now, None, audit)
        except sqlite3.Error as exc:
            log.error("database write failed; borrow kept", client=lease.client, error=str(exc))
            return
        self._ledger.release(lease.client, lease.token, now)
        self._seats.settle(now)
