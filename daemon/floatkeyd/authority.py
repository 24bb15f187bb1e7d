"""The license authority: the one writer of the license and its counters.

It owns the active product key, the stored license row, the status, the generation and
the revision, and seals the signed state that says all of them. Every change holds one
``asyncio.Lock`` from the moment the next generation is computed until the state is
published, so an unlock and a license expiry can never compute the same next generation,
and agents see the states in the order they were made.

A change is committed to the database first (one transaction with its audit row), then
applied in memory: the seat ledger revokes every lease of the old generation, the new
state is sealed, and the event and the retained state are published.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import structlog

from floatkey import protocol
from floatkey.errors import ProductKeyError
from floatkey.productkey import ProductKey, parse_product_key, verify_product_key
from floatkey.protocol import LicenseInfo
from floatkeyd.clock import expiry_instant_ms
from floatkeyd.store import AuditEntry, StoredLicense
from floatkeyd.usage import license_changed

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from floatkey.envelope import Signer
    from floatkeyd.clock import Clock
    from floatkeyd.ledger import LedgerMode, SeatLedger
    from floatkeyd.link import Link
    from floatkeyd.retained import Retained
    from floatkeyd.store import Store, StoredState

__all__ = ["Activation", "LicenseAuthority"]

log = structlog.get_logger("floatkeyd")

#: The latest time is persisted at least this often (a clock set back cannot un-expire).
_TIME_PERSIST_S = 600.0
_MIN_WAIT_S = 0.05
_STORE_RETRY_S = 1.0
#: Why the seats of the old license were revoked, as the usage history says it.
_REVOKED_BY = {
    "admin.unlock": "unlock",
    "license.expired": "license_expired",
    "license.reverify": "license_refused",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Activation:
    """What :meth:`LicenseAuthority.activate` did: ``changed`` false when already active."""

    changed: bool
    info: LicenseInfo
    generation: int
    clients_told: int


def license_info(key: ProductKey, licensee: str, organization: str) -> LicenseInfo:
    """The license as the state and the admin replies show it."""
    return LicenseInfo(
        licensee=licensee,
        organization=organization,
        seats=key.seats,
        features=list(key.features),
        product_version=key.product_version,
        serial=key.serial,
        issued=key.issued.isoformat(),
        expires=key.expires.isoformat() if key.expires else None,
    )


class LicenseAuthority:
    """The license, its status, generation and revision; build with :meth:`open`."""

    def __init__(  # noqa: PLR0913 - wired once by the daemon's factory
        self,
        *,
        server: str,
        topics: protocol.Topics,
        store: Store,
        clock: Clock,
        vendor_key: Ed25519PublicKey,
        signer: Signer,
        ledger: SeatLedger,
        link: Link,
        retained: Retained,
        stored: StoredState,
    ) -> None:
        self._server = server
        self._topics = topics
        self._store = store
        self._clock = clock
        self._vendor_key = vendor_key
        self._signer = signer
        self._ledger = ledger
        self._link = link
        self._retained = retained
        self._lock = asyncio.Lock()
        self._status: LedgerMode = stored.status
        self._generation = stored.generation
        self._revision = stored.revision
        self._key: ProductKey | None = None
        self._license: StoredLicense | None = None
        self._state_payload = b""
        #: Set on every change, for the expiry timer to look at the new deadline.
        self.changed = asyncio.Event()
        #: Called after every license change, once the ledger has switched (the seat
        #: desk tells the waiters the change took out of the queue).
        self.on_change: list[Callable[[], None]] = []

    @classmethod
    async def open(  # noqa: PLR0913 - see __init__
        cls,
        *,
        server: str,
        topics: protocol.Topics,
        store: Store,
        clock: Clock,
        vendor_key: Ed25519PublicKey,
        signer: Signer,
        ledger: SeatLedger,
        link: Link,
        retained: Retained,
        stored: StoredState,
    ) -> LicenseAuthority:
        """Check the stored license again, start a new revision, and seal the state.

        A stored license that no longer verifies (an edited database, a key from another
        vendor) is dropped, loudly and audited; one that expired while the daemon was down
        is marked expired.
        """
        authority = cls(
            server=server,
            topics=topics,
            store=store,
            clock=clock,
            vendor_key=vendor_key,
            signer=signer,
            ledger=ledger,
            link=link,
            retained=retained,
            stored=stored,
        )
        async with authority._lock:
            await authority._reverify(stored.license)
            authority._revision += 1
            await store.set_revision(authority._revision, clock.now())
            authority._state_payload = authority._seal()
        return authority

    # --- what others read ---------------------------------------------------------

    @property
    def status(self) -> LedgerMode:
        """``unlicensed``, ``licensed`` or ``expired``."""
        return self._status

    @property
    def generation(self) -> int:
        """Grows by one on every activation and expiry."""
        return self._generation

    @property
    def revision(self) -> int:
        """Grows on every publication of the state."""
        return self._revision

    @property
    def seats(self) -> int:
        """Seats of the active license (0 when unlicensed)."""
        return self._key.seats if self._key is not None and self._status != "unlicensed" else 0

    @property
    def features(self) -> list[str]:
        """Features a licensed seat may use now."""
        return list(self._key.features) if self._key is not None else []

    @property
    def info(self) -> LicenseInfo | None:
        """The license as the state shows it, or ``None`` while unlicensed."""
        if self._key is None or self._license is None or self._status == "unlicensed":
            return None
        return license_info(self._key, self._license.licensee, self._license.organization)

    @property
    def state_payload(self) -> bytes:
        """The current signed state, as published (retained) on the state topic."""
        return self._state_payload

    def expiry_deadline(self) -> int | None:
        """When the active license expires (Unix ms), if it is licensed and dated."""
        if self._status != "licensed" or self._key is None:
            return None
        return expiry_instant_ms(self._key)

    @property
    def expires_at_ms(self) -> int | None:
        """When the license stops (stopped) being valid, Unix ms; ``None`` if undated or none."""
        if self._key is None or self._status == "unlicensed":
            return None
        return expiry_instant_ms(self._key)

    def seconds_to_expiry(self) -> float | None:
        """Seconds until :meth:`expiry_deadline` by the never-backwards clock, if any."""
        deadline = self.expiry_deadline()
        return None if deadline is None else (deadline - self._clock.now()) / 1000

    def status_line(self) -> str:
        """One line for systemd's status: the license and its seat usage."""
        if self._status == "unlicensed":
            return "Unlicensed; waiting for a product key"
        return f"{self._status.capitalize()}: {self._ledger.in_use}/{self.seats} seats in use"

    # --- changes ------------------------------------------------------------------

    async def activate(self, key_text: str, name: str, organization: str, actor: str) -> Activation:
        """Verify and activate a product key; revoke every lease; publish.

        Raises ``ProductKeyError`` (nothing changed) or ``sqlite3.Error`` (the transaction
        was rolled back, nothing changed).
        """
        async with self._lock:
            key = self._verify(key_text, name, organization)
            text = parse_product_key(key_text).text
            if (
                self._status == "licensed"
                and self._license is not None
                and self._license.key_text == text
            ):
                await self._store.audit(
                    AuditEntry(
                        actor, "admin.unlock", "accepted", "already_active", {"serial": key.serial}
                    ),
                    self._clock.now(),
                )
                info = license_info(key, self._license.licensee, self._license.organization)
                return Activation(
                    changed=False, info=info, generation=self._generation, clients_told=0
                )
            stored = StoredLicense(
                generation=self._generation + 1,
                key_text=text,
                licensee=name.strip(),
                organization=organization.strip(),
                serial=key.serial,
                seats=key.seats,
                features=key.features,
                activated_at=self._clock.now(),
            )
            told = await self._change("licensed", key, stored, actor, "admin.unlock", "accepted")
            log.info(
                "license activated",
                serial=key.serial,
                seats=key.seats,
                features=list(key.features),
                generation=self._generation,
                clients_told=told,
            )
            await self._announce("license.activated", told)
            info = license_info(key, stored.licensee, stored.organization)
            return Activation(
                changed=True, info=info, generation=self._generation, clients_told=told
            )

    async def expire_if_due(self) -> bool:
        """Mark the license expired if its last day has passed; publish. Returns whether.

        Looked at under the lock: an unlock that won the race has a new deadline.
        Raises ``sqlite3.Error`` (nothing changed).
        """
        async with self._lock:
            deadline = self.expiry_deadline()
            if deadline is None or self._clock.now() < deadline:
                return False
            log.warning("license expired", serial=self._key.serial if self._key else None)
            told = await self._change("expired", self._key, None, "system", "license.expired")
            await self._announce("license.expired", told)
            return True

    @contextlib.asynccontextmanager
    async def paused(self) -> AsyncIterator[None]:
        """Hold off license changes for the block (waiting for one in progress first)."""
        async with self._lock:
            yield

    async def remember_time(self) -> None:
        """Persist the latest time seen, so a clock set back cannot un-expire the license."""
        await self._store.set_latest_time(self._clock.now())

    async def expiry_step(self) -> None:
        """Expire the license on time; persist the latest time now and then.

        The wait is always positive: a deadline already past has just been handled (the
        license is expired, so it has no deadline any more), never a zero-second loop.
        """
        self.changed.clear()
        try:
            if await self.expire_if_due():
                return  # a new state: look at the (absent) deadline again
            await self.remember_time()
        except sqlite3.Error as exc:
            log.error("database write failed; retrying", task="license-expiry", error=str(exc))
            await asyncio.sleep(_STORE_RETRY_S)
            return
        wait = _TIME_PERSIST_S
        until = self.seconds_to_expiry()
        if until is not None:
            wait = min(wait, max(_MIN_WAIT_S, until))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await self.changed.wait()

    # --- inside the lock ----------------------------------------------------------

    def _verify(self, text: str, name: str, organization: str) -> ProductKey:
        return verify_product_key(
            text, self._vendor_key, name=name, organization=organization, today=self._clock.today()
        )

    async def _reverify(self, stored: StoredLicense | None) -> None:
        if stored is None:
            return
        try:
            key = self._verify(stored.key_text, stored.licensee, stored.organization)
        except ProductKeyError as exc:
            if exc.reason != "expired":
                await self._drop_stored(exc.reason, exc.message)
                return
            key = parse_product_key(stored.key_text).key
        if (key.seats, key.features, key.serial) != (stored.seats, stored.features, stored.serial):
            await self._drop_stored(
                "tampered",
                "The license in the database does not match its product key (seats, features "
                "or serial were edited). The license was not loaded; enter the product key again.",
            )
            return
        self._key, self._license = key, stored
        self._ledger.seats = key.seats if self._status != "unlicensed" else 0
        if self._status == "licensed" and self._clock.has_expired(key):
            await self._change("expired", key, None, "system", "license.expired")

    async def _drop_stored(self, reason: str, message: str) -> None:
        log.error("stored license refused", reason=reason, message=message)
        await self._change(
            "unlicensed", None, None, "system", "license.reverify", "refused", reason
        )

    async def _change(  # noqa: PLR0913, PLR0917 - the change and how it is audited
        self,
        status: LedgerMode,
        key: ProductKey | None,
        new: StoredLicense | None,
        actor: str,
        action: str,
        outcome: Literal["accepted", "refused", "done"] = "done",
        reason: str = "",
    ) -> int:
        """Commit a new generation, then revoke the old leases. Returns how many."""
        generation, revision, now = self._generation + 1, self._revision + 1, self._clock.now()
        detail: dict[str, object] = {"generation": generation, "status": status}
        if new is not None:
            detail |= {
                "serial": new.serial,
                "seats": new.seats,
                "features": list(new.features),
                "licensee": new.licensee,
                "organization": new.organization,
            }
        seats = key.seats if key is not None and status == "licensed" else 0
        await self._store.change_license(
            status=status,
            generation=generation,
            revision=revision,
            now=now,
            license_=new,
            admin_kid=actor,
            audit=AuditEntry(actor, action, outcome, reason, detail),
            usage=license_changed(now, generation=generation, seats=seats, status=status),
            revoke_reason=_REVOKED_BY.get(action, action),
        )
        # Committed: from here on nothing awaits until the state is sealed.
        self._status, self._generation, self._revision = status, generation, revision
        self._key = key
        if new is not None:
            self._license = new
        elif status == "unlicensed":
            self._license = None
        told = len(self._ledger.change_license(status, self.seats, generation))
        self._state_payload = self._seal()
        self.changed.set()
        for listener in self.on_change:
            listener()
        return told

    def _seal(self) -> bytes:
        state = protocol.State(
            server=self._server,
            revision=self._revision,
            generation=self._generation,
            status=self._status,
            license=self.info,
        )
        return self._signer.seal(self._topics.state, protocol.encode(state))

    async def _announce(self, event: protocol.EventName, told: int) -> None:
        """The event first (connected agents act on it at once), then the retained state.

        Without a broker nothing is published now: the state goes out on reconnect, and
        agents that missed the event read the new generation there.
        """
        body = protocol.Event(
            name=event, generation=self._generation, revision=self._revision, clients_told=told
        )
        sealed = self._signer.seal(self._topics.events, protocol.encode(body))
        try:
            await self._link.publish(self._topics.events, sealed)
            await self._retained.put(self._topics.state, self._state_payload)
        except Exception:
            log.exception("publishing the new state failed; it goes out on reconnect")
