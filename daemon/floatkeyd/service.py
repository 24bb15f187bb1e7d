"""The license daemon: the asyncio and MQTT shell around the store, ledger and key codec.

One :class:`Daemon` owns one ``asyncio.TaskGroup`` of named tasks:

``mqtt``            connect (reconnect with capped, jittered backoff), subscribe, publish
                    identity and state, then handle messages one at a time
``replies``         publishes queued seat replies in pipelined batches (QoS 1)
``lease-expiry``    sleeps until the next lease runs out, then frees it
``license-expiry``  a timer to the active key's expiry (and remembers the latest time seen)
``lease-flush``     writes staged lease changes in one transaction per burst
``watchdog``        ``WATCHDOG=1`` to systemd at half its timeout, from the event loop

Messages are handled one at a time by the ``mqtt`` task, so the ledger needs no locks and
a shutdown never interrupts a half-done unlock: the stop request is only looked at
between messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import fcntl
import os
import random
import sqlite3
import time
from collections import Counter
from typing import TYPE_CHECKING

import aiomqtt
import msgspec
import structlog

from floatkey import protocol
from floatkey.broker import connect, connection_advice, settled
from floatkey.configfile import private_directory_problem
from floatkey.envelope import EnvelopeError, Signer, open_envelope, peek_kid
from floatkey.errors import ConfigError, ProductKeyError, StoreError
from floatkey.logs import redact
from floatkey.productkey import ProductKey, parse_product_key, verify_product_key
from floatkey.protocol import (
    AdminClients,
    AdminCommand,
    AdminRelease,
    AdminResult,
    AdminStatus,
    AdminUnlock,
    ClientRow,
    LicenseInfo,
    SeatDenied,
    SeatGranted,
    SeatLost,
    SeatRelease,
    SeatRenew,
    SeatRenewed,
    SeatRequest,
    SeatRevoked,
    StatusReport,
    UnlockReport,
)
from floatkey.signing import key_id, parse_public_key, public_key_text
from floatkeyd.embedded_broker import embedded_broker
from floatkeyd.identity import load_or_create_identity
from floatkeyd.ledger import Denied, LedgerMode, SeatLedger
from floatkeyd.sdnotify import Notifier
from floatkeyd.store import AuditEntry, Store, StoredLicense

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from floatkeyd.config import LoadedConfig

__all__ = ["DB_FILE", "LOCK_FILE", "Daemon"]

log = structlog.get_logger("floatkeyd")

DB_FILE = "floatkeyd.db"
LOCK_FILE = "floatkeyd.lock"  # held (flock) by the one daemon serving the state directory
#: Admin commands whose ``ts`` is further than this from the daemon's clock are refused.
MAX_CLOCK_SKEW_MS = 60_000
# Capped low: after a broker outage everyone should be back within seconds of its return.
_BACKOFF_START, _BACKOFF_CAP = 0.25, 4.0
_OUTBOX_SIZE, _REPLY_BATCH = 20_000, 1_000
_STORE_RETRY_S = 1.0  # after a failed database write (disk full, locked)
_FLUSH_DELAY = 0.05


def _day(ms: int) -> dt.date:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).date()


def _expiry_instant_ms(key: ProductKey) -> int | None:
    """The moment a key stops being valid: the start of the day after ``expires``, UTC."""
    if key.expires is None:
        return None
    end = dt.datetime.combine(key.expires + dt.timedelta(days=1), dt.time(), dt.UTC)
    return int(end.timestamp() * 1000)


def _license_info(key: ProductKey, licensee: str, organization: str) -> LicenseInfo:
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


class _Refused(Exception):
    """An admin command was refused: reason code and sentence for the reply and audit."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class Daemon:
    """The floatkey license server. ``await Daemon(config).run(stop)`` until ``stop`` is set."""

    def __init__(self, loaded: LoadedConfig, notifier: Notifier | None = None) -> None:
        self.loaded = loaded
        self.config = loaded.config
        self.topics = loaded.topics
        self.notifier = notifier or Notifier()
        self.drops: Counter[str] = Counter()
        self._vendor_key = loaded.vendor_public_key
        self._client: aiomqtt.Client | None = None
        self._ready = asyncio.Event()
        self._license_changed = asyncio.Event()
        self._staged = asyncio.Event()
        self._expiry_moved = asyncio.Event()
        # Seat replies waiting for the `replies` task; bounded, so a flood cannot grow it.
        self._outbox: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(maxsize=_OUTBOX_SIZE)
        self._idle = False
        self._lock_fd = -1  # the state directory lock, taken at start
        self._offline_since: int | None = None
        self._broker_back = asyncio.Event()  # set by _after_outage, for the lease-expiry task
        self._rate_window = 0
        self._rate_counts: Counter[str] = Counter()
        # Filled in by run(): nothing below is valid before the store is open.
        self.store: Store
        self.ledger: SeatLedger
        self._signer: Signer
        self._identity_body: bytes
        self._admin_keys: dict[str, Ed25519PublicKey] = {}
        self._status: LedgerMode = "unlicensed"
        self._generation = 0
        self._revision = 0
        self._latest_ms = 0
        self._key: ProductKey | None = None
        self._license: StoredLicense | None = None
        self._state_payload = b""

    # --- time --------------------------------------------------------------------

    def _now(self) -> int:
        """Wall-clock ms, never earlier than the latest time seen.

        A clock set back must not make an expired license valid again.
        """
        self._latest_ms = max(self._latest_ms, protocol.now_ms())
        return self._latest_ms

    # --- start --------------------------------------------------------------------

    async def _start(self) -> None:
        state_dir = self.loaded.state_dir
        _prepare_state_dir(state_dir)
        self._lock_fd = _take_state_lock(state_dir)
        identity, created = load_or_create_identity(state_dir)
        self._signer = Signer(identity)
        public = public_key_text(identity.public_key())
        log.info(
            "server identity", created=created, fingerprint=self._signer.kid, public_key=public
        )
        self._identity_body = protocol.encode(
            protocol.Identity(server=self.config.server, public_key=public, kid=self._signer.kid),
        )
        self.store = await Store.open(state_dir / DB_FILE)
        stored = await self.store.load()
        self._generation, self._revision = stored.generation, stored.revision
        self._latest_ms = stored.latest_time_ms
        self._status = stored.status
        await self._load_admin_keys(stored.admin_keys)
        await self._reverify(stored.license)
        seats = self._key.seats if self._key else 0
        self.ledger = SeatLedger(
            self._status, seats, self._generation, self.config.lease_seconds * 1000
        )
        for lease in stored.leases:
            self.ledger.restore(lease)
        self._revision += 1
        await self.store.set_revision(self._revision, self._now())
        self._state_payload = self._seal_state()
        log.info(
            "state loaded",
            status=self._status,
            generation=self._generation,
            revision=self._revision,
            leases=len(self.ledger.leases),
            awaiting_release=len(self.ledger.revoked),
        )

    async def _load_admin_keys(self, stored: list[str] | None = None) -> None:
        texts = list(self.config.admin_keys)
        texts += stored if stored is not None else await self.store.admin_keys()
        keys: dict[str, Ed25519PublicKey] = {}
        for text in texts:
            key = parse_public_key(text)
            keys[key_id(key)] = key
        self._admin_keys = keys
        log.info("admin keys loaded", count=len(keys), kids=sorted(keys))

    async def reload_admin_keys(self) -> None:
        """Re-read the admin keys added with ``floatkeyd admin-key add`` (SIGHUP)."""
        await self._load_admin_keys()

    async def _reverify(self, stored: StoredLicense | None) -> None:
        """Check the stored license again; a tampered or invalid one is dropped, loudly."""
        if stored is None:
            return
        now = self._now()
        try:
            key = self._verify(stored.key_text, stored.licensee, stored.organization, now)
        except ProductKeyError as exc:
            if exc.reason == "expired":
                key = parse_product_key(stored.key_text).key
            else:
                await self._drop_stored_license(exc.reason, exc.message, now)
                return
        if (key.seats, key.features, key.serial) != (stored.seats, stored.features, stored.serial):
            await self._drop_stored_license(
                "tampered",
                "The license in the database does not match its product key (seats, features "
                "or serial were edited). The license was not loaded; enter the product key again.",
                now,
            )
            return
        self._key, self._license = key, stored
        if key.is_expired(_day(now)) and self._status != "expired":
            await self._change_license("expired", None, "system", "license.expired", now)

    def _verify(self, text: str, name: str, organization: str, now: int) -> ProductKey:
        """Every product-key check, with today as the daemon's latest time has it."""
        return verify_product_key(
            text, self._vendor_key, name=name, organization=organization, today=_day(now)
        )

    async def _drop_stored_license(self, reason: str, message: str, now: int) -> None:
        log.error("stored license refused", reason=reason, message=message)
        self._key = self._license = None
        await self._change_license(
            "unlicensed", None, "system", "license.reverify", now, outcome="refused", reason=reason
        )

    # --- license changes ----------------------------------------------------------

    async def _change_license(  # noqa: PLR0913 - the change and how to audit it
        self,
        status: LedgerMode,
        new: StoredLicense | None,
        actor: str,
        action: str,
        now: int,
        *,
        outcome: str = "done",
        reason: str = "",
    ) -> int:
        """Commit a new generation, then revoke the old leases. Returns how many."""
        generation, revision = self._generation + 1, self._revision + 1
        detail: dict[str, object] = {"generation": generation, "status": status}
        if new is not None:
            detail |= {
                "serial": new.serial,
                "seats": new.seats,
                "features": list(new.features),
                "licensee": new.licensee,
                "organization": new.organization,
            }
        await self.store.change_license(
            status=status,
            generation=generation,
            revision=revision,
            now=now,
            license_=new,
            admin_kid=actor,
            audit=AuditEntry(actor, action, outcome, reason, detail),  # type: ignore[arg-type]
        )
        self._status, self._generation, self._revision = status, generation, revision
        if new is not None:
            self._license = new
        if status == "unlicensed":
            self._license = None
        told = 0
        if hasattr(self, "ledger"):
            seats = self._key.seats if self._key and status != "unlicensed" else 0
            told = len(self.ledger.change_license(status, seats, generation))
        self._state_payload = self._seal_state()
        self._license_changed.set()
        return told

    def _state(self) -> protocol.State:
        info = None
        if self._key is not None and self._license is not None and self._status != "unlicensed":
            info = _license_info(self._key, self._license.licensee, self._license.organization)
        return protocol.State(
            server=self.config.server,
            revision=self._revision,
            generation=self._generation,
            status=self._status,
            license=info,
        )

    def _seal_state(self) -> bytes:
        return self._signer.seal(self.topics.state, protocol.encode(self._state()))

    async def _publish_state(
        self,
        event: protocol.EventName | None = None,
        told: int = 0,
    ) -> None:
        client = self._client
        if client is None:
            return  # published on (re)connect
        # The event first: it is what connected agents act on at once; the retained
        # state follows for everyone who connects later (or was offline).
        if event is not None:
            body = protocol.Event(
                name=event,
                generation=self._generation,
                revision=self._revision,
                clients_told=told,
            )
            await settled(
                client.publish(
                    self.topics.events,
                    self._signer.seal(self.topics.events, protocol.encode(body)),
                    qos=1,
                )
            )
        await settled(client.publish(self.topics.state, self._state_payload, qos=1, retain=True))

    # --- the MQTT task -----------------------------------------------------------

    async def _mqtt(self, stop: asyncio.Event) -> None:
        backoff = _BACKOFF_START
        options = self.loaded.broker
        identifier = self.config.client_id or f"floatkeyd-{self.config.server}"
        while not stop.is_set():
            try:
                async with connect(
                    options,
                    identifier=identifier,
                    base=self.loaded.base,
                    max_queued_incoming=50_000,
                    # Replies are pipelined a batch at a time, beside events and admin replies.
                    max_in_flight=2 * _REPLY_BATCH,
                ) as client:
                    await client.subscribe(self.topics.seats_wildcard, qos=1)
                    await client.subscribe(self.topics.admin_request, qos=1)
                    # Our own retained topics: to put back anything that overwrote them.
                    await client.subscribe(self.topics.state, qos=1)
                    await client.subscribe(self.topics.identity, qos=1)
                    await client.publish(
                        self.topics.identity, self._identity_body, qos=1, retain=True
                    )
                    await client.publish(self.topics.state, self._state_payload, qos=1, retain=True)
                    self._client = client
                    backoff = _BACKOFF_START
                    self._after_outage()
                    log.info("broker connected", broker=options.describe(), revision=self._revision)
                    if not self._ready.is_set():
                        self._ready.set()
                        self.notifier.ready(self._status_line())
                    else:
                        self.notifier.status(self._status_line())
                    await self._consume(client, stop)
            except (aiomqtt.MqttError, ConfigError) as exc:  # ConfigError: TLS files gone
                self._client = None
                if self._offline_since is None:
                    self._offline_since = self._now()
                    self._broker_back.clear()
                if stop.is_set():
                    break
                delay = random.uniform(backoff / 2, backoff)  # noqa: S311 - jitter, not crypto
                log.warning(
                    "broker unreachable",
                    broker=options.describe(),
                    error=str(exc),
                    advice=connection_advice(str(exc)),
                    retry_in_s=round(delay, 2),
                )
                self.notifier.status(f"Broker {options.describe()} unreachable; retrying")
                await _sleep_or_stop(delay, stop)
                backoff = min(backoff * 2, _BACKOFF_CAP)
            finally:
                self._client = None

    def _after_outage(self) -> None:
        """Give every lease back the time the broker was unreachable.

        No agent could renew while the daemon had no broker, so that time must not count
        against their leases (nor against a will's grace: a broker shutting down sends
        every connected client's will).
        """
        since, self._offline_since = self._offline_since, None
        if since is None:
            return
        self._broker_back.set()
        outage = self._now() - since
        extended = self.ledger.extend_all(outage + self.config.will_grace_seconds * 1000)
        for lease in extended:
            self.store.stage_lease(lease)
        self._staged.set()
        log.info(
            "broker back; leases extended by the outage", outage_ms=outage, leases=len(extended)
        )

    async def _consume(self, client: aiomqtt.Client, stop: asyncio.Event) -> None:
        """Handle messages one at a time until the broker goes or ``stop`` is set.

        ``stop`` is looked at between messages: :meth:`run` cancels this task only while
        it waits for the next message (``_idle``), never in the middle of one.
        """
        self._idle = True
        async for message in client.messages:
            self._idle = False
            await self.handle(message)
            self._idle = True
            if stop.is_set():
                return

    async def handle(self, message: aiomqtt.Message) -> None:
        """Handle one inbound message; nothing in it can raise out of here."""
        topic = message.topic.value
        payload = message.payload
        if len(payload) > self.config.max_payload:
            self._drop("oversized", topic, size=len(payload))
            return
        try:
            if topic == self.topics.admin_request:
                await self._handle_admin(bytes(payload))
                return
            if topic in {self.topics.state, self.topics.identity}:
                await self._guard_retained(topic, bytes(payload))
                return
            seat = self.topics.parse_seat(topic)
            if seat is None:
                self._drop("unknown_topic", topic)
                return
            await self._handle_seat(seat[0], seat[1], bytes(payload))
        except aiomqtt.MqttError:
            raise
        except Exception:
            # A bug must not take the license server down for everyone.
            log.exception("message handling failed", topic=topic)
            self.drops["internal_error"] += 1

    async def _guard_retained(self, topic: str, payload: bytes) -> None:
        """Put our state or identity back if someone else's replaced it on the broker.

        Agents would refuse a forged state anyway (bad signature), but until the daemon
        republished they would have no valid state to read.
        """
        ours = self._state_payload if topic == self.topics.state else self._identity_body
        if payload == ours or self._client is None:
            return
        self._drop("foreign_retained", topic)
        await self._client.publish(topic, ours, qos=1, retain=True)

    def _drop(self, reason: str, topic: str, **context: object) -> None:
        self.drops[reason] += 1
        log.warning("message dropped", reason=reason, topic=topic, **context)

    # --- seats --------------------------------------------------------------------

    def _rate_limited(self, client_id: str) -> bool:
        window = int(time.monotonic())
        if window != self._rate_window:
            self._rate_window, self._rate_counts = window, Counter()
        self._rate_counts[client_id] += 1
        return self._rate_counts[client_id] > self.config.max_requests_per_client

    def _reply(self, client_id: str, body: msgspec.Struct) -> None:
        """Queue a signed reply to one agent; the ``replies`` task sends it.

        The handler does not wait for the broker's PUBACK: that wait, once per message,
        was what limited seat grants (docs/PERFORMANCE.md).
        """
        topic = self.topics.client(client_id)
        try:
            self._outbox.put_nowait((topic, self._signer.seal(topic, protocol.encode(body))))
        except asyncio.QueueFull:
            self._drop("outbox_full", topic)

    async def _send_replies(self) -> None:
        """Publish queued replies, all that are waiting at once (QoS 1, pipelined)."""
        while True:
            batch = [await self._outbox.get()]
            while not self._outbox.empty() and len(batch) < _REPLY_BATCH:
                batch.append(self._outbox.get_nowait())
            client = self._client
            if client is None:
                self.drops["reply_while_disconnected"] += len(batch)
                continue  # the agents ask again after a reconnect
            outcomes = await asyncio.gather(
                *(client.publish(topic, payload, qos=1) for topic, payload in batch),
                return_exceptions=True,
            )
            failed = sum(isinstance(outcome, Exception) for outcome in outcomes)
            if failed:
                self.drops["reply_failed"] += failed
                log.warning("replies not sent", count=failed)

    async def _handle_seat(self, client_id: str, action: str, payload: bytes) -> None:
        topic = f"{self.topics.root}/seats/{client_id}/{action}"
        body: SeatRequest | SeatRenew | SeatRelease
        try:
            if action == "request":
                body = protocol.decode(payload, SeatRequest)
            elif action == "renew":
                body = protocol.decode(payload, SeatRenew)
            else:
                body = protocol.decode(payload, SeatRelease)
        except msgspec.DecodeError as exc:
            self._drop("bad_body", topic, error=str(exc)[:200])
            return
        if body.client != client_id:
            self._drop("client_mismatch", topic, claimed=body.client[:128])
            return
        if self._rate_limited(client_id):
            self._drop("rate_limited", topic, client=client_id)
            return
        now = self._now()
        if isinstance(body, SeatRequest):
            await self._seat_request(body, now)
        elif isinstance(body, SeatRenew):
            lease = self.ledger.renew(client_id, body.lease, now)
            if lease is None:
                self._reply(
                    client_id,
                    SeatLost(
                        lease=body.lease,
                        message="The license server no longer holds this seat; ask again.",
                    ),
                )
                return
            self._stage(lease)
            self._reply(client_id, SeatRenewed(lease=lease.token, expires_at=lease.expires_at))
        else:
            self._seat_release(body, now)

    def _seat_release(self, body: SeatRelease, now: int) -> None:
        client_id = body.client
        if body.lease is None:
            # The MQTT will (it cannot know the lease): the agent may only be cut off
            # by a broker restart, so the seat is kept for a short grace.
            freed = self.ledger.orphan(client_id, now, self.config.will_grace_seconds * 1000)
            self._expiry_moved.set()
            if freed is not None:
                self.store.stage_release(client_id)
                self._staged.set()
            log.info("client gone (will)", client=client_id, freed=freed is not None)
        else:
            released = self.ledger.release(client_id, body.lease)
            if released is not None:
                self.store.stage_release(client_id)
                self._staged.set()
                log.info(
                    "seat released",
                    client=client_id,
                    generation=released.generation,
                    revoked=released.revoked,
                )

    async def _seat_request(self, body: SeatRequest, now: int) -> None:
        decision = self.ledger.request(
            body.client,
            now,
            app=body.app[:128],
            user=body.user[:128],
            host=body.host[:256],
            pid=body.pid,
        )
        if isinstance(decision, Denied):
            log.info(
                "seat denied",
                client=body.client,
                reason=decision.reason,
                in_use=decision.in_use,
                seats=decision.seats,
            )
            self._reply(
                body.client,
                SeatDenied(
                    nonce=body.nonce,
                    reason=decision.reason,
                    message=decision.message,
                    seats=decision.seats,
                    in_use=decision.in_use,
                ),
            )
            return
        lease = decision.lease
        self._stage(lease)
        if decision.fresh:
            log.info(
                "seat granted",
                client=body.client,
                app=lease.app,
                user=lease.user,
                host=lease.host,
                licensed=lease.licensed,
                generation=lease.generation,
                in_use=self.ledger.in_use,
            )
        features = list(self._key.features) if self._key and lease.licensed else []
        self._reply(
            body.client,
            SeatGranted(
                nonce=body.nonce,
                lease=lease.token,
                generation=lease.generation,
                licensed=lease.licensed,
                features=features,
                expires_at=lease.expires_at,
                renew_after_s=self.config.lease_seconds / 3,
            ),
        )

    def _stage(self, lease: object) -> None:
        self.store.stage_lease(lease)  # type: ignore[arg-type]
        self._staged.set()

    # --- admin commands -----------------------------------------------------------

    async def _handle_admin(self, payload: bytes) -> None:
        topic = self.topics.admin_request
        try:
            raw = open_envelope(payload, topic, self._admin_keys)
        except EnvelopeError as exc:
            if exc.reason == "unknown_key":
                await self._load_admin_keys()  # perhaps just added with `admin-key add`
                try:
                    raw = open_envelope(payload, topic, self._admin_keys)
                except EnvelopeError:
                    await self._refuse_unverified(payload, exc)
                    return
            else:
                await self._refuse_unverified(payload, exc)
                return
        kid = peek_kid(payload) or "?"
        try:
            command = protocol.decode_admin_command(raw)
        except msgspec.DecodeError as exc:
            self._drop("bad_admin_body", topic, kid=kid, error=str(exc)[:200])
            return
        if not protocol.CLIENT_ID.fullmatch(command.request_id):
            self._drop("bad_request_id", topic, kid=kid)
            return
        with structlog.contextvars.bound_contextvars(request_id=command.request_id, admin_kid=kid):
            await self._run_admin(command, kid)

    async def _refuse_unverified(self, payload: bytes, exc: EnvelopeError) -> None:
        """Answer a command we cannot trust with ``not_authorized``, if it says where."""
        self._drop(f"admin_{exc.reason}", self.topics.admin_request, kid=exc.kid)
        now = self._now()
        await self.store.audit(
            AuditEntry(
                exc.kid or "?", "admin", "refused", "not_authorized", {"envelope": exc.reason}
            ),
            now,
        )
        try:
            # Unverified: used only to address the refusal, never to act on.
            from floatkey.signing import b64url_decode  # noqa: PLC0415

            envelope = msgspec.json.decode(payload)
            request_id = msgspec.json.decode(b64url_decode(envelope["body"]))["request_id"]
        except Exception:  # noqa: BLE001 - any failure just means nobody to answer
            return
        if isinstance(request_id, str) and protocol.CLIENT_ID.fullmatch(request_id):
            await self._admin_reply(
                AdminResult(
                    request_id=request_id,
                    ok=False,
                    reason="not_authorized",
                    message="This admin key is not authorized on this license server. Authorize "
                    "it with `floatkeyd admin-key add PUBLIC_KEY` on the server.",
                )
            )

    async def _admin_reply(self, result: AdminResult) -> None:
        topic = self.topics.admin_reply(result.request_id)
        if self._client is not None:
            await self._client.publish(
                topic, self._signer.seal(topic, protocol.encode(result)), qos=1
            )

    async def _run_admin(self, command: AdminCommand, kid: str) -> None:
        action = command.__struct_config__.tag
        now = self._now()
        try:
            await self._check_fresh(command, now)
            result = await self._admin_action(command, kid, now)
        except _Refused as refusal:
            log.warning("admin command refused", action=action, reason=refusal.reason)
            detail = (
                {
                    "name": command.name,
                    "organization": command.organization,
                    "key": redact(command.key),
                }
                if isinstance(command, AdminUnlock)
                else {}
            )
            try:
                await self.store.audit(
                    AuditEntry(kid, str(action), "refused", refusal.reason, detail), now
                )
            except sqlite3.Error as exc:  # the refusal stands; say it was not audited
                log.error("refusal not audited: database error", action=action, error=str(exc))
            result = AdminResult(
                request_id=command.request_id,
                ok=False,
                reason=refusal.reason,
                message=refusal.message,
            )
        except sqlite3.Error as exc:
            # Disk full, database locked by another program, ...: the transaction was
            # rolled back and nothing in memory changed; the administrator hears why.
            log.error("admin command failed: database error", action=action, error=str(exc))
            result = AdminResult(
                request_id=command.request_id,
                ok=False,
                reason="store_failed",
                message=f"The license server could not write its database ({exc}); nothing "
                "was changed. Check the server's disk (space, permissions, other programs "
                "holding the database) and try again.",
            )
        await self._admin_reply(result)

    async def _check_fresh(self, command: AdminCommand, now: int) -> None:
        """Refuse a command from a clock too far off, or one seen before (a replay)."""
        if abs(now - command.ts) > MAX_CLOCK_SKEW_MS:
            raise _Refused(
                "clock_skew",
                f"The command's clock is {abs(now - command.ts) // 1000} s away from the "
                "server's (at most 60 s allowed). Check the time on both machines.",
            )
        forget_before = now - 2 * MAX_CLOCK_SKEW_MS
        if not await self.store.remember_request(command.request_id, command.ts, forget_before):
            raise _Refused(
                "replayed",
                "This command was already received once; it was not run again. Send a new command.",
            )

    async def _admin_action(self, command: AdminCommand, kid: str, now: int) -> AdminResult:
        if isinstance(command, AdminUnlock):
            return await self._unlock(command, kid, now)
        if isinstance(command, AdminStatus):
            return AdminResult(request_id=command.request_id, ok=True, status=self.status_report())
        if isinstance(command, AdminClients):
            return AdminResult(request_id=command.request_id, ok=True, clients=self.client_rows())
        return await self._release(command, kid, now)

    async def _unlock(self, command: AdminUnlock, kid: str, now: int) -> AdminResult:
        try:
            key = self._verify(command.key, command.name, command.organization, now)
        except ProductKeyError as exc:
            raise _Refused(exc.reason, exc.message) from None
        text = parse_product_key(command.key).text
        if (
            self._status == "licensed"
            and self._license is not None
            and self._license.key_text == text
            and self._key is not None
        ):
            await self.store.audit(
                AuditEntry(
                    kid, "admin.unlock", "accepted", "already_active", {"serial": key.serial}
                ),
                now,
            )
            return AdminResult(
                request_id=command.request_id,
                ok=True,
                reason="already_active",
                message="This product key is already active. Nothing changed and no client "
                "was shut down.",
                unlock=UnlockReport(
                    changed=False,
                    generation=self._generation,
                    clients_told=0,
                    license=_license_info(key, self._license.licensee, self._license.organization),
                ),
            )
        stored = StoredLicense(
            generation=self._generation + 1,
            key_text=text,
            licensee=command.name.strip(),
            organization=command.organization.strip(),
            serial=key.serial,
            seats=key.seats,
            features=key.features,
            activated_at=now,
        )
        previous, self._key = self._key, key
        try:
            told = await self._change_license(
                "licensed", stored, kid, "admin.unlock", now, outcome="accepted"
            )
        except BaseException:
            self._key = previous  # the store refused the change: nothing changed
            raise
        log.info(
            "license activated",
            serial=key.serial,
            seats=key.seats,
            features=list(key.features),
            generation=self._generation,
            clients_told=told,
        )
        await self._publish_state("license.activated", told)
        self.notifier.status(self._status_line())
        info = _license_info(key, stored.licensee, stored.organization)
        return AdminResult(
            request_id=command.request_id,
            ok=True,
            message=f"The license has been successfully activated: {key.seats} seats, "
            f"features {', '.join(key.features) or '(none)'}. {told} connected "
            f"client{'s were' if told != 1 else ' was'} told to shut down.",
            unlock=UnlockReport(
                changed=True, license=info, generation=self._generation, clients_told=told
            ),
        )

    async def _release(self, command: AdminRelease, kid: str, now: int) -> AdminResult:
        lease = self.ledger.release(command.client)
        if lease is None:
            raise _Refused("unknown_client", f"No client {command.client!r} holds a seat.")
        self.store.stage_release(command.client)
        self._staged.set()
        await self.store.audit(
            AuditEntry(kid, "admin.release", "accepted", "", {"client": command.client}), now
        )
        if self._client is not None and protocol.CLIENT_ID.fullmatch(command.client):
            self._reply(
                command.client,
                SeatRevoked(
                    lease=lease.token,
                    reason="released_by_admin",
                    message="An administrator released this seat; the application must stop.",
                ),
            )
        return AdminResult(
            request_id=command.request_id,
            ok=True,
            message=f"Released the seat of {command.client}.",
        )

    # --- reports ------------------------------------------------------------------

    def status_report(self) -> StatusReport:
        """What ``floatkeyctl status`` shows."""
        state = self._state()
        unlicensed = sum(1 for lease in self.ledger.leases.values() if not lease.licensed)
        return StatusReport(
            server=self.config.server,
            status=self._status,
            license=state.license,
            generation=self._generation,
            revision=self._revision,
            seats_in_use=self.ledger.in_use,
            unlicensed_sessions=unlicensed,
            awaiting_release=len(self.ledger.revoked),
            fingerprint=self._signer.kid,
            dropped=dict(self.drops),
            tasks=len(asyncio.all_tasks()),
            broker=self.loaded.broker.describe(),
        )

    def client_rows(self) -> list[ClientRow]:
        """What ``floatkeyctl clients`` shows."""
        leases = [*self.ledger.leases.values(), *self.ledger.revoked.values()]
        return [
            ClientRow(
                client=lease.client,
                app=lease.app,
                user=lease.user,
                host=lease.host,
                pid=lease.pid,
                licensed=lease.licensed,
                generation=lease.generation,
                since=lease.since,
                expires_at=lease.expires_at,
                revoked=lease.revoked,
            )
            for lease in sorted(leases, key=lambda lease: lease.since)
        ]

    def _status_line(self) -> str:
        if self._status == "unlicensed":
            return "Unlicensed; waiting for a product key"
        seats = self._key.seats if self._key else 0
        return f"{self._status.capitalize()}: {self.ledger.in_use}/{seats} seats in use"

    # --- timers -------------------------------------------------------------------

    async def _lease_expiry(self) -> None:
        while True:
            if self._offline_since is not None:
                # Without a broker nobody can renew: expire nothing until it is back.
                await self._broker_back.wait()
                continue
            self._expiry_moved.clear()
            nxt = self.ledger.next_expiry()
            now = self._now()
            if nxt is None or nxt > now:
                delay = self.config.lease_seconds if nxt is None else (nxt - now) / 1000
                # Woken early when a lease's end moves closer (a will's grace).
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(delay, self.config.lease_seconds) + 0.01):
                        await self._expiry_moved.wait()
                continue
            for lease in self.ledger.expire(now):
                self.store.stage_release(lease.client)
                log.info(
                    "lease expired",
                    client=lease.client,
                    generation=lease.generation,
                    revoked=lease.revoked,
                )
            self._staged.set()

    async def _license_expiry(self) -> None:
        while True:
            self._license_changed.clear()
            deadline = _expiry_instant_ms(self._key) if self._key else None
            now = self._now()
            try:
                if deadline is not None and self._status == "licensed" and now >= deadline:
                    log.warning("license expired", serial=self._key.serial if self._key else None)
                    told = await self._change_license(
                        "expired", None, "system", "license.expired", now
                    )
                    with contextlib.suppress(aiomqtt.MqttError):
                        # Broker gone meanwhile: the new state is published on reconnect
                        # (agents read it then), so this task must not die of it.
                        await self._publish_state("license.expired", told)
                    continue
                await self.store.set_latest_time(now)
            except sqlite3.Error as exc:
                log.error("database write failed; retrying", task="license-expiry", error=str(exc))
                await asyncio.sleep(_STORE_RETRY_S)
                continue
            wait = 600.0 if deadline is None else min(600.0, max(0.0, (deadline - now) / 1000))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait + 0.001):
                    await self._license_changed.wait()

    async def _lease_flush(self) -> None:
        while True:
            await self._staged.wait()
            # Gather a burst into one transaction: each flush costs four hops to the
            # SQLite thread (each waking the event loop) and an fsync. A lease change
            # lost in a crash is only a `seat.lost` and a new request for its agent.
            await asyncio.sleep(_FLUSH_DELAY)
            self._staged.clear()
            try:
                await self.store.flush_leases()
            except sqlite3.Error as exc:
                # The changes stay staged (see Store.flush_leases) and go with the next try.
                log.error("database write failed; retrying", task="lease-flush", error=str(exc))
                await asyncio.sleep(_STORE_RETRY_S)
                self._staged.set()

    async def _watchdog(self) -> None:
        interval = self.notifier.watchdog_interval
        if interval is None:
            return
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval)

    # --- lifecycle ----------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _broker(self) -> AsyncIterator[None]:
        if self.config.broker is not None:
            yield
            return
        embedded = self.config.embedded_broker
        async with embedded_broker(embedded.host, embedded.port):
            log.info("embedded broker started", host=embedded.host, port=embedded.port)
            yield

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set, then shut down in order. Raises on a bad start."""
        await self._start()
        try:
            async with self._broker(), asyncio.TaskGroup() as tasks:
                mqtt = tasks.create_task(self._mqtt(stop), name="mqtt")
                helpers = [
                    tasks.create_task(self._send_replies(), name="replies"),
                    tasks.create_task(self._lease_expiry(), name="lease-expiry"),
                    tasks.create_task(self._license_expiry(), name="license-expiry"),
                    tasks.create_task(self._lease_flush(), name="lease-flush"),
                    tasks.create_task(self._watchdog(), name="watchdog"),
                ]
                await stop.wait()
                self.notifier.stopping()
                log.info("stopping")
                # The MQTT task finishes the message in hand, then disconnects cleanly.
                if self._idle:
                    mqtt.cancel()
                await asyncio.wait({mqtt})
                for task in helpers:
                    task.cancel()
        finally:
            await self.store.close()
            self.notifier.close()
            os.close(self._lock_fd)  # releases the state directory for the next daemon
            log.info("stopped", drops=dict(self.drops))

    async def wait_ready(self) -> None:
        """Return once the broker connection and the state publication are up."""
        await self._ready.wait()


def _take_state_lock(state_dir: Path) -> int:
    """Hold the state directory for the life of this process; return the lock's fd.

    Two daemons over one database would each keep a ledger and grant every seat: an
    oversell. ``flock`` goes with the process, however it ends.
    """
    fd = os.open(state_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise StoreError(
            f"Another floatkeyd is already serving {state_dir} (pid {holder}). One daemon "
            "per state directory: two would each grant every seat. Stop the other one "
            "first (systemctl stop floatkeyd)."
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def _prepare_state_dir(path: Path) -> None:
    """Create the state directory (0700) or say clearly why it cannot be used."""
    why = private_directory_problem(path)
    if why is not None:
        raise ConfigError(
            f"state_dir = '{path}': cannot use it as the state directory ({why}). Name a "
            "directory floatkeyd may create and write (under systemd: StateDirectory=)."
        )


async def _sleep_or_stop(delay: float, stop: asyncio.Event) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(delay):
            await stop.wait()
