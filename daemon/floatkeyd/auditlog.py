"""The audit log in the database: a hash chain with a signed head (``auditchain``).

Rows are appended inside the store's transactions, with the change they record; the
chain's end is read in that transaction (which holds SQLite's write lock), so another
process appending too (``floatkeyd admin-key add``) keeps the chain whole.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from typing import TYPE_CHECKING

import structlog

from floatkey.signing import b64url_encode
from floatkeyd.auditchain import GENESIS, AuditRowData, Head, head_message, row_hash

if TYPE_CHECKING:
    import asyncio

    import aiosqlite

    from floatkey.envelope import Signer
    from floatkeyd.store import AuditEntry

__all__ = ["AuditLog", "chain_existing_rows"]

log = structlog.get_logger("floatkeyd")


_ROWS = (
    "SELECT seq, ts, actor, action, outcome, reason, detail, hash FROM audit "
    "WHERE seq > ? AND (? = 0 OR seq < ?) AND ts >= ? AND (? IS NULL OR action = ?) "
    "AND (? IS NULL OR outcome = ?) "
)
_ROWS_OLDEST_FIRST = _ROWS + "ORDER BY seq LIMIT ?"
_ROWS_NEWEST_FIRST = _ROWS + "ORDER BY seq DESC LIMIT ?"


class AuditLog:
    """Appends chained, signed rows; reads pages of them, and the whole chain to walk."""

    def __init__(self, db: aiosqlite.Connection, signer: Signer | None, lock: asyncio.Lock) -> None:
        self._db = db
        self._signer = signer
        self._lock = lock  # the store's: a walk's read never falls inside a transaction

    async def append(self, entry: AuditEntry, ts: int) -> None:
        """Append a row to the chain, and sign the new head, in the open transaction.

        The chain's end is read in the transaction (which holds SQLite's write lock), not
        remembered: ``floatkeyd admin-key add`` appends rows from another process.
        """
        if self._signer is None:
            msg = "this store was opened without the server key: it must not write audit rows"
            raise RuntimeError(msg)
        async with self._db.execute(
            "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1"
        ) as cursor:
            last = await cursor.fetchone()
        last_seq, last_hash = (int(last[0]), str(last[1])) if last else (0, GENESIS)
        seq = last_seq + 1
        detail = json.dumps(entry.detail or {}, sort_keys=True)
        fields = (entry.actor, entry.action, entry.outcome, entry.reason, detail)
        chain_hash = row_hash(last_hash, seq, ts, fields)
        await self._db.execute(
            "INSERT INTO audit (seq, ts, actor, action, outcome, reason, detail, hash) "
            "VALUES (?,?,?,?,?,?,?,?)",
            (seq, ts, *fields, chain_hash),
        )
        signature = b64url_encode(self._signer.sign(head_message(seq, chain_hash, ts)))
        await self._db.execute(
            "INSERT OR REPLACE INTO audit_head VALUES (1, ?, ?, ?, ?, ?)",
            (seq, chain_hash, self._signer.kid, signature, ts),
        )
        # Also in the journal: a copy of the head outside the database, to compare with
        # if the database is ever put back to an older state (a signed head included).
        log.info("audit head", seq=seq, hash=chain_hash[:16])

    async def rows(  # noqa: PLR0913 - each is one filter of the query
        self,
        *,
        after_seq: int = 0,
        since_ts: int = 0,
        action: str | None = None,
        limit: int = 500,
        outcome: str | None = None,
        before_seq: int = 0,
        newest_first: bool = False,
    ) -> list[AuditRowData]:
        """Audit rows of one ``action`` and ``outcome``, from ``since_ts``.

        The rows after ``after_seq`` and before ``before_seq`` (when not 0); oldest first,
        or newest first.
        """
        query = _ROWS_NEWEST_FIRST if newest_first else _ROWS_OLDEST_FIRST
        parameters = (
            after_seq,
            before_seq,
            before_seq,
            since_ts,
            action,
            action,
            outcome,
            outcome,
            limit,
        )
        async with self._db.execute(query, parameters) as cur:
            return [AuditRowData(*row) async for row in cur]

    async def chain(self) -> tuple[list[AuditRowData], Head | None]:
        """Every audit row, oldest first, and the signed head: for ``verify_chain``.

        Read in one transaction, under the store's lock: never between a row and its
        head, nor across another process's append.
        """
        async with self._lock:
            try:
                await self._db.execute("BEGIN")  # inside the try: see Store._transaction
                async with self._db.execute(
                    "SELECT seq, ts, actor, action, outcome, reason, detail, hash "
                    "FROM audit ORDER BY seq"
                ) as cursor:
                    rows = [AuditRowData(*row) for row in await cursor.fetchall()]
                async with self._db.execute(
                    "SELECT seq, hash, kid, signature, signed_at FROM audit_head"
                ) as cursor:
                    head = await cursor.fetchone()
            finally:
                with contextlib.suppress(sqlite3.Error):  # nothing was written: just end it
                    await self._db.execute("COMMIT")
        return rows, Head(*head) if head else None


async def chain_existing_rows(db: aiosqlite.Connection) -> None:
    """Give the rows written before the chain existed their hashes (migration 3).

    From then on every row is chained from the first: the walk refuses a row without
    a hash anywhere, so nobody can pass rows off as "from before the chain".
    """
    async with db.execute(
        "SELECT seq, ts, actor, action, outcome, reason, detail FROM audit ORDER BY seq"
    ) as cursor:
        rows = await cursor.fetchall()
    previous, updates = GENESIS, []
    for seq, ts, *fields in rows:
        previous = row_hash(previous, seq, ts, fields)
        updates.append((previous, seq))
    await db.executemany("UPDATE audit SET hash = ? WHERE seq = ?", updates)
    await db.execute(
        "CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit "
        "BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END"
    )
