"""The admin desk: signed admin commands in, audited results out.

Every command on the admin topic is opened against the admin keyring (the keys in the
config plus those added with ``floatkeyd admin-key add``), decoded, checked for
freshness against the machine's real clock and for replay, then carried out. Every
command that changes something (unlock, release) and every refusal is audited; the
read-only ``status``, ``clients``, ``audit`` and ``usage`` are not (they change nothing, and
floatkeyctl polls ``status`` while it waits for clients to shut down).
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections import Counter
from typing import TYPE_CHECKING, Any, Literal

import msgspec
import structlog

from floatkey import protocol
from floatkey.envelope import EnvelopeError, open_envelope, peek, peek_kid
from floatkey.errors import ProductKeyError
from floatkey.logs import redact
from floatkey.protocol import (
    AdminAudit,
    AdminClients,
    AdminCommand,
    AdminRelease,
    AdminResult,
    AdminStatus,
    AdminUnlock,
    AdminUsage,
    AuditRow,
    AuditVerdict,
    StatusReport,
    UnlockReport,
    UsageBucket,
    UsageReport,
    UsageSummary,
)
from floatkey.signing import key_id, parse_public_key
from floatkeyd.auditchain import verify_chain
from floatkeyd.drops import clip
from floatkeyd.errors import Refused
from floatkeyd.store import AuditEntry
from floatkeyd.unlockbox import BoxError
from floatkeyd.usage import MAX_BUCKETS, Answer, Question, TooManyBuckets

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from floatkey.envelope import Signer
    from floatkeyd.authority import LicenseAuthority
    from floatkeyd.clock import Clock
    from floatkeyd.drops import Drops
    from floatkeyd.expiring import ExpiryWarnings
    from floatkeyd.link import Link
    from floatkeyd.seats import SeatDesk
    from floatkeyd.store import Store
    from floatkeyd.unlockbox import UnlockBox
    from floatkeyd.usagelog import UsageHistory

__all__ = ["MAX_CLOCK_SKEW_MS", "AdminDesk", "Keyring"]

log = structlog.get_logger("floatkeyd")

#: Admin commands whose ``ts`` is further than this from the server's clock are refused.
MAX_CLOCK_SKEW_MS = 60_000
_AUDIT_PAGE_BYTES = 40_000
_KID = re.compile(r"[0-9a-f]{16}")


class Keyring:
    """The admin public keys this server trusts, by key id."""

    def __init__(self, configured: list[str], store: Store) -> None:
        self._configured = configured
        self._store = store
        self.keys: dict[str, Ed25519PublicKey] = {}
        self._version = -1  # the database's data_version at the last load

    async def reload(self) -> None:
        """Read the configured and the stored keys again. A damaged stored key is skipped.

        Raises ``sqlite3.Error`` (the old keys stay).
        """
        keys: dict[str, Ed25519PublicKey] = {}
        texts = [*self._configured, *await self._store.admin_keys()]
        for text in texts:
            try:
                key = parse_public_key(text)
            except ValueError as exc:
                log.error("admin key skipped: not a public key", key=clip(text, 40), error=str(exc))
                continue
            keys[key_id(key)] = key
        self.keys = keys
        log.info("admin keys loaded", count=len(keys), kids=sorted(keys))

    async def reload_if_changed(self) -> bool:
        """Reload if another process changed the database since the last look.

        That is a key added or removed with ``floatkeyd admin-key``. Returns whether it
        reloaded. One cheap pragma per admin command, not a reload: a flood of commands must not
        make the daemon parse its keyring for each.
        """
        version = await self._store.changed_elsewhere()
        if version == self._version:
            return False
        self._version = version
        await self.reload()
        return True


class AdminDesk:
    """Opens, checks, carries out, audits and answers admin commands."""

    def __init__(  # noqa: PLR0913 - wired once by the daemon's factory
        self,
        *,
        topics: protocol.Topics,
        keyring: Keyring,
        store: Store,
        clock: Clock,
        authority: LicenseAuthority,
        seats: SeatDesk,
        usage: UsageHistory,
        signer: Signer,
        link: Link,
        drops: Drops,
        broker: str,
        feature_names: dict[str, str],
        unlock_box: UnlockBox,
        expiring: ExpiryWarnings,
    ) -> None:
        self._topics = topics
        self.keyring = keyring
        self._store = store
        self._clock = clock
        self._authority = authority
        self._seats = seats
        self._usage = usage
        self._signer = signer
        self._link = link
        self._drops = drops
        self._broker = broker
        self._feature_names = feature_names
        self._unlock_box = unlock_box
        self._expiring = expiring
        # Unverifiable commands are audited once per reason per minute, then counted.
        self._refusal_minute = -1
        self._refusals: Counter[str] = Counter()
        #: Commands since start by (action, outcome: ``ok`` or the refusal's reason), for
        #: the metrics; unverifiable ones as ``("unverified", "not_authorized")``.
        self.commands: Counter[tuple[str, str]] = Counter()

    async def record(
        self, action: str, outcome: Literal["done", "refused"], reason: str, detail: dict[str, Any]
    ) -> None:
        """Audit a change the daemon made on its own (a reload), as ``system``."""
        try:
            await self._store.audit(
                AuditEntry("system", action, outcome, reason, detail), self._clock.now()
            )
        except sqlite3.Error as exc:
            log.error("not audited: database error", action=action, error=str(exc))

    # --- inbound ------------------------------------------------------------------

    async def handle(self, payload: bytes) -> None:
        """One message on the admin request topic."""
        topic = self._topics.admin_request
        # A key added or taken back with `floatkeyd admin-key` counts from the next command.
        await self.keyring.reload_if_changed()
        try:
            raw = open_envelope(payload, topic, self.keyring.keys)
        except EnvelopeError as exc:
            await self._refuse_unverified(payload, exc)
            return
        kid = peek_kid(payload) or "?"
        try:
            command = protocol.decode_admin_command(raw)
        except msgspec.DecodeError as exc:
            self._drops("bad_admin_body", topic, kid=kid, error=exc)
            return
        if not command.reply_to:
            self._drops("no_reply_to", topic, kid=kid)  # nowhere private to answer
            return
        # The audit's actor: the admin key, and the person a tool (the console) acts for.
        actor = f"{command.user} via {kid}" if command.user else kid
        with structlog.contextvars.bound_contextvars(request_id=command.request_id, admin_kid=kid):
            result = await self._run(command, actor)
        self.commands[
            str(command.__struct_config__.tag), result.reason if not result.ok else "ok"
        ] += 1
        await self._reply(command.reply_to, result)

    async def _run(self, command: AdminCommand, kid: str) -> AdminResult:
        action = command.__struct_config__.tag
        try:
            await self._check_fresh(command)
            return await self._carry_out(command, kid)
        except Refused as refusal:
            log.warning("admin command refused", action=action, reason=refusal.code)
            detail = (
                {"name": clip(command.name), "organization": clip(command.organization)}
                if isinstance(command, AdminUnlock)
                else {}
            ) | refusal.detail
            try:
                await self._store.audit(
                    AuditEntry(kid, str(action), "refused", refusal.code, detail), self._clock.now()
                )
            except sqlite3.Error as exc:  # the refusal stands; say it was not audited
                log.error("refusal not audited: database error", action=action, error=str(exc))
            return AdminResult(
                request_id=command.request_id,
                ok=False,
                reason=refusal.code,
                message=refusal.message,
            )
        except sqlite3.Error as exc:
            # Disk full, database locked by another program, ...: the transaction was
            # rolled back and nothing in memory changed; the administrator hears why.
            log.error("admin command failed: database error", action=action, error=str(exc))
            return AdminResult(
                request_id=command.request_id,
                ok=False,
                reason="store_failed",
                message=f"The license server could not write its database ({exc}); nothing "
                "was changed. Check the server's disk (space, permissions, other programs "
                "holding the database) and try again.",
            )

    async def _check_fresh(self, command: AdminCommand) -> None:
        """Refuse a command from a clock too far off either way, or one seen before."""
        wall = self._clock.wall()
        skew = command.ts - wall
        if abs(skew) > MAX_CLOCK_SKEW_MS:
            direction = "ahead of" if skew > 0 else "behind"
            raise Refused(
                "clock_skew",
                f"The command's clock is {abs(skew) // 1000} s {direction} the server's (at "
                "most 60 s allowed). Check the time on both machines.",
            )
        forget_before = wall - 2 * MAX_CLOCK_SKEW_MS
        if not await self._store.remember_request(command.request_id, command.ts, forget_before):
            raise Refused(
                "replayed",
                "This command was already received once; it was not run again. Send a new command.",
            )

    async def _carry_out(self, command: AdminCommand, kid: str) -> AdminResult:
        request_id = command.request_id
        if isinstance(command, AdminStatus):
            return AdminResult(request_id=request_id, ok=True, status=self.status_report())
        if isinstance(command, AdminClients):
            return AdminResult(
                request_id=request_id,
                ok=True,
                clients=self._seats.client_rows(),
                denials=list(self._seats.denials),
                queue=self._seats.queue_rows(),
            )
        if isinstance(command, AdminRelease):
            return await self._release(command, kid)
        if isinstance(command, AdminAudit):
            return await self._audit_log(command)
        if isinstance(command, AdminUsage):
            return await self._usage_report(command)
        return await self._unlock(command, kid)

    async def _unlock(self, command: AdminUnlock, kid: str) -> AdminResult:
        if command.sealed_key is None:
            raise Refused(
                "cleartext_key",
                "The product key was sent over the broker unencrypted, so it was not used. "
                "Unlock with a current floatkeyctl (it seals the key to this server); if "
                "the key may have been read on the way, ask the vendor for a new one.",
            )
        try:
            key_text = self._unlock_box.open(command.sealed_key, command.request_id)
        except BoxError:
            raise Refused(
                "unreadable_key",
                "The product key was sealed for another server, or damaged on the way; "
                "nothing was changed. Run the unlock again.",
            ) from None
        try:
            done = await self._authority.activate(key_text, command.name, command.organization, kid)
        except ProductKeyError as exc:
            raise Refused(exc.reason, exc.message, {"key": redact(key_text)}) from None
        report = UnlockReport(
            changed=done.changed,
            license=done.info,
            generation=done.generation,
            clients_told=done.clients_told,
        )
        if not done.changed:
            return AdminResult(
                request_id=command.request_id,
                ok=True,
                reason="already_active",
                message="This product key is already active. Nothing changed and no client "
                "was shut down.",
                unlock=report,
            )
        told, info = done.clients_told, done.info
        return AdminResult(
            request_id=command.request_id,
            ok=True,
            message=f"The license has been successfully activated: {info.seats} seats, "
            f"features {self._features_text(info.features)}. {told} connected "
            f"client{'s were' if told != 1 else ' was'} told to shut down.",
            unlock=report,
        )

    async def _audit_log(self, command: AdminAudit) -> AdminResult:
        """A page of the audit log, or the verdict of a walk of its chain (read-only)."""
        if command.verify:
            rows, head = await self._store.audit_log.chain()
            # Hashing 100,000 rows takes a moment: not in the event loop.
            found = await asyncio.to_thread(verify_chain, rows, head, self._signer.public_key)
            verdict = AuditVerdict(
                intact=found.intact, rows=found.rows, message=found.message, bad_seq=found.bad_seq
            )
            return AdminResult(request_id=command.request_id, ok=True, verdict=verdict)
        rows = await self._store.audit_log.rows(
            after_seq=command.after_seq,
            since_ts=command.since,
            action=command.action,
            limit=command.limit,
            outcome=command.outcome,
            before_seq=command.before_seq,
            newest_first=command.newest_first,
        )
        # A page must fit in one MQTT message (Mosquitto's max_packet_size, the clients'
        # limits): cut it by size; the reader asks for the next page after the last row.
        size, fitting = 0, 0
        for row in rows:
            size += len(row.detail) + len(row.actor) + len(row.reason) + 160
            if size > _AUDIT_PAGE_BYTES and fitting:
                break
            fitting += 1
        rows = rows[:fitting]
        page = [
            AuditRow(
                seq=r.seq,
                ts=r.ts,
                actor=r.actor,
                action=r.action,
                outcome=r.outcome,
                reason=r.reason,
                detail=r.detail,
            )
            for r in rows
        ]
        return AdminResult(request_id=command.request_id, ok=True, audit=page)

    async def _usage_report(self, command: AdminUsage) -> AdminResult:
        """Seat usage per bucket and the summary (read-only, not audited)."""
        now = self._clock.now()
        if command.until and command.until <= command.since:
            raise Refused(
                "bad_range",
                "The period asked for ends before it begins: give an end (--until) after "
                "its start (--since).",
            )
        question = Question(
            since=command.since,
            until=command.until or now,
            bucket=command.bucket,
            group_by="" if command.group_by == "none" else command.group_by,
            now=now,
        )
        try:
            answer = await self._usage.answer(question)
        except TooManyBuckets as exc:
            raise Refused(
                "too_many_buckets",
                f"That period has {exc.count} {command.bucket}s; one answer holds at most "
                f"{MAX_BUCKETS}. Ask for a shorter period (--since, --until) or longer buckets "
                "(--by day, week or month).",
            ) from None
        except sqlite3.Error as exc:
            raise Refused(
                "store_failed",
                f"The license server could not read its usage history ({exc}). Check the "
                "server's disk and its log, and ask again.",
            ) from None
        report = _usage_report(answer, command)
        return AdminResult(request_id=command.request_id, ok=True, usage=report)

    async def _release(self, command: AdminRelease, kid: str) -> AdminResult:
        ledger = self._seats.ledger
        held = ledger.leases.get(command.client) or ledger.revoked.get(command.client)
        borrowed = held is not None and held.borrowed
        if not await self._seats.release_by_admin(command.client, kid):
            raise Refused("unknown_client", f"No client {clip(command.client)!r} holds a seat.")
        message = f"Released the seat of {command.client}."
        if borrowed:
            message += (
                " It was a borrowed seat: the computer that borrowed it keeps running under its "
                "token until it next reaches the license server (then it stops) or the borrow "
                "ends; the seat counts as free from now on."
            )
        return AdminResult(request_id=command.request_id, ok=True, message=message)

    async def _refuse_unverified(self, payload: bytes, exc: EnvelopeError) -> None:
        """Answer a command we cannot trust with ``not_authorized``, if it says where."""
        kid = exc.kid if exc.kid is not None and _KID.fullmatch(exc.kid) else "invalid"
        self.commands["unverified", "not_authorized"] += 1
        self._drops(f"admin_{exc.reason}", self._topics.admin_request, kid=kid)
        await self._audit_unverified(exc.reason, kid)
        address = _unverified_address(payload)
        if address is not None:
            # Queued, not awaited: a flood of these must not hold up seat messages.
            self._reply_later(
                address[0],
                AdminResult(
                    request_id=address[1],
                    ok=False,
                    reason="not_authorized",
                    refused=protocol.envelope_digest(payload),
                    message="This admin key is not authorized on this license server. Authorize "
                    "it with `floatkeyd admin-key add PUBLIC_KEY` on the server.",
                ),
            )

    async def _audit_unverified(self, reason: str, kid: str) -> None:
        """One audit row per reason per minute; the rest are counted into the next row.

        Anyone who can publish on the admin topic can send unverifiable commands as fast
        as the broker carries them: one row each would grow the database without bound.
        """
        now = self._clock.now()
        minute = now // 60_000
        if minute != self._refusal_minute:
            more = {r: n - 1 for r, n in self._refusals.items() if n > 1}
            if more:
                entry = AuditEntry("various", "admin", "refused", "not_authorized", {"more": more})
                await self._store.audit(entry, now)
            self._refusal_minute, self._refusals = minute, Counter()
        self._refusals[reason] += 1
        if self._refusals[reason] == 1:
            entry = AuditEntry(kid, "admin", "refused", "not_authorized", {"envelope": reason})
            await self._store.audit(entry, now)

    def _reply_later(self, reply_to: str, result: AdminResult) -> None:
        topic = self._topics.admin_reply(reply_to, result.request_id)
        self._link.send(topic, self._signer.seal(topic, protocol.encode(result)))

    async def _reply(self, reply_to: str, result: AdminResult) -> None:
        topic = self._topics.admin_reply(reply_to, result.request_id)
        await self._link.publish(topic, self._signer.seal(topic, protocol.encode(result)))

    # --- reports ------------------------------------------------------------------

    def _features_text(self, features: list[str]) -> str:
        names = self._feature_names
        return ", ".join(names.get(feature, feature) for feature in features) or "(none)"

    def status_report(self) -> StatusReport:
        """What ``floatkeyctl status`` shows."""
        authority, ledger = self._authority, self._seats.ledger
        unlicensed = sum(1 for lease in ledger.leases.values() if not lease.licensed)
        return StatusReport(
            server=self._topics.server,
            status=authority.status,
            license=authority.info,
            generation=authority.generation,
            revision=authority.revision,
            seats_in_use=ledger.in_use,
            unlicensed_sessions=unlicensed,
            awaiting_release=ledger.awaiting_release(authority.generation - 1),
            fingerprint=self._signer.kid,
            dropped=dict(self._drops.counts),
            tasks=len(asyncio.all_tasks()),
            broker=self._broker,
            admin_keys=len(self.keyring.keys),
            unlock_key=self._unlock_box.public_text,
            feature_names=self._feature_names,
            days_left=self._expiring.days_left(),
            expiring=self._expiring.within_warning(),
        )


def _usage_report(answer: Answer, command: AdminUsage) -> UsageReport:
    """The protocol's form of a usage answer."""
    buckets = []
    for row in answer.rows:
        fig, whole = row.fig, row.group is None
        buckets.append(
            UsageBucket(
                start=row.start,
                group=row.group,
                peak=fig.peak,
                peak_at=fig.peak_at,
                average=round(row.average, 3),
                users=row.users,
                grants=fig.grants,
                denials=dict(sorted(fig.denials.items())),
                outstanding_peak=fig.waiting_peak,
                demand_peak=fig.demand_peak,
                peak_seats=fig.peak_seats if whole else 0,
                seats=fig.seats_end if whole else 0,
                at_limit_ms=fig.limit_ms if whole else 0,
                limit_hits=fig.limit_hits if whole else 0,
                waits=fig.waits,
                queued_ms=fig.wait_ms,
                queued_longest_ms=fig.wait_longest_ms,
            )
        )
    summary = answer.summary
    return UsageReport(
        since=answer.start,
        until=answer.end,
        bucket=command.bucket,
        group_by=command.group_by,
        buckets=buckets,
        summary=UsageSummary(
            peak=summary.peak,
            peak_at=summary.peak_at,
            peak_seats=summary.peak_seats,
            seats=summary.seats,
            limit_hits=summary.limit_hits,
            at_limit_ms=summary.limit_ms,
            grants=summary.grants,
            denials=dict(sorted(summary.denials.items())),
            would_serve=summary.demand_peak,
            users=summary.users,
            waits=summary.waits,
            queued_ms=summary.wait_ms,
            queued_longest_ms=summary.wait_longest_ms,
        ),
        groups_omitted=answer.groups_omitted,
    )


def _unverified_address(payload: bytes) -> tuple[str, str] | None:
    """``(reply_to, request_id)`` of a command we cannot verify: only to address the refusal."""
    peeked = peek(payload)
    if peeked is None:
        return None
    try:
        body = msgspec.json.decode(peeked[1])
        reply_to, request_id = body["reply_to"], body["request_id"]
    except Exception:  # noqa: BLE001 - any failure just means nobody to answer
        return None
    if all(isinstance(v, str) and protocol.CLIENT_ID.fullmatch(v) for v in (reply_to, request_id)):
        return reply_to, request_id
    return None
