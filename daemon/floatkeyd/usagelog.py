"""Seat usage in the database: raw events, hourly aggregates, the fold between them.

Events (``floatkeyd.usage``) are numbered in the order the daemon decided them and
written inside the store's own transactions, with the lease change they record: no
commit of their own. The fold turns every hour older than ``[usage] keep_events_days``
into hourly aggregate rows and deletes its raw events, in one transaction per hour,
and keeps a checkpoint: the exact state (every seat held, by whom; denials outstanding)
at the first raw event kept. Aggregates older than ``keep_hours_years`` are deleted.

Questions (``admin.usage``) are answered in a worker thread, on a read-only connection
of their own (WAL lets it read while the daemon writes): a year of events must not hold
up seat requests.

:class:`UsageHistory` is the daemon's component: the fold loop and the answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import sqlite3
import time
from typing import TYPE_CHECKING, Any

import structlog

from floatkeyd import usage
from floatkeyd.usage import (
    DIMS,
    HOUR_MS,
    Answer,
    Checkpoint,
    Figures,
    HourRow,
    Question,
    Replay,
    UsageEvent,
    UsageState,
    Who,
    hour_floor,
)

if TYPE_CHECKING:
    from collections.abc import Iterable
    from pathlib import Path

    import aiosqlite

    from floatkeyd.clock import Clock
    from floatkeyd.config import UsageConfig
    from floatkeyd.store import Store

__all__ = ["UsageHistory", "UsageLog", "start_usage"]

log = structlog.get_logger("floatkeyd")

_EVENT_COLUMNS = "seq, at, kind, reason, client, login, app, user, host, generation, seats, n"
_HOUR_COLUMNS = (
    "hour, dim, name, held_start, held_end, peak, peak_at, peak_seats, seat_ms, limit_ms, "
    "limit_hits, grants, denials, waiting_peak, demand_peak, seats_start, seats_end, "
    "waits, wait_ms, wait_longest_ms"
)
#: How often the fold loop looks for hours to fold (and writes denials left waiting).
_FOLD_EVERY_S = 60.0
_STORE_RETRY_S = 5.0


async def start_usage(db: aiosqlite.Connection) -> None:
    """Start the usage history (migration 4): the seats held now are its first state.

    Leases granted before there was a history have no ``granted`` event; the checkpoint
    says who holds them, so they count from the first hour on.
    """
    async with db.execute(
        "SELECT client, app, user, host FROM leases WHERE licensed = 1 AND revoked = 0"
    ) as cursor:
        held = {str(r[0]): Who(str(r[1]), str(r[2]), str(r[3])) async for r in cursor}
    async with db.execute("SELECT key, value FROM meta") as cursor:
        meta = {str(k): str(v) async for k, v in cursor}
    async with db.execute("SELECT seats FROM licenses WHERE active = 1") as cursor:
        row = await cursor.fetchone()
    seats = int(row[0]) if row is not None and meta["status"] == "licensed" else 0
    state = UsageState(generation=int(meta["generation"]), seats=seats, held=held)
    began = hour_floor(max(time.time_ns() // 1_000_000, int(meta["latest_time_ms"])))
    await db.execute(
        "INSERT INTO usage_fold (one, until, kept_from, last_seq, state) VALUES (1, ?, ?, 0, ?)",
        (began, began, json.dumps(state.to_plain())),
    )


class UsageLog:
    """Numbers, stages and writes events; folds hours; reads for a question."""

    def __init__(self, db: aiosqlite.Connection, path: Path) -> None:
        self._db = db
        self._path = path
        self._staged: list[tuple[int, UsageEvent]] = []
        self._seq = 0
        self._last_at = 0

    async def load(self) -> None:
        """Continue the numbering after the events (and folds) already in the database."""
        async with self._db.execute(
            "SELECT max(coalesce((SELECT max(seq) FROM usage_events), 0), last_seq), "
            "coalesce((SELECT max(at) FROM usage_events), 0) FROM usage_fold"
        ) as cursor:
            row = await cursor.fetchone()
        self._seq, self._last_at = (int(row[0]), int(row[1])) if row else (0, 0)

    # --- writing (inside the store's transactions) ---------------------------------

    def _numbered(self, event: UsageEvent) -> tuple[int, UsageEvent]:
        # Decided in this order, so dated in this order: never earlier than the last.
        self._seq += 1
        if event.at < self._last_at:
            event = dataclasses.replace(event, at=self._last_at)
        self._last_at = event.at
        return self._seq, event

    def stage(self, event: UsageEvent) -> None:
        """Remember an event, to be written with the next lease flush."""
        self._staged.append(self._numbered(event))

    @property
    def pending(self) -> int:
        """Events staged and not yet written."""
        return len(self._staged)

    def take_staged(self) -> list[tuple[int, UsageEvent]]:
        """The staged events, to write in the flush's transaction."""
        staged, self._staged = self._staged, []
        return staged

    def restage(self, staged: list[tuple[int, UsageEvent]]) -> None:
        """Events whose transaction failed: staged again, before anything staged since."""
        self._staged = staged + self._staged

    async def insert(self, rows: list[tuple[int, UsageEvent]]) -> None:
        """Write numbered events, in the transaction open on the store's connection.

        Idempotent: a flush cancelled while its COMMIT ran in SQLite's thread cannot know
        whether it was written, and stages the events again. A number is given to one
        event only, so a row already there under it is that same event. Only that is
        ignored: a row that breaks another constraint (NOT NULL, a type) still fails.
        """
        await self._db.executemany(
            f"INSERT INTO usage_events ({_EVENT_COLUMNS}) "  # noqa: S608 - constants
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT (seq) DO NOTHING",
            [_event_row(seq, event) for seq, event in rows],
        )

    async def write(self, events: Iterable[UsageEvent]) -> None:
        """Number and write events now, in the open transaction."""
        await self.insert([self._numbered(event) for event in events])

    async def write_revocations(self, at: int, reason: str, license_event: UsageEvent) -> None:
        """A license change: every licensed seat in the leases table revoked, then the change.

        Read from the table (in the change's transaction), not from memory: what the
        events say must agree with what the database says was held.
        """
        async with self._db.execute(
            "SELECT client, login, app, user, host, generation FROM leases "
            "WHERE licensed = 1 AND revoked = 0 ORDER BY since"
        ) as cursor:
            rows = await cursor.fetchall()
        events = [
            UsageEvent(
                at=at,
                kind="revoked",
                client=str(r[0]),
                login=str(r[1]),
                app=str(r[2]),
                user=str(r[3]),
                host=str(r[4]),
                reason=reason,
                generation=int(r[5]),
            )
            for r in rows
        ]
        await self.write([*events, license_event])

    # --- folding (inside a store transaction) ----------------------------------------

    async def fold_hour(self, *, limit: int, cutoff: int) -> bool:
        """Fold the next hour that ends by ``limit``; drop aggregates before ``cutoff``.

        Returns whether there may be more to fold. Skips quiet hours in one step (the
        state carries over unchanged), and waits while events of the hour are staged.
        """
        checkpoint = await self._checkpoint(self._db)
        kept_from = checkpoint.kept_from
        if min(cutoff, checkpoint.until) > kept_from:
            kept_from = min(cutoff, checkpoint.until)
            await self._db.execute("DELETE FROM usage_hours WHERE hour < ?", (kept_from,))
            await self._db.execute("UPDATE usage_fold SET kept_from = ?", (kept_from,))
        start = checkpoint.until
        end = start + HOUR_MS
        if end > limit or any(event.at < end for _, event in self._staged):
            return False
        async with self._db.execute("SELECT min(at) FROM usage_events") as cursor:
            row = await cursor.fetchone()
        first = None if row is None or row[0] is None else int(row[0])
        if not checkpoint.state.waiting and (first is None or first >= end):
            # Nothing happened: the seats held stay held; no rows, move on.
            jump = hour_floor(min(limit, first if first is not None else limit))
            await self._db.execute("UPDATE usage_fold SET until = ?", (jump,))
            return jump + HOUR_MS <= limit
        async with self._db.execute(
            f"SELECT {_EVENT_COLUMNS} FROM usage_events WHERE at < ? ORDER BY seq",  # noqa: S608 - constants
            (end,),
        ) as cursor:
            numbered = [_event_of(row) async for row in cursor]
        replay = Replay(checkpoint.state, DIMS, users=False)
        (figures,) = replay.run([event for _, event in numbered], [start, end])
        await self._db.executemany(
            f"INSERT OR REPLACE INTO usage_hours ({_HOUR_COLUMNS}) "  # noqa: S608 - constants
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            [_hour_row(dim, name, fig) for (dim, name), fig in figures.items() if fig.touched],
        )
        last_seq = max((seq for seq, _ in numbered), default=checkpoint.last_seq)
        await self._db.execute(
            "UPDATE usage_fold SET until = ?, last_seq = ?, state = ?",
            (end, max(last_seq, checkpoint.last_seq), json.dumps(replay.state.to_plain())),
        )
        await self._db.execute("DELETE FROM usage_events WHERE seq <= ?", (last_seq,))
        return end + HOUR_MS <= limit

    @staticmethod
    async def _checkpoint(db: aiosqlite.Connection) -> Checkpoint:
        async with db.execute("SELECT until, kept_from, last_seq, state FROM usage_fold") as cur:
            row = await cur.fetchone()
        assert row is not None, "migration 4 writes the checkpoint"
        return Checkpoint(
            until=int(row[0]),
            kept_from=int(row[1]),
            last_seq=int(row[2]),
            state=UsageState.from_plain(json.loads(row[3])),
        )

    # --- answering (in a worker thread) ----------------------------------------------

    async def answer(self, question: Question) -> Answer:
        """The figures asked for. Raises ``usage.TooManyBuckets`` or ``sqlite3.Error``."""
        return await asyncio.to_thread(_answer, self._path, question)


def _answer(path: Path, question: Question) -> Answer:
    """Read what the question needs in one read transaction, and work the figures out."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    with contextlib.closing(db):
        db.execute("BEGIN")  # one snapshot: the checkpoint, the hours and the events agree
        row = db.execute("SELECT until, kept_from, last_seq, state FROM usage_fold").fetchone()
        checkpoint = Checkpoint(
            until=int(row[0]),
            kept_from=int(row[1]),
            last_seq=int(row[2]),
            state=UsageState.from_plain(json.loads(row[3])),
        )
        start, end = usage.measured_span(question, checkpoint)
        hours = [
            _hour_of(r)
            for r in db.execute(
                f"SELECT {_HOUR_COLUMNS} FROM usage_hours "  # noqa: S608 - constants
                "WHERE hour >= ? AND hour < ? AND dim IN ('', ?) ORDER BY hour",
                (start, min(end, checkpoint.until), question.group_by),
            )
        ]
        events = [
            _event_of(r)[1]
            for r in db.execute(
                f"SELECT {_EVENT_COLUMNS} FROM usage_events WHERE at < ? ORDER BY seq",  # noqa: S608 - constants
                (end,),
            )
        ]
        db.execute("COMMIT")
    return usage.answer(question, checkpoint, hours, events)


def _event_row(seq: int, event: UsageEvent) -> tuple[object, ...]:
    return (
        seq,
        event.at,
        event.kind,
        event.reason,
        event.client,
        event.login,
        event.app,
        event.user,
        event.host,
        event.generation,
        event.seats,
        event.n,
    )


def _event_of(row: Any) -> tuple[int, UsageEvent]:  # noqa: ANN401 - a database row
    seq, at, kind, reason, client, login, app, user, host, generation, seats, n = row
    return int(seq), UsageEvent(
        at=int(at),
        kind=kind,
        reason=str(reason),
        client=str(client),
        login=str(login),
        app=str(app),
        user=str(user),
        host=str(host),
        generation=int(generation),
        seats=int(seats),
        n=int(n),
    )


def _hour_row(dim: str, name: str, fig: Figures) -> tuple[object, ...]:
    return (
        fig.start,
        dim,
        name,
        fig.held_start,
        fig.held_end,
        fig.peak,
        fig.peak_at,
        fig.peak_seats,
        fig.seat_ms,
        fig.limit_ms,
        fig.limit_hits,
        fig.grants,
        json.dumps(fig.denials, sort_keys=True),
        fig.waiting_peak,
        fig.demand_peak,
        fig.seats_start,
        fig.seats_end,
        fig.waits,
        fig.wait_ms,
        fig.wait_longest_ms,
    )


def _hour_of(row: Any) -> HourRow:  # noqa: ANN401 - a database row
    (hour, dim, name, held_start, held_end, peak, peak_at, peak_seats, seat_ms, limit_ms) = row[:10]
    (limit_hits, grants, denials, waiting_peak, demand_peak, seats_start, seats_end) = row[10:17]
    waits, wait_ms, wait_longest_ms = row[17:20]
    start = int(hour)
    fig = Figures(
        start=start,
        end=start + HOUR_MS,
        held_start=int(held_start),
        held_end=int(held_end),
        peak=int(peak),
        peak_at=int(peak_at),
        peak_seats=int(peak_seats),
        seat_ms=int(seat_ms),
        limit_ms=int(limit_ms),
        limit_hits=int(limit_hits),
        grants=int(grants),
        denials=json.loads(str(denials)),
        waiting_peak=int(waiting_peak),
        demand_peak=int(demand_peak),
        seats_start=int(seats_start),
        seats_end=int(seats_end),
        waits=int(waits),
        wait_ms=int(wait_ms),
        wait_longest_ms=int(wait_longest_ms),
        touched=True,
    )
    return HourRow(dim=dim, name=str(name), fig=fig)


class UsageHistory:
    """The daemon's usage component: folds old hours on a loop, answers questions."""

    def __init__(self, store: Store, clock: Clock, config: UsageConfig) -> None:
        self._store = store
        self._clock = clock
        self._keep_events_ms = config.keep_events_days * 86_400_000
        self._keep_hours_ms = config.keep_hours_years * 365 * 86_400_000

    async def fold(self) -> bool:
        """Write denials left staged; fold one due hour. Returns whether more are due.

        Raises ``sqlite3.Error`` (nothing changed; the next step tries again).
        """
        if self._store.usage_log.pending:
            await self._store.flush_leases()
        now = self._clock.now()
        return await self._store.fold_usage(
            limit=hour_floor(now - self._keep_events_ms),
            cutoff=hour_floor(now - self._keep_hours_ms),
        )

    async def fold_step(self) -> None:
        """One step of the fold loop: fold what is due, else wait a minute."""
        try:
            more = await self.fold()
        except sqlite3.Error as exc:
            log.error("database write failed; retrying", task="usage-fold", error=str(exc))
            await asyncio.sleep(_STORE_RETRY_S)
            return
        await asyncio.sleep(0 if more else _FOLD_EVERY_S)

    async def answer(self, question: Question) -> Answer:
        """The figures of ``admin.usage``, from what is written (staged events first).

        Raises ``usage.TooManyBuckets`` or ``sqlite3.Error``.
        """
        with contextlib.suppress(sqlite3.Error):  # what is written still answers
            await self._store.flush_leases()
        return await self._store.usage_log.answer(question)
