"""The license daemon: wires its components and runs their loops.

Each domain concept has one home; :class:`Daemon` only builds them, routes messages
and owns the tasks:

=====================  ===============================================================
``statedir``           the state directory, its lock and the server identity key
``store``              the SQLite database
``clock``              never-backwards time; when a key expires
``authority``          the license, status, generation and revision (the one writer)
``seats``              seat messages, the seat ledger, lease expiry and persistence
``statereplies``       the signed state on an agent's own topic, when it asks
``borrows``            borrowed seats: ``seat.borrow`` and ``seat.return``, signed tokens
``usage``              the seat usage history: its fold loop and its answers
``admin``              admin keyring, freshness and replay, commands, audit, reports
``link``               the broker connection (a seam tests can replace)
``expiring``           the ``license.expiring`` warnings before the license expires
``metrics``            the Prometheus endpoint, when ``[metrics] listen`` is set
=====================  ===============================================================

:meth:`Daemon.serve` owns one ``asyncio.TaskGroup`` of named tasks: the link's (``mqtt``,
``replies``, ``mqtt-stop``), ``lease-expiry``, ``lease-flush``, ``usage-fold``,
``license-expiry``, ``expiry-warning``,
``reload`` (SIGHUP), ``retained-recovery``, ``watchdog`` and, when on, ``metrics``. A
step of a background loop that fails is logged, counted (``internal_error``) and the loop
goes on: one message's failure costs that message, never the service. Messages are
handled one at a time; a shutdown is looked at only between messages, and waits for a
license change in progress, so it never interrupts a half-done unlock or expiry.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sqlite3
from typing import TYPE_CHECKING

import structlog

from floatkey import protocol
from floatkey.envelope import Signer
from floatkey.errors import ConfigError
from floatkey.signing import public_key_text
from floatkeyd.admin import AdminDesk, Keyring
from floatkeyd.authority import LicenseAuthority
from floatkeyd.borrowdesk import BorrowDesk
from floatkeyd.clock import Clock
from floatkeyd.config import load_config
from floatkeyd.drops import Drops
from floatkeyd.embedded_broker import EMBEDDED_LOGINS, embedded_broker
from floatkeyd.expiring import ExpiryWarnings
from floatkeyd.ledger import SeatLedger
from floatkeyd.link import MqttLink
from floatkeyd.metrics import (
    DaemonCollector,
    MetricsEndpoint,
    bind_metrics_socket,
    metrics_registry,
)
from floatkeyd.retained import Retained
from floatkeyd.sdnotify import Notifier
from floatkeyd.seats import SeatDesk, restored_lease_end, seat_limits
from floatkeyd.statedir import held_state_directory
from floatkeyd.statereplies import StateReplies
from floatkeyd.store import Store
from floatkeyd.usagelog import UsageHistory

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from floatkeyd.config import LoadedConfig
    from floatkeyd.ledger import Lease
    from floatkeyd.link import Link
    from floatkeyd.store import StoredState

__all__ = ["Daemon", "open_daemon"]

log = structlog.get_logger("floatkeyd")

#: How long a failing background loop waits before its next step.
_STEP_RETRY_S = 1.0


class Daemon:
    """The floatkey license server; build it with :func:`open_daemon`."""

    def __init__(  # noqa: PLR0913 - the components, built by open_daemon
        self,
        *,
        loaded: LoadedConfig,
        link: Link,
        authority: LicenseAuthority,
        seats: SeatDesk,
        usage: UsageHistory,
        admin: AdminDesk,
        retained: Retained,
        drops: Drops,
        identity_body: bytes,
        notifier: Notifier,
        expiring: ExpiryWarnings,
        borrows: BorrowDesk,
        metrics: MetricsEndpoint | None = None,
    ) -> None:
        self.loaded = loaded
        self.topics = loaded.topics
        self.link = link
        self.authority = authority
        self.seats = seats
        self.borrows = borrows
        self.usage = usage
        self.admin = admin
        self.retained = retained
        self.drops = drops
        self.notifier = notifier
        self.metrics = metrics
        self.expiring = expiring
        self._identity_body = identity_body
        # Looked at for every message: computed once (the topics never change).
        self._admin_request = loaded.topics.admin_request
        self._retained_topics = frozenset({loaded.topics.state, loaded.topics.identity})
        self._ready = asyncio.Event()
        self._reload_requested = asyncio.Event()

    # --- the Inbox the link talks to ----------------------------------------------

    async def connected(self) -> None:
        """(Re)connected: put our identity and state on the broker, then serve."""
        self.retained.reconnected()
        await self.retained.put(self.topics.identity, self._identity_body)
        await self.retained.put(self.topics.state, self.authority.state_payload)
        self.seats.broker_back()
        self.expiring.recheck()  # a warning that found no broker goes out now
        if not self._ready.is_set():
            self.seats.settle_restored()  # seats freed while it was down, to waiters
            self._ready.set()
            self.notifier.ready(self.authority.status_line())
        else:
            self.notifier.status(self.authority.status_line())

    def offline(self) -> None:
        """The broker is gone; the link reconnects."""
        self.seats.broker_lost()
        self.notifier.status(f"Broker {self.loaded.broker.describe()} unreachable; retrying")

    async def handle(self, topic: str, payload: bytes) -> None:
        """Route one inbound message; nothing in it can raise out of here."""
        if len(payload) > self.loaded.config.max_payload:
            self.drops("oversized", topic, size=len(payload))
            return
        try:
            if topic == self._admin_request:
                await self.admin.handle(payload)
                self.notifier.status(self.authority.status_line())
                self.expiring.recheck()  # an unlock: a new license, a new expiry
            elif topic in self._retained_topics:
                await self.retained.check(topic, payload)
            elif (seat := self.topics.parse_seat(topic)) is not None:
                if seat[2] in {"borrow", "return"}:
                    await self.borrows.handle(*seat, payload)
                else:
                    self.seats.handle(*seat, payload)
            else:
                self.drops("unknown_topic", topic)
        except Exception:
            log.exception("message handling failed", topic=topic[:128])
            self.drops.add("internal_error")

    # --- lifecycle ----------------------------------------------------------------

    def reload(self) -> None:
        """Read the config's limits and the admin keys again (SIGHUP), in the reload task."""
        self._reload_requested.set()

    async def _reload_step(self) -> None:
        """Wait for a reload request and carry it out; what cannot be read stays as it was."""
        await self._reload_requested.wait()
        self._reload_requested.clear()
        before = (self.seats.ledger.limits, len(self.admin.keyring.keys))
        try:
            limits = load_config(self.loaded.path).config.limits
        except ConfigError as exc:
            log.error("configuration not reloaded; the old limits stay", error=exc.message)
            await self.admin.record("config.reload", "refused", "config", {"error": exc.message})
            return
        self.seats.set_limits(limits)
        try:
            await self.admin.keyring.reload()
        except sqlite3.Error as exc:
            log.error("admin keys not reloaded: database error; the old keys stay", error=str(exc))
        after = (self.seats.ledger.limits, len(self.admin.keyring.keys))
        detail = {
            "limits": {
                "before": dataclasses.asdict(before[0]),
                "after": dataclasses.asdict(after[0]),
            },
            "admin_keys": {"before": before[1], "after": after[1]},
        }
        await self.admin.record("config.reload", "done", "", detail)

    async def wait_ready(self) -> None:
        """Return once the broker connection and the state publication are up."""
        await self._ready.wait()

    async def serve(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set, then shut down in order."""
        steps = {
            "lease-expiry": self.seats.expire_step,
            "lease-flush": self.seats.flush_step,
            "idle-seats": self.seats.idle_step,
            "queue-places": self.seats.queue_step,
            "usage-fold": self.usage.fold_step,
            "license-expiry": self.authority.expiry_step,
            "expiry-warning": self.expiring.step,
            "reload": self._reload_step,
            "retained-recovery": self.retained.recover_step,
        }
        async with asyncio.TaskGroup() as tasks:
            loops = [
                tasks.create_task(self._forever(name, step), name=name)
                for name, step in steps.items()
            ]
            loops.append(tasks.create_task(self._watchdog(), name="watchdog"))
            if self.metrics is not None:
                serving = tasks.create_task(self.metrics.serve(), name="metrics")
            await self.link.run(self, stop)
            self.notifier.stopping()
            log.info("stopping")
            if self.metrics is not None:
                self.metrics.stop()  # the scrapes in hand are answered first
                await serving
            # A license change in progress (an expiry) is finished first, never cut off
            # between its commit and its publication; none starts after.
            async with self.authority.paused():
                for task in loops:
                    task.cancel()
                await asyncio.wait(loops)
            self.seats.write_back()  # renewals too: the store's close writes them

    async def _forever(self, name: str, step: Callable[[], Awaitable[None]]) -> None:
        """Run ``step`` again and again; a failed step is logged and counted, not fatal."""
        while True:
            try:
                await step()
            except Exception:
                log.exception("background step failed; going on", task=name)
                self.drops.add("internal_error")
                await asyncio.sleep(_STEP_RETRY_S)

    async def _watchdog(self) -> None:
        interval = self.notifier.watchdog_interval
        if interval is None:
            return
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval)


async def _restore_leases(
    store: Store, stored: StoredState, ledger: SeatLedger, started: int, lease_ms: int
) -> tuple[int, list[Lease]]:
    """Put the stored leases into ``ledger``; the new bound on renewals and those extended.

    A borrowed seat's end is fixed, and written with it; a row not renewed since it was
    written (extended at the last start, or a will's grace) gets no bound: a dead agent's
    seat is not pushed out again by every crash. Before serving, the extended rows are
    written as restored, unflagged, with a bound one renewal interval ahead, so a renewal
    answered right after the start is covered (``floatkeyd.seats``).
    """
    extended: list[Lease] = []
    for lease in stored.leases:
        if not lease.borrowed and lease.client not in stored.unrenewed:
            end = restored_lease_end(lease.expires_at, stored.renewals_before_ms, started, lease_ms)
            if end != lease.expires_at:
                lease.expires_at = end
                extended.append(lease)
        ledger.restore(lease)
    renewals_before = started + lease_ms // 3
    await store.write_restored(extended, renewals_before)
    return renewals_before, extended


@contextlib.asynccontextmanager
async def open_daemon(
    loaded: LoadedConfig,
    *,
    notifier: Notifier | None = None,
    link: Link | None = None,
    wall: Callable[[], int] = protocol.now_ms,
) -> AsyncIterator[Daemon]:
    """Build a whole daemon: state directory, database, components; close all after.

    The seams, for tests: with ``link`` (an in-memory link) no broker is started or
    connected; ``wall`` replaces the machine's clock (Unix ms). Raises
    ``ConfigError``, ``StoreError`` or ``KeyFileError`` with a sentence when it cannot
    start; whatever was opened by then is closed again.
    """
    config, notifier = loaded.config, notifier or Notifier()
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(notifier.close)
        statedir = stack.enter_context(held_state_directory(loaded.state_dir))
        signer = Signer(statedir.identity)
        public = public_key_text(statedir.identity.public_key())
        log.info(
            "server identity",
            created=statedir.identity_created,
            fingerprint=signer.kid,
            public_key=public,
        )
        store = await Store.open(statedir.database, signer)
        stack.push_async_callback(store.close)
        stored = await store.load()
        clock = Clock(stored.latest_time_ms, wall)
        drops = Drops()
        if link is None:
            link = MqttLink(
                loaded.broker,
                identifier=config.client_id or statedir.broker_client_id,
                base=loaded.base,
                subscriptions=[
                    loaded.topics.seats_wildcard,
                    loaded.topics.admin_request,
                    # Our own retained topics: to put back anything that overwrote them.
                    loaded.topics.state,
                    loaded.topics.identity,
                ],
                drops=drops,
            )
            if config.broker is None:
                embedded = config.embedded_broker
                logins = statedir.embedded_logins(EMBEDDED_LOGINS)
                await stack.enter_async_context(
                    embedded_broker(embedded.host, embedded.port, logins)
                )
                log.info("embedded broker started", host=embedded.host, port=embedded.port)
        ledger = SeatLedger(
            stored.status,
            stored.license.seats if stored.license else 0,
            stored.generation,
            config.lease_seconds * 1000,
            limits=seat_limits(config.limits),
            queue_max=config.queue_max,
            queue_max_wait_ms=config.queue_max_wait_seconds * 1000,
            idle_ms=round(config.idle_timeout * 1000),
            idle_warning_ms=round(config.idle_warning * 1000),
            borrow_rules=config.borrow.rules,
        )
        renewals_before, extended = await _restore_leases(
            store, stored, ledger, clock.now(), config.lease_seconds * 1000
        )
        for waiter in stored.queue:
            ledger.restore_waiter(waiter)
        retained = Retained(topics=loaded.topics, kid=signer.kid, link=link, drops=drops)
        authority = await LicenseAuthority.open(
            server=config.server,
            topics=loaded.topics,
            store=store,
            clock=clock,
            vendor_key=loaded.vendor_public_key,
            signer=signer,
            ledger=ledger,
            link=link,
            retained=retained,
            stored=stored,
        )
        identity_body = protocol.encode(
            protocol.Identity(server=config.server, public_key=public, kid=signer.kid)
        )
        state_replies = StateReplies(
            topics=loaded.topics,
            authority=authority,
            signer=signer,
            link=link,
            identity_body=identity_body,
        )
        seats = SeatDesk(
            config=config,
            topics=loaded.topics,
            ledger=ledger,
            store=store,
            clock=clock,
            authority=authority,
            signer=signer,
            link=link,
            drops=drops,
            answer_state=state_replies.answer,
        )
        seats.restored({lease.client for lease in extended} | stored.unrenewed, renewals_before)
        borrows = BorrowDesk(
            server=config.server,
            topics=loaded.topics,
            seats=seats,
            store=store,
            clock=clock,
            authority=authority,
            signer=signer,
            drops=drops,
        )
        usage = UsageHistory(store, clock, config.usage)
        keyring = Keyring(list(config.admin_keys), store)
        await keyring.reload()
        expiring = await ExpiryWarnings.open(
            warn_days=config.license.warn_days,
            authority=authority,
            store=store,
            clock=clock,
            signer=signer,
            link=link,
            topics=loaded.topics,
        )
        admin = AdminDesk(
            topics=loaded.topics,
            keyring=keyring,
            store=store,
            clock=clock,
            authority=authority,
            seats=seats,
            usage=usage,
            signer=signer,
            link=link,
            drops=drops,
            broker=loaded.broker.describe(),
            feature_names=loaded.catalogue.features if loaded.catalogue else {},
            unlock_box=statedir.unlock_box,
            expiring=expiring,
        )
        metrics = None
        if (address := config.metrics.address) is not None:
            sock = bind_metrics_socket(*address)
            collector = DaemonCollector(
                authority=authority, seats=seats, admin=admin, drops=drops, link=link, store=store
            )
            metrics = MetricsEndpoint(sock, metrics_registry(collector))
            stack.callback(metrics.close)
        log.info(
            "state loaded",
            status=authority.status,
            generation=authority.generation,
            revision=authority.revision,
            leases=len(ledger.leases),
            awaiting_release=len(ledger.revoked),
            queued=len(ledger.queue),
        )
        yield Daemon(
            loaded=loaded,
            link=link,
            authority=authority,
            seats=seats,
            usage=usage,
            admin=admin,
            retained=retained,
            drops=drops,
            identity_body=identity_body,
            notifier=notifier,
            metrics=metrics,
            expiring=expiring,
            borrows=borrows,
        )
        log.info("stopped", drops=dict(drops.counts))
