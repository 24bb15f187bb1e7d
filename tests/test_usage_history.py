"""The usage history in-process: what is recorded, in which transaction, folded, asked."""

from __future__ import annotations

import contextlib
import sqlite3

import pytest

from floatkey import protocol
from floatkey.envelope import open_envelope
from floatkey.errors import ConfigError
from floatkeyd.config import load_config
from floatkeyd.store import Store
from floatkeyd.usage import UsageEvent
from inprocess import (
    MemoryLink,
    Wall,
    ask,
    product_key,
    running,
    trusted,
    unlock_command,
    write_config,
)

DAY = 86_400_000


@pytest.fixture
def link():
    return MemoryLink()


@pytest.fixture
def wall():
    return Wall()


def request(daemon, client: str, user: str = "ada", app: str = "cad") -> tuple[str, bytes]:
    body = protocol.SeatRequest(
        client=client, nonce="n", app=app, user=user, host="h-" + client, pid=1
    )
    return daemon.topics.seat(client, "request"), protocol.encode(body)


def release(daemon, client: str, lease: str | None) -> tuple[str, bytes]:
    body = protocol.SeatRelease(client=client, lease=lease)
    return daemon.topics.seat(client, "release"), protocol.encode(body)


def renew(daemon, client: str, lease: str) -> tuple[str, bytes]:
    body = protocol.SeatRenew(client=client, lease=lease)
    return daemon.topics.seat(client, "renew"), protocol.encode(body)


def lease_of(daemon, link: MemoryLink, client: str) -> str:
    """The lease token of the latest grant sent to ``client``."""
    topic = daemon.topics.client(client)
    for sent_topic, payload in reversed(link.sent):
        if sent_topic == topic:
            reply = protocol.decode_to_client(open_envelope(payload, topic, trusted(daemon)))
            assert isinstance(reply, protocol.SeatGranted), reply
            return reply.lease
    raise AssertionError(f"nothing sent to {client}")


def events(tmp_path) -> list[tuple[str, str, str]]:
    with contextlib.closing(sqlite3.connect(tmp_path / "state" / "floatkeyd.db")) as db:
        return list(db.execute("SELECT kind, reason, client FROM usage_events ORDER BY seq"))


def table(tmp_path, name: str) -> int:
    with contextlib.closing(sqlite3.connect(tmp_path / "state" / "floatkeyd.db")) as db:
        return db.execute(f"SELECT count(*) FROM {name}").fetchone()[0]


async def test_every_kind_of_seat_event_is_recorded(tmp_path, link, wall):
    async with running(write_config(tmp_path), link, wall, serve=False) as daemon:
        assert (await ask(daemon, link, unlock_command(product_key(seats=2), "u1"))).ok
        await daemon.handle(*request(daemon, "a"))
        await daemon.handle(*request(daemon, "b"))
        await daemon.handle(*request(daemon, "c"))  # denied: both seats are held
        await daemon.handle(*release(daemon, "a", lease_of(daemon, link, "a")))
        await daemon.handle(*release(daemon, "b", None))  # b's will: gone after the grace
        wall.ms += 6_000
        await daemon.seats.expire_step()
        await daemon.handle(*request(daemon, "d"))
        d_lease = lease_of(daemon, link, "d")
        wall.ms += 31_000  # d stops renewing: its lease runs out
        await daemon.seats.expire_step()
        await daemon.handle(*renew(daemon, "d", d_lease))  # seat.lost
        await daemon.handle(*request(daemon, "d"))  # and back
        await daemon.handle(*request(daemon, "e"))
        assert (
            await ask(daemon, link, protocol.AdminRelease(request_id="r1", client="e", ts=wall()))
        ).ok
        await daemon.seats.flush_step()
        assert (await ask(daemon, link, unlock_command(product_key(seats=3), "u2", wall()))).ok
    assert events(tmp_path) == [
        ("license", "licensed", ""),
        ("granted", "", "a"),
        ("granted", "", "b"),
        ("denied", "seats_exhausted", "c"),
        ("released", "agent", "a"),
        ("released", "will", "b"),
        ("granted", "", "d"),
        ("released", "expiry", "d"),
        ("renewed_after_loss", "", "d"),
        ("granted", "", "e"),
        ("revoked", "admin", "e"),
        ("revoked", "unlock", "d"),
        ("license", "licensed", ""),
    ]


async def test_a_failed_write_loses_neither_the_lease_nor_its_event(
    tmp_path, link, wall, monkeypatch
):
    monkeypatch.setattr("floatkeyd.seats._STORE_RETRY_S", 0)
    async with running(write_config(tmp_path), link, wall, serve=False) as daemon:
        assert (await ask(daemon, link, unlock_command(product_key(seats=1), "u1"))).ok
        await daemon.handle(*request(daemon, "a"))
        await daemon.handle(*request(daemon, "b"))  # denied; waits for the next flush
        blocker = sqlite3.connect(tmp_path / "state" / "floatkeyd.db", isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")  # every write of the daemon now fails (busy)
        try:
            await daemon.seats.flush_step()  # fails (logged), and stages it all again
        finally:
            blocker.rollback()
            blocker.close()
        assert table(tmp_path, "leases") == 0
        assert events(tmp_path) == [("license", "licensed", "")]
        await daemon.seats.flush_step()  # the next burst writes what the failed one had
        assert table(tmp_path, "leases") == 1
        assert events(tmp_path)[1:] == [("granted", "", "a"), ("denied", "seats_exhausted", "b")]


async def test_a_flush_cancelled_after_its_commit_writes_each_event_once(tmp_path, link, wall):
    # A stop that cancels the flush while SQLite's thread runs the COMMIT: the rows are
    # written, yet the flush cannot know it and stages them again for the next one.
    async with running(write_config(tmp_path), link, wall, serve=False) as daemon:
        assert (await ask(daemon, link, unlock_command(product_key(seats=1), "u1"))).ok
        await daemon.handle(*request(daemon, "a"))
        store = daemon.seats._store
        staged = list(store.usage_log._staged)
        await store.flush_leases()
        store.usage_log.restage(staged)  # what the cancelled flush does
        await store.flush_leases()
    assert events(tmp_path) == [("license", "licensed", ""), ("granted", "", "a")]


async def test_a_usage_event_that_breaks_a_constraint_is_not_silently_dropped(tmp_path):
    # The insert ignores a number already written (a re-flush), nothing else.
    async with await Store.open(tmp_path / "floatkeyd.db") as store:
        store.usage_log.stage(UsageEvent(at=1, kind="denied", client=None, reason="x"))  # type: ignore[arg-type]
        with pytest.raises(sqlite3.IntegrityError):
            await store.flush_leases()
        store.usage_log.take_staged()  # else the close tries again


async def test_a_stop_whose_last_write_fails_still_closes_the_database(tmp_path):
    # Else the connection's thread outlives the stop, and the process never exits.
    path = tmp_path / "floatkeyd.db"
    store = await Store.open(path)
    store.usage_log.stage(UsageEvent(at=1, kind="denied", client="b", reason="seats_exhausted"))
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # the last write fails (busy)
    try:
        with pytest.raises(sqlite3.OperationalError):
            await store.close()
    finally:
        blocker.rollback()
        blocker.close()
    assert store._db._connection is None  # closed


async def test_denials_wait_for_the_next_flush_and_repeats_are_one(tmp_path, link, wall):
    async with running(write_config(tmp_path), link, wall, serve=False) as daemon:
        assert (await ask(daemon, link, unlock_command(product_key(seats=1), "u1"))).ok
        await daemon.handle(*request(daemon, "a"))
        await daemon.seats.flush_step()
        for _ in range(5):
            await daemon.handle(*request(daemon, "b"))  # the same denial, five times
        assert not daemon.seats._staged.is_set()
        assert [kind for kind, _, _ in events(tmp_path)] == ["license", "granted"]
        await daemon.usage.fold()  # the usage loop writes denials left waiting
        assert events(tmp_path)[-1] == ("denied", "seats_exhausted", "b")
        assert len(events(tmp_path)) == 3


async def test_usage_answers_the_peak_the_denials_and_the_seats_needed(tmp_path, link, wall):
    async with running(write_config(tmp_path), link, wall, serve=False) as daemon:
        start = wall()
        assert (await ask(daemon, link, unlock_command(product_key(seats=2), "u1"))).ok
        for client in ("a", "b", "c", "d"):  # c and d are turned away
            await daemon.handle(*request(daemon, client, user=client))
        wall.ms += 60_000
        await daemon.handle(*release(daemon, "a", lease_of(daemon, link, "a")))
        await daemon.handle(*request(daemon, "c", user="c"))  # c gets a's seat
        wall.ms += 60_000
        result = await ask(
            daemon,
            link,
            protocol.AdminUsage(
                request_id="q1", since=start - DAY, bucket="day", group_by="user", ts=wall()
            ),
        )
    assert result.ok, result.message
    report = result.usage
    summary = report.summary
    assert (summary.peak, summary.peak_seats, summary.seats) == (2, 2, 2)
    assert summary.limit_hits == 2  # reached at a's and b's grants, and again at c's
    assert summary.denials == {"seats_exhausted": 2}
    assert summary.would_serve == 4
    assert summary.users == 3
    totals = [b for b in report.buckets if b.group is None]
    assert sum(b.grants for b in totals) == 3
    users = {b.group for b in report.buckets if b.group is not None}
    assert users == {"a", "b", "c", "d"}  # d held nothing, but was turned away


async def test_old_hours_are_folded_then_forgotten_and_answer_the_same(tmp_path, link, wall):
    config = write_config(tmp_path, "[usage]\nkeep_events_days = 1\nkeep_hours_years = 1")
    async with running(config, link, wall, serve=False) as daemon:
        start = wall()
        assert (await ask(daemon, link, unlock_command(product_key(seats=1), "u1"))).ok
        await daemon.handle(*request(daemon, "a"))
        await daemon.handle(*request(daemon, "b"))
        wall.ms += 2 * 3_600_000
        await daemon.handle(*release(daemon, "a", lease_of(daemon, link, "a")))
        await daemon.seats.flush_step()
        hour = wall() - wall() % 3_600_000  # hourly aggregates end on the hour
        question = protocol.AdminUsage(
            request_id="q1", since=start, until=hour, bucket="hour", ts=wall()
        )
        before = (await ask(daemon, link, question)).usage
        wall.jump(3)
        while await daemon.usage.fold():
            pass
        assert table(tmp_path, "usage_events") == 0
        assert table(tmp_path, "usage_hours") > 0
        again = protocol.AdminUsage(
            request_id="q2", since=start, until=before.until, bucket="hour", ts=wall()
        )
        after = (await ask(daemon, link, again)).usage
        figures = ("start", "peak", "peak_at", "average", "grants", "denials", "demand_peak")
        for old, new in zip(before.buckets, after.buckets, strict=True):
            assert [getattr(old, f) for f in figures] == [getattr(new, f) for f in figures]
            assert new.users is None  # distinct users go with the raw events
        assert after.summary.would_serve == before.summary.would_serve == 2
        wall.jump(400)
        while await daemon.usage.fold():
            pass
        assert table(tmp_path, "usage_hours") == 0
        gone = protocol.AdminUsage(
            request_id="q3", since=start, until=before.until, bucket="day", ts=wall()
        )
        result = await ask(daemon, link, gone)
        assert result.ok
        assert result.usage.buckets == []


async def test_seats_held_before_the_history_began_count_from_its_start(tmp_path, link, wall):
    config = write_config(tmp_path)
    async with running(config, link, wall, serve=False) as daemon:
        assert (await ask(daemon, link, unlock_command(product_key(seats=3), "u1"))).ok
        for client in ("a", "b"):
            await daemon.handle(*request(daemon, client))
        await daemon.seats.flush_step()
    # The database as a floatkeyd without the usage history left it (schema 3).
    with contextlib.closing(sqlite3.connect(tmp_path / "state" / "floatkeyd.db")) as db:
        db.executescript(
            "DROP TABLE usage_events; DROP TABLE usage_hours; DROP TABLE usage_fold;"
            "DROP TABLE queue; DROP TABLE borrows; ALTER TABLE leases DROP COLUMN renewed;"
            "PRAGMA user_version = 3;"
        )
    wall.ms += 3_600_000
    async with running(config, link, wall, serve=False) as daemon:
        start = wall()
        wall.ms += 60_000
        command = protocol.AdminUsage(request_id="q1", since=start, bucket="hour", ts=wall())
        result = await ask(daemon, link, command)
    assert result.ok, result.message
    assert result.usage.summary.peak == 2
    assert result.usage.summary.seats == 3
    assert result.usage.buckets[-1].average == 2.0


async def test_renewals_are_not_events(tmp_path, link, wall):
    async with running(write_config(tmp_path), link, wall, serve=False) as daemon:
        assert (await ask(daemon, link, unlock_command(product_key(seats=1), "u1"))).ok
        await daemon.handle(*request(daemon, "a"))
        lease = lease_of(daemon, link, "a")
        for _ in range(10):
            wall.ms += 10_000
            await daemon.handle(*renew(daemon, "a", lease))
            await daemon.seats.flush_step()
        assert [kind for kind, _, _ in events(tmp_path)] == ["license", "granted"]


def test_the_usage_settings_are_checked(tmp_path):
    for bad in (
        "keep_events_days = 0",
        "keep_hours_years = 0",
        "keep_events_days = 400\nkeep_hours_years = 1",
    ):
        with pytest.raises(ConfigError, match=r"usage\.keep_"):
            load_config(write_config(tmp_path, f"[usage]\n{bad}"))
