"""The daemon's SQLite database (WAL, through aiosqlite).

What must survive a restart lives here: the license history with each key's text, the
generation and revision counters, seat leases, authorized admin keys, the admin request
ids already seen, the append-only audit log, and the seat usage history (``usagelog``).

License changes are one transaction each, committed before anything is published about
them. Lease changes are frequent and cheap to lose (an agent whose lease the daemon
forgot is told ``seat.lost`` and asks again), so they are staged in memory, coalesced per
client, and written in one transaction per burst by :meth:`Store.flush_leases`, with the
usage events of the same decisions (and the denials staged since the last burst).
Renewals are not written one by one: the meta value ``renewals_before_ms`` bounds when
the latest unwritten one can have been, and the ends of the lease rows flagged renewed
since written (``leases.renewed``) are recomputed from it at start
(``floatkeyd.seats.restored_lease_end``); a clean stop writes every lease exactly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Self

import aiosqlite

from floatkeyd.auditlog import AuditLog, chain_existing_rows
from floatkeyd.errors import StoreError
from floatkeyd.ledger import Lease, Waiter
from floatkeyd.usagelog import UsageLog, start_usage

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from pathlib import Path

    from floatkey.envelope import Signer
    from floatkeyd.usage import UsageEvent

__all__ = ["AuditEntry", "Store", "StoredLicense", "StoredState"]

Status = Literal["unlicensed", "licensed", "expired"]

# Each entry migrates the schema from version N to N+1; PRAGMA user_version records N.
_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) STRICT;
    INSERT INTO meta VALUES ('generation', '0'), ('revision', '0'), ('status', 'unlicensed'),
                            ('latest_time_ms', '0');
    CREATE TABLE licenses (
        id INTEGER PRIMARY KEY,
        generation INTEGER NOT NULL,
        key_text TEXT NOT NULL,
        licensee TEXT NOT NULL,
        organization TEXT NOT NULL,
        serial TEXT NOT NULL,
        seats INTEGER NOT NULL,
        features TEXT NOT NULL,
        activated_at INTEGER NOT NULL,
        admin_kid TEXT NOT NULL,
        active INTEGER NOT NULL
    ) STRICT;
    CREATE UNIQUE INDEX one_active_license ON licenses (active) WHERE active = 1;
    CREATE TABLE leases (
        client TEXT PRIMARY KEY,
        token TEXT NOT NULL,
        generation INTEGER NOT NULL,
        licensed INTEGER NOT NULL,
        since INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        app TEXT NOT NULL,
        user TEXT NOT NULL,
        host TEXT NOT NULL,
        pid INTEGER NOT NULL,
        revoked INTEGER NOT NULL
    ) STRICT;
    CREATE TABLE admin_keys (
        kid TEXT PRIMARY KEY,
        public_key TEXT NOT NULL,
        added_at INTEGER NOT NULL
    ) STRICT;
    CREATE TABLE seen_requests (request_id TEXT PRIMARY KEY, ts INTEGER NOT NULL) STRICT;
    CREATE INDEX seen_requests_ts ON seen_requests (ts);
    CREATE TABLE audit (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        ts INTEGER NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        outcome TEXT NOT NULL,
        reason TEXT NOT NULL,
        detail TEXT NOT NULL
    ) STRICT;
    CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
    CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
    """,
    # 2: the broker login each lease was asked under (seats per login).
    """
    ALTER TABLE leases ADD COLUMN login TEXT NOT NULL DEFAULT '';
    """,
    # 3: the audit log's hash chain and its signed head (floatkeyd.auditchain). The
    # rows already there are chained by _chain_existing_rows in the same transaction.
    """
    DROP TRIGGER audit_no_update;
    ALTER TABLE audit ADD COLUMN hash TEXT NOT NULL DEFAULT '';
    CREATE TABLE audit_head (
        one INTEGER PRIMARY KEY CHECK (one = 1),
        seq INTEGER NOT NULL,
        hash TEXT NOT NULL,
        kid TEXT NOT NULL,
        signature TEXT NOT NULL,
        signed_at INTEGER NOT NULL
    ) STRICT;
    """,
    # 4: the seat usage history (floatkeyd.usagelog): events, hourly aggregates, and the
    # fold's checkpoint, started by start_usage in the same transaction.
    """
    CREATE TABLE usage_events (
        seq INTEGER PRIMARY KEY,
        at INTEGER NOT NULL,
        kind TEXT NOT NULL,
        reason TEXT NOT NULL,
        client TEXT NOT NULL,
        login TEXT NOT NULL,
        app TEXT NOT NULL,
        user TEXT NOT NULL,
        host TEXT NOT NULL,
        generation INTEGER NOT NULL,
        seats INTEGER NOT NULL,
        n INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX usage_events_at ON usage_events (at);
    CREATE TABLE usage_hours (
        hour INTEGER NOT NULL,
        dim TEXT NOT NULL,
        name TEXT NOT NULL,
        held_start INTEGER NOT NULL,
        held_end INTEGER NOT NULL,
        peak INTEGER NOT NULL,
        peak_at INTEGER NOT NULL,
        peak_seats INTEGER NOT NULL,
        seat_ms INTEGER NOT NULL,
        limit_ms INTEGER NOT NULL,
        limit_hits INTEGER NOT NULL,
        grants INTEGER NOT NULL,
        denials TEXT NOT NULL,
        waiting_peak INTEGER NOT NULL,
        demand_peak INTEGER NOT NULL,
        seats_start INTEGER NOT NULL,
        seats_end INTEGER NOT NULL,
        PRIMARY KEY (hour, dim, name)
    ) STRICT, WITHOUT ROWID;
    CREATE TABLE usage_fold (
        one INTEGER PRIMARY KEY CHECK (one = 1),
        until INTEGER NOT NULL,
        kept_from INTEGER NOT NULL,
        last_seq INTEGER NOT NULL,
        state TEXT NOT NULL
    ) STRICT;
    """,
    """
    CREATE TABLE queue (
        client TEXT PRIMARY KEY,
        token TEXT NOT NULL,
        nonce TEXT NOT NULL,
        generation INTEGER NOT NULL,
        since INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        app TEXT NOT NULL,
        user TEXT NOT NULL,
        host TEXT NOT NULL,
        pid INTEGER NOT NULL,
        login TEXT NOT NULL,
        reports_activity INTEGER NOT NULL
    ) STRICT;
    """,
    # 6: the time spent in the seat queue, per hour (docs/USAGE.md).
    """
    ALTER TABLE usage_hours ADD COLUMN waits INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE usage_hours ADD COLUMN wait_ms INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE usage_hours ADD COLUMN wait_longest_ms INTEGER NOT NULL DEFAULT 0;
    """,
    # 7: borrowed seats (floatkeyd.borrowdesk), written before their token is sent.
    """
    CREATE TABLE borrows (
        client TEXT PRIMARY KEY,
        token TEXT NOT NULL,
        generation INTEGER NOT NULL,
        since INTEGER NOT NULL,
        ends_at INTEGER NOT NULL,
        app TEXT NOT NULL,
        user TEXT NOT NULL,
        host TEXT NOT NULL,
        host_id TEXT NOT NULL,
        login TEXT NOT NULL
    ) STRICT;
    """,
    # 8: whether a lease may have been renewed since its row was written (issue 17): only
    # such a row is extended by the bound on unwritten renewals at start. Rows already
    # there may have been: 1.
    """
    ALTER TABLE leases ADD COLUMN renewed INTEGER NOT NULL DEFAULT 1;
    """,
)
SCHEMA_VERSION = len(_MIGRATIONS)
_CHAIN_SCHEMA = 3  # the migration that starts the audit chain
_USAGE_SCHEMA = 4  # the migration that starts the usage history


@dataclass(frozen=True, slots=True)
class StoredLicense:
    """The active license row: the key text is the truth, the rest must agree with it."""

    generation: int
    key_text: str
    licensee: str
    organization: str
    serial: str
    seats: int
    features: tuple[str, ...]
    activated_at: int


@dataclass(frozen=True, slots=True)
class StoredState:
    """Everything the daemon reads at start."""

    generation: int
    revision: int
    status: Status
    latest_time_ms: int
    license: StoredLicense | None
    leases: list[Lease]
    admin_keys: list[str]
    #: The clients waiting for a seat, first in line first.
    queue: list[Waiter] = field(default_factory=list)
    #: No renewal left unwritten was later than this (Unix ms; 0: none was left unwritten).
    renewals_before_ms: int = 0
    #: Clients whose lease row was not renewed since it was written (extended at the
    #: last start, and not renewed since): the bound does not apply to them.
    unrenewed: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One line of the audit log."""

    actor: str
    action: str
    outcome: Literal["accepted", "refused", "done"]
    reason: str = ""
    detail: dict[str, Any] | None = None


_LEASE_COLUMNS = (
    "client, token, generation, licensed, since, expires_at, app, user, host, pid, revoked, "
    "login, renewed"
)


def _lease_row(lease: Lease, renewed: int = 1) -> tuple[object, ...]:
    """A lease as a row; ``renewed`` 0 only for a row written at start, its end restored.

    Every ordinary write is 1: the lease may be renewed after it, unwritten.
    """
    return (
        lease.client,
        lease.token,
        lease.generation,
        int(lease.licensed),
        lease.since,
        lease.expires_at,
        lease.app,
        lease.user,
        lease.host,
        lease.pid,
        int(lease.revoked),
        lease.login,
        renewed,
    )


_QUEUE_COLUMNS = (
    "client, token, nonce, generation, since, expires_at, seq, app, user, host, pid, login, "
    "reports_activity"
)


def _waiter_row(w: Waiter) -> tuple[object, ...]:
    return (
        w.client,
        w.token,
        w.nonce,
        w.generation,
        w.since,
        w.expires_at,
        w.seq,
        w.app,
        w.user,
        w.host,
        w.pid,
        w.login,
        int(w.reports_activity),
    )


class Store:
    """The daemon's database. ``store = await Store.open(path)``; ``await store.close()``.

    Also an async context manager (``async with await Store.open(path) as store``).
    """

    def __init__(self, db: aiosqlite.Connection, signer: Signer | None, path: Path) -> None:
        self._db = db
        self._staged: dict[str, Lease | None] = {}
        self._staged_queue: dict[str, Waiter | None] = {}
        self._staged_renewals_before: int | None = None
        # Staged leases to be written "not renewed since" (a will's grace): no bound.
        self._staged_unrenewed: set[str] = set()
        #: The bound on unwritten renewals as committed (Unix ms; 0: none).
        self.renewals_before_committed = 0
        # Run once what is staged now has been committed, by whichever flush commits it
        # (the seat desk's, the usage fold's, a license change's): held renewal replies.
        self._after_commit: list[Callable[[], None]] = []
        # One connection, several tasks: transactions must not interleave.
        self._lock = asyncio.Lock()
        #: Transactions that failed since start (disk full, locked), for the metrics.
        self.write_failures = 0
        #: The audit table as a hash chain (appended to inside this store's transactions).
        self.audit_log = AuditLog(db, signer, self._lock)
        #: Seat usage events (staged with the leases, written in the same transactions).
        self.usage_log = UsageLog(db, path)

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._lock:
            try:
                # Inside the try: a task cancelled while BEGIN runs in the SQLite thread
                # must still roll it back (a shutdown found a transaction left open).
                await self._db.execute("BEGIN IMMEDIATE")
                yield self._db
                await self._db.execute("COMMIT")
            except BaseException as exc:
                if isinstance(exc, sqlite3.Error):
                    self.write_failures += 1
                # Also after a failed COMMIT (disk full, locked): never leave it open.
                # The ROLLBACK runs after whatever the thread still had to do.
                with contextlib.suppress(sqlite3.Error):
                    await self._db.execute("ROLLBACK")
                raise

    @classmethod
    async def open(cls, path: Path, signer: Signer | None = None) -> Store:
        """Open (creating and migrating as needed) the database at ``path``.

        ``signer`` (the server key) signs the audit chain's head with every audit row; a
        store opened without it may read but not write audit rows (``RuntimeError``).
        """
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fresh = not path.exists()  # noqa: ASYNC240 - once, at start, before serving
        if fresh:
            # Created 0600 before SQLite touches it: the database holds the product key.
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        try:
            db = await aiosqlite.connect(path, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(f"Cannot open the database {path}: {exc}.") from None
        try:
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA synchronous=FULL")
            await db.execute("PRAGMA foreign_keys=ON")
            store = cls(db, signer, path)
            await store._migrate()
            await store.usage_log.load()
        except sqlite3.DatabaseError as exc:
            await db.close()  # its thread would keep the process alive
            raise StoreError(
                f"The database {path} cannot be used ({exc}). If it is damaged, restore it "
                "from a backup; moving it away starts the server unlicensed, and the product "
                "key must be entered again."
            ) from None
        except BaseException:
            await db.close()
            raise
        return store

    async def close(self) -> None:
        """Write what is staged and close the database.

        Closed even when that last write fails (disk full): the connection's thread
        would otherwise keep the stopping process alive.
        """
        try:
            await self.flush_leases()
        finally:
            await self._db.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _migrate(self) -> None:
        async with self._db.execute("PRAGMA user_version") as cursor:
            row = await cursor.fetchone()
        version = int(row[0]) if row else 0
        if version > SCHEMA_VERSION:
            msg = (
                f"The database has schema version {version}, newer than this floatkeyd "
                f"({SCHEMA_VERSION}). Run the newer floatkeyd, or restore a backup."
            )
            raise RuntimeError(msg)
        for number in range(version, SCHEMA_VERSION):
            async with self._transaction() as db:
                for statement in _split_sql(_MIGRATIONS[number]):
                    await db.execute(statement)
                if number + 1 == _CHAIN_SCHEMA:
                    await chain_existing_rows(db)
                if number + 1 == _USAGE_SCHEMA:
                    await start_usage(db)
                await db.execute(f"PRAGMA user_version = {number + 1}")

    # --- reading ------------------------------------------------------------------

    async def _meta(self) -> dict[str, str]:
        async with self._db.execute("SELECT key, value FROM meta") as cursor:
            return {str(k): str(v) async for k, v in cursor}

    async def load(self) -> StoredState:
        """Read everything the daemon needs at start."""
        meta = await self._meta()
        async with self._db.execute(
            "SELECT generation, key_text, licensee, organization, serial, seats, features, "
            "activated_at FROM licenses WHERE active = 1",
        ) as cursor:
            row = await cursor.fetchone()
        license_ = None
        if row is not None:
            license_ = StoredLicense(
                generation=row[0],
                key_text=row[1],
                licensee=row[2],
                organization=row[3],
                serial=row[4],
                seats=row[5],
                features=tuple(json.loads(row[6])),
                activated_at=row[7],
            )
        unrenewed: set[str] = set()
        async with self._db.execute(f"SELECT {_LEASE_COLUMNS} FROM leases") as cursor:  # noqa: S608 - a constant
            rows = [r async for r in cursor]
            unrenewed = {r[0] for r in rows if not r[12]}
            leases = [
                Lease(
                    client=r[0],
                    token=r[1],
                    generation=r[2],
                    licensed=bool(r[3]),
                    since=r[4],
                    expires_at=r[5],
                    app=r[6],
                    user=r[7],
                    host=r[8],
                    pid=r[9],
                    revoked=bool(r[10]),
                    login=r[11],
                )
                for r in rows
            ]
        async with self._db.execute(
            f"SELECT {_QUEUE_COLUMNS} FROM queue ORDER BY seq"  # noqa: S608 - a constant
        ) as cursor:
            queue = [
                Waiter(
                    client=r[0],
                    token=r[1],
                    nonce=r[2],
                    generation=r[3],
                    since=r[4],
                    expires_at=r[5],
                    seq=r[6],
                    app=r[7],
                    user=r[8],
                    host=r[9],
                    pid=r[10],
                    login=r[11],
                    reports_activity=bool(r[12]),
                )
                async for r in cursor
            ]
        leases += await self._borrows()
        self.renewals_before_committed = int(meta.get("renewals_before_ms", "0"))
        return StoredState(
            unrenewed=frozenset(unrenewed),
            queue=queue,
            generation=int(meta["generation"]),
            revision=int(meta["revision"]),
            status=meta["status"],  # type: ignore[arg-type]
            latest_time_ms=int(meta["latest_time_ms"]),
            license=license_,
            leases=leases,
            renewals_before_ms=int(meta.get("renewals_before_ms", "0")),
            admin_keys=await self.admin_keys(),
        )

    async def _borrows(self) -> list[Lease]:
        """Borrowed seats, as leases of the ledger (the ledger frees those that ended)."""
        async with self._db.execute(
            "SELECT client, token, generation, since, ends_at, app, user, host, login FROM borrows"
        ) as cursor:
            return [
                Lease(
                    client=r[0],
                    token=r[1],
                    generation=r[2],
                    licensed=True,
                    since=r[3],
                    expires_at=r[4],
                    app=r[5],
                    user=r[6],
                    host=r[7],
                    login=r[8],
                    borrowed=True,
                )
                async for r in cursor
            ]

    async def add_borrow(
        self, lease: Lease, host_id: str, now: int, usage: UsageEvent, audit: AuditEntry
    ) -> None:
        """Record a borrowed seat, its usage event and its audit row, in one transaction.

        Before its token is sent: a borrow is never forgotten by a restart. Borrows that
        ended are deleted on the way (their end was recorded by the ledger's expiry).
        """
        async with self._transaction():
            await self._db.execute("DELETE FROM borrows WHERE ends_at <= ?", (now,))
            await self._db.execute(
                "INSERT OR REPLACE INTO borrows VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
                    lease.client,
                    lease.token,
                    lease.generation,
                    lease.since,
                    lease.expires_at,
                    lease.app,
                    lease.user,
                    lease.host,
                    host_id,
                    lease.login,
                ),
            )
            await self.usage_log.write([usage])
            await self._audit(audit, now)

    async def end_borrow(
        self, client: str, now: int, usage: UsageEvent | None, audit: AuditEntry
    ) -> None:
        """Delete ``client``'s borrowed seat (returned early), with its usage and audit rows."""
        async with self._transaction():
            await self._db.execute("DELETE FROM borrows WHERE client = ?", (client,))
            if usage is not None:
                await self.usage_log.write([usage])
            await self._audit(audit, now)

    async def admin_keys(self) -> list[str]:
        """Public keys authorized with ``floatkeyd admin-key add``."""
        async with self._db.execute("SELECT public_key FROM admin_keys ORDER BY added_at") as cur:
            return [str(r[0]) async for r in cur]

    async def changed_elsewhere(self) -> int:
        """SQLite's ``data_version``: it changes when another process commits a change.

        Such as ``floatkeyd admin-key add`` or ``remove``; never for this connection's own.
        """
        async with self._db.execute("PRAGMA data_version") as cursor:
            row = await cursor.fetchone()
        return int(row[0]) if row else 0

    # --- writing ------------------------------------------------------------------

    async def _audit(self, entry: AuditEntry, ts: int) -> None:
        await self.audit_log.append(entry, ts)

    async def audit(self, entry: AuditEntry, ts: int) -> None:
        """Append one entry to the audit log, on its own."""
        async with self._transaction():
            await self._audit(entry, ts)

    async def _set_meta(self, **values: object) -> None:
        await self._db.executemany(
            "UPDATE meta SET value = ? WHERE key = ?",
            [(str(v), k) for k, v in values.items()],
        )

    async def set_revision(self, revision: int, latest_time_ms: int) -> None:
        """Record a new state revision before it is published."""
        async with self._transaction():
            await self._set_meta(revision=revision, latest_time_ms=latest_time_ms)

    async def set_latest_time(self, latest_time_ms: int) -> None:
        """Remember the latest wall-clock time seen, so a clock set back cannot un-expire."""
        async with self._transaction():
            await self._set_meta(latest_time_ms=latest_time_ms)

    async def change_license(  # noqa: PLR0913 - one atomic change has all these parts
        self,
        *,
        status: Status,
        generation: int,
        revision: int,
        now: int,
        license_: StoredLicense | None,
        admin_kid: str,
        audit: AuditEntry,
        usage: UsageEvent,
        revoke_reason: str,
    ) -> None:
        """Atomically: new active license (or none), counters, revoke all leases, audit.

        With the usage events: every licensed seat revoked (``revoke_reason``), then
        ``usage``, the license change itself.
        """
        await self.flush_leases()
        async with self._transaction():
            await self.usage_log.write_revocations(now, revoke_reason, usage)
            if license_ is not None or status == "unlicensed":
                await self._db.execute("UPDATE licenses SET active = 0 WHERE active = 1")
            if license_ is not None:
                await self._db.execute(
                    "INSERT INTO licenses (generation, key_text, licensee, organization, serial, "
                    "seats, features, activated_at, admin_kid, active) "
                    "VALUES (?,?,?,?,?,?,?,?,?,1)",
                    (
                        generation,
                        license_.key_text,
                        license_.licensee,
                        license_.organization,
                        license_.serial,
                        license_.seats,
                        json.dumps(list(license_.features)),
                        license_.activated_at,
                        admin_kid,
                    ),
                )
            await self._db.execute(
                "UPDATE leases SET revoked = 1 WHERE generation < ?", (generation,)
            )
            await self._db.execute("DELETE FROM queue")  # waiters ask again
            await self._set_meta(
                status=status, generation=generation, revision=revision, latest_time_ms=now
            )
            await self._audit(audit, now)

    async def release_lease(
        self, client: str, audit: AuditEntry, now: int, usage: UsageEvent | None = None
    ) -> None:
        """Delete ``client``'s lease on an administrator's order, audited, in one transaction.

        ``usage``: the seat's revocation, for the usage history (none for a seat that no
        longer counted: revoked by a license change, or unlicensed).
        """
        async with self._transaction():
            await self._db.execute("DELETE FROM leases WHERE client = ?", (client,))
            await self._db.execute("DELETE FROM borrows WHERE client = ?", (client,))
            if usage is not None:
                await self.usage_log.write([usage])
            await self._audit(audit, now)
        # A flush that fails and stages its batch again must not bring the row back.
        self._staged[client] = None

    async def remember_request(self, request_id: str, ts: int, forget_before: int) -> bool:
        """Record an admin request id; ``False`` if it was seen before (a replay)."""
        async with self._transaction():
            # Ids older than the accepted clock skew can never be accepted again anyway.
            await self._db.execute("DELETE FROM seen_requests WHERE ts < ?", (forget_before,))
            cursor = await self._db.execute(
                "INSERT OR IGNORE INTO seen_requests VALUES (?, ?)",
                (request_id, ts),
            )
            return cursor.rowcount == 1

    async def add_admin_key(self, kid: str, public_key: str, now: int) -> bool:
        """Authorize an admin key; ``False`` if it already was."""
        async with self._transaction():
            cursor = await self._db.execute(
                "INSERT OR IGNORE INTO admin_keys VALUES (?, ?, ?)",
                (kid, public_key, now),
            )
            added = cursor.rowcount == 1
            if added:
                entry = AuditEntry("local", "admin-key.add", "done", detail={"kid": kid})
                await self._audit(entry, now)
        return added

    async def remove_admin_key(self, kid: str, now: int) -> bool:
        """Take an authorized admin key back; ``False`` if it was not stored."""
        async with self._transaction():
            cursor = await self._db.execute("DELETE FROM admin_keys WHERE kid = ?", (kid,))
            removed = cursor.rowcount == 1
            if removed:
                entry = AuditEntry("local", "admin-key.remove", "done", detail={"kid": kid})
                await self._audit(entry, now)
        return removed

    async def expiry_warnings(self) -> str | None:
        """Which ``license.expiring`` thresholds were sent, for which license (JSON text)."""
        async with self._db.execute("SELECT value FROM meta WHERE key = 'expiry_warned'") as cur:
            row = await cur.fetchone()
        return str(row[0]) if row else None

    async def set_expiry_warnings(self, value: str) -> None:
        """Record the ``license.expiring`` thresholds sent (floatkeyd.expiring)."""
        async with self._transaction():
            await self._db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('expiry_warned', ?)", (value,)
            )

    # --- leases: staged, then flushed in one transaction ---------------------------

    def stage_lease(self, lease: Lease, *, renewed: bool = True) -> None:
        """Remember to write ``lease`` (granted, renewed or revoked).

        ``renewed=False``: its end is final unless it is renewed (a will's grace), so a
        start does not extend it by the bound on unwritten renewals.
        """
        self._staged[lease.client] = lease
        if renewed:
            self._staged_unrenewed.discard(lease.client)
        else:
            self._staged_unrenewed.add(lease.client)

    def stage_release(self, client: str) -> None:
        """Remember to delete ``client``'s lease."""
        self._staged[client] = None

    def stage_renewals_before(self, ms: int) -> None:
        """Remember to write that no renewal left unwritten is later than ``ms`` (0: none)."""
        self._staged_renewals_before = ms

    async def write_restored(self, extended: list[Lease], renewals_before: int) -> None:
        """At start, before serving: the extended leases and the new bound, in one transaction.

        The leases whose end the bound extended are written as restored and marked not
        renewed since: no later start extends them again unless they are renewed.
        """
        async with self._transaction():
            await self._db.executemany(
                f"INSERT OR REPLACE INTO leases ({_LEASE_COLUMNS}) "  # noqa: S608 - a constant
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                [_lease_row(lease, renewed=0) for lease in extended],
            )
            await self._db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('renewals_before_ms', ?)",
                (str(renewals_before),),
            )
        self.renewals_before_committed = renewals_before

    def stage_waiter(self, waiter: Waiter) -> None:
        """Remember to write ``waiter`` (queued, or its queue lease renewed)."""
        self._staged_queue[waiter.client] = waiter

    def stage_unqueue(self, client: str) -> None:
        """Remember to delete ``client``'s queue entry."""
        self._staged_queue[client] = None

    async def flush_leases(self) -> int:
        """Write every staged lease and queue change and usage event in one transaction.

        Returns how many lease changes.
        """
        renewals_before = self._staged_renewals_before
        if (
            not self._staged
            and not self._staged_queue
            and not self.usage_log.pending
            and renewals_before is None
            and not self._after_commit
        ):
            return 0
        after_commit, self._after_commit = self._after_commit, []
        staged, self._staged = self._staged, {}
        queue, self._staged_queue = self._staged_queue, {}
        self._staged_renewals_before = None
        unrenewed, self._staged_unrenewed = self._staged_unrenewed, set()
        events = self.usage_log.take_staged()
        upserts = [
            _lease_row(lease, renewed=int(client not in unrenewed))
            for client, lease in staged.items()
            if lease is not None
        ]
        deletes = [(client,) for client, lease in staged.items() if lease is None]
        try:
            async with self._transaction():
                await self._db.executemany(
                    f"INSERT OR REPLACE INTO leases ({_LEASE_COLUMNS}) "  # noqa: S608 - a constant
                    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    upserts,
                )
                await self._db.executemany("DELETE FROM leases WHERE client = ?", deletes)
                # A borrowed seat that ended (or was given back with seat.release) goes too.
                await self._db.executemany("DELETE FROM borrows WHERE client = ?", deletes)
                await self._db.executemany(
                    f"INSERT OR REPLACE INTO queue ({_QUEUE_COLUMNS}) "  # noqa: S608 - a constant
                    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    [_waiter_row(w) for w in queue.values() if w is not None],
                )
                await self._db.executemany(
                    "DELETE FROM queue WHERE client = ?",
                    [(client,) for client, w in queue.items() if w is None],
                )
                await self.usage_log.insert(events)
                if renewals_before is not None:
                    await self._db.execute(
                        "INSERT OR REPLACE INTO meta (key, value) VALUES ('renewals_before_ms', ?)",
                        (str(renewals_before),),
                    )
        except BaseException:
            # Not written: stage them again, under anything staged since (newer).
            self._staged_unrenewed = (unrenewed - self._staged.keys()) | self._staged_unrenewed
            self._staged = staged | self._staged
            self._staged_queue = queue | self._staged_queue
            if self._staged_renewals_before is None:
                self._staged_renewals_before = renewals_before
            self.usage_log.restage(events)
            self._after_commit = after_commit + self._after_commit
            raise
        if renewals_before is not None:
            self.renewals_before_committed = renewals_before
        for action in after_commit:
            action()
        return len(staged)

    def after_commit(self, action: Callable[[], None]) -> None:
        """Run ``action`` once everything staged so far is committed."""
        self._after_commit.append(action)

    def take_after_commit(self) -> list[Callable[[], None]]:
        """The actions waiting for a commit, taken (the store is failing: not waited for)."""
        actions, self._after_commit = self._after_commit, []
        return actions

    async def fold_usage(self, *, limit: int, cutoff: int) -> bool:
        """Fold the next due hour of usage events, in one transaction (``UsageLog.fold_hour``)."""
        async with self._transaction():
            return await self.usage_log.fold_hour(limit=limit, cutoff=cutoff)


def _split_sql(script: str) -> list[str]:
    """Split a migration into statements; triggers contain ';' inside BEGIN ... END."""
    statements: list[str] = []
    current: list[str] = []
    for line in script.strip().splitlines():
        current.append(line)
        joined = "\n".join(current).strip()
        if joined.endswith(";") and ("CREATE TRIGGER" not in joined or joined.endswith("END;")):
            statements.append(joined)
            current = []
    return statements
