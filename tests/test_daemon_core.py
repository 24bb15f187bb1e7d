"""The daemon's logic in-process (an in-memory link, a settable clock, a real database).

Each test here guards a defect found in review; the real-broker tests cover the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import sqlite3

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from floatkey import protocol
from floatkey.envelope import Signer, open_envelope
from floatkeyd.retained import FIGHT_LIMIT
from floatkeyd.store import AuditEntry
from inprocess import (
    MemoryLink,
    Wall,
    ask,
    product_key,
    running,
    states,
    trusted,
    unlock_command,
    write_config,
)
from servers import eventually


@pytest.fixture
def link():
    return MemoryLink()


@pytest.fixture
def wall():
    return Wall()


async def test_an_expired_license_does_not_spin(tmp_path, link, wall, monkeypatch):
    today = dt.datetime.now(dt.UTC).date()
    async with running(write_config(tmp_path), link, wall) as daemon:
        assert (await ask(daemon, link, unlock_command(product_key(expires=today), "a1"))).ok
        writes = 0
        remember = daemon.authority.remember_time

        async def counted() -> None:
            nonlocal writes
            writes += 1
            await remember()

        monkeypatch.setattr(daemon.authority, "remember_time", counted)
        wall.jump(2)
        daemon.authority.changed.set()  # the clock jumped: look at the deadline now
        await eventually(lambda: daemon.authority.status == "expired")
        before = writes
        # Nothing to wait for: a spinning loop writes the latest time every millisecond
        # (hundreds of times here), a waiting one not at all until its next persist.
        await asyncio.sleep(0.3)
        assert writes - before <= 1


async def test_an_unlock_and_an_expiry_racing_never_share_a_generation(tmp_path, link, wall):
    today = dt.datetime.now(dt.UTC).date()
    async with running(write_config(tmp_path), link, wall, serve=False) as daemon:
        authority = daemon.authority
        first = unlock_command(product_key(expires=today), "r1")
        assert (await ask(daemon, link, first)).ok
        wall.jump(2)  # the first key is past its last day
        # The unlock first, then the expiry: the expiry must see the new key's deadline.
        await asyncio.gather(
            authority.activate(product_key(seats=7), "Ada Lovelace", "Analytical Engines Ltd", "t"),
            authority.expire_if_due(),
        )
        assert (authority.status, authority.generation, authority.seats) == ("licensed", 2, 7)
        # The expiry first, then the unlock: two changes, two generations, in order.
        later = today + dt.timedelta(days=3)
        second = unlock_command(product_key(expires=later), "r2", ts=wall())
        assert (await ask(daemon, link, second)).ok
        wall.jump(2)  # the never-backwards clock is now past that key's last day too
        await asyncio.gather(
            authority.expire_if_due(),
            authority.activate(product_key(seats=5), "Ada Lovelace", "Analytical Engines Ltd", "t"),
        )
        assert (authority.status, authority.generation, authority.seats) == ("licensed", 5, 5)
        published = states(daemon, link)
        generations = [state.generation for state in published]
        revisions = [state.revision for state in published]
        assert generations == sorted(generations)
        assert revisions == sorted(set(revisions))
        assert [s.status for s in published[-2:]] == ["expired", "licensed"]
        with contextlib.closing(sqlite3.connect(tmp_path / "state" / "floatkeyd.db")) as db:
            meta = dict(db.execute("SELECT key, value FROM meta"))
            audited = [
                row[0]
                for row in db.execute(
                    "SELECT json_extract(detail, '$.generation') FROM audit "
                    "WHERE action IN ('admin.unlock', 'license.expired') AND outcome != 'refused'"
                )
            ]
        assert meta["generation"] == "5"
        assert audited == [1, 2, 3, 4, 5]


def seat_request(daemon, client: str) -> tuple[str, bytes]:
    body = protocol.SeatRequest(client=client, nonce="n-" + client, app="app", pid=1)
    return daemon.topics.seat(client, "request"), protocol.encode(body)


async def test_an_admin_release_that_cannot_be_written_changes_nothing(tmp_path, link, wall):
    async with running(write_config(tmp_path), link, wall, serve=False) as daemon:
        assert (await ask(daemon, link, unlock_command(product_key(), "u1"))).ok
        await daemon.handle(*seat_request(daemon, "victim"))
        await daemon.seats.flush_step()
        sent_before = len(link.sent)
        blocker = sqlite3.connect(tmp_path / "state" / "floatkeyd.db", isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")  # every write of the daemon now fails (busy)
        try:
            release = protocol.AdminRelease(request_id="rel1", client="victim")
            result = await ask(daemon, link, release)
        finally:
            blocker.rollback()
            blocker.close()
        assert (result.ok, result.reason) == (False, "store_failed")
        assert "nothing was changed" in result.message
        assert "victim" in daemon.seats.ledger.leases  # the seat is still held...
        assert len(link.sent) == sent_before  # ...and nobody was told otherwise
        again = await ask(daemon, link, protocol.AdminRelease(request_id="rel2", client="victim"))
        assert again.ok
        assert "victim" not in daemon.seats.ledger.leases
        revoked = protocol.decode_to_client(_body(daemon, *link.sent[-1]))
        assert isinstance(revoked, protocol.SeatRevoked)


def _body(daemon, topic: str, payload: bytes) -> bytes:
    return open_envelope(payload, topic, trusted(daemon))


async def test_awaiting_release_counts_only_the_clients_the_last_unlock_told(tmp_path, link, wall):
    async with running(write_config(tmp_path), link, wall, serve=False) as daemon:
        assert (await ask(daemon, link, unlock_command(product_key(), "g1"))).ok
        for client in ("a", "b"):
            await daemon.handle(*seat_request(daemon, client))
        second = await ask(daemon, link, unlock_command(product_key(), "g2"))
        assert second.unlock.clients_told == 2
        status = await ask(daemon, link, protocol.AdminStatus(request_id="s1"))
        assert status.status.awaiting_release == 2
        # Neither client goes (crashed, say); a third unlock tells nobody, so nobody is
        # awaited, though the two old leases still wait for their expiry.
        third = await ask(daemon, link, unlock_command(product_key(), "g3"))
        assert third.unlock.clients_told == 0
        status = await ask(daemon, link, protocol.AdminStatus(request_id="s2"))
        assert status.status.awaiting_release == 0
        assert len(daemon.seats.ledger.revoked) == 2


async def test_retained_echoes_are_expected_replays_are_put_right_rivals_not_fought(
    tmp_path, link, wall, monkeypatch
):
    async with running(write_config(tmp_path), link, wall, serve=False) as daemon:
        topic = daemon.topics.state
        first = daemon.authority.state_payload
        await daemon.connected()  # publishes identity and state
        assert (await ask(daemon, link, unlock_command(product_key(), "e1"))).ok
        current = daemon.authority.state_payload
        link.published.clear()
        for echo in (first, current):  # the broker echoes both publications: expected
            await daemon.handle(topic, echo)
        assert link.published == []
        assert daemon.drops.counts["foreign_retained"] == 0
        # Our own older state, retained again by someone: a fresh agent would take it.
        await daemon.handle(topic, first)
        assert [item.payload for item in link.published] == [current]
        assert daemon.drops.counts["foreign_retained"] == 1
        await daemon.handle(topic, current)  # the echo of that republication
        # Two pieces of garbage before our republication echoes: it lands after both,
        # so it goes out once.
        link.published.clear()
        await daemon.handle(topic, b"garbage 1")
        await daemon.handle(topic, b"garbage 2")
        assert [item.payload for item in link.published] == [current]
        await daemon.handle(topic, current)  # its echo

        async def overwrite(payload: bytes) -> None:
            """Someone's message, then the echo of whatever we put back (as a broker)."""
            before = len(link.published)
            await daemon.handle(topic, payload)
            for item in link.published[before:]:
                await daemon.handle(item.topic, item.payload)

        # A second daemon for the same server name (another key) keeps publishing.
        link.published.clear()
        other = Signer(Ed25519PrivateKey.generate())
        for revision in range(20):
            body = protocol.State(
                server="core", revision=revision, generation=1, status="unlicensed", license=None
            )
            await overwrite(other.seal(topic, protocol.encode(body)))
        assert len(link.published) == FIGHT_LIMIT
        assert daemon.retained.contested
        # The rival goes quiet for a whole window: ours goes back.
        monkeypatch.setattr("floatkeyd.retained._WINDOW_S", 0.05)
        link.published.clear()
        await daemon.retained.recover_step()
        assert not daemon.retained.contested
        assert current in [item.payload for item in link.published]
        for item in list(link.published):  # their echoes
            await daemon.handle(item.topic, item.payload)
        # Garbage is no rival: our state goes back every time it is overwritten.
        link.published.clear()
        for n in range(5):
            await overwrite(b"not a state %d" % n)
        assert [item.payload for item in link.published] == [current] * 5


async def test_a_damaged_stored_admin_key_is_skipped_and_the_others_load(tmp_path, link, wall):
    config = write_config(tmp_path)
    async with running(config, link, wall, serve=False):
        pass  # creates the database
    with contextlib.closing(sqlite3.connect(tmp_path / "state" / "floatkeyd.db")) as db:
        db.execute("INSERT INTO admin_keys VALUES ('0000000000000000', 'ed25519:garbage', 0)")
        db.commit()
    async with running(config, link, wall) as daemon:
        daemon.reload()
        status = await ask(daemon, link, protocol.AdminStatus(request_id="k1"))
        assert status.ok
        assert status.status.admin_keys == 1


async def test_a_failing_background_step_is_counted_and_the_loop_goes_on(
    tmp_path, link, wall, monkeypatch
):
    async with running(write_config(tmp_path), link, wall, serve=False) as daemon:
        flush = daemon.seats.flush_step
        calls = 0

        async def failing_once() -> None:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise OverflowError("injected")
            await flush()

        monkeypatch.setattr(daemon.seats, "flush_step", failing_once)
        monkeypatch.setattr("floatkeyd.service._STEP_RETRY_S", 0.01)
        stop = asyncio.Event()
        serving = asyncio.create_task(daemon.serve(stop))
        await daemon.wait_ready()
        await daemon.handle(*seat_request(daemon, "after"))

        def written() -> bool:
            with contextlib.closing(sqlite3.connect(tmp_path / "state" / "floatkeyd.db")) as db:
                return bool(db.execute("SELECT 1 FROM leases WHERE client = 'after'").fetchone())

        await eventually(written)
        assert daemon.drops.counts["internal_error"] == 1
        stop.set()
        await serving


async def test_admin_commands_dated_in_the_future_are_refused(tmp_path, link, wall):
    async with running(write_config(tmp_path), link, wall, serve=False) as daemon:
        ahead = unlock_command(product_key(), "f1", ts=wall() + 61_000)
        result = await ask(daemon, link, ahead)
        assert (result.ok, result.reason) == (False, "clock_skew")
        assert "ahead of" in result.message
        assert daemon.authority.status == "unlicensed"


async def test_a_clock_that_once_ran_ahead_does_not_lock_out_administrators(tmp_path, link, wall):
    config = write_config(tmp_path)
    async with running(config, link, wall, serve=False) as daemon:
        wall.jump(1)
        await daemon.authority.remember_time()  # the never-backwards time is a day ahead
    wall.jump(-1)
    async with running(config, link, wall, serve=False) as daemon:
        result = await ask(daemon, link, protocol.AdminStatus(request_id="c1", ts=wall()))
        assert result.ok, result.message


async def test_a_transaction_cancelled_while_it_begins_is_rolled_back(tmp_path, link, wall):
    async with running(write_config(tmp_path), link, wall, serve=False) as daemon:
        store = daemon.admin._store
        request = protocol.SeatRequest(client="c", nonce="n")
        await daemon.handle(daemon.topics.seat("c", "request"), protocol.encode(request))
        flushing = asyncio.create_task(store.flush_leases())
        await asyncio.sleep(0)  # it has sent BEGIN to the SQLite thread
        flushing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await flushing
        # The next transaction starts cleanly (it used to find BEGIN's still open).
        await store.audit(AuditEntry("system", "test", "done"), wall())
        assert not store._db.in_transaction


def _renew(daemon, client: str, lease: str) -> tuple[str, bytes]:
    body = protocol.SeatRenew(client=client, lease=lease)
    return daemon.topics.seat(client, "renew"), protocol.encode(body)


def _stored_end(tmp_path, client: str) -> int:
    with contextlib.closing(sqlite3.connect(tmp_path / "state" / "floatkeyd.db")) as db:
        return db.execute("SELECT expires_at FROM leases WHERE client = ?", (client,)).fetchone()[0]


def _crash(daemon) -> None:
    """As a kill -9: nothing staged is written when the daemon's context closes."""
    store = daemon.seats._store

    async def nothing() -> int:
        return 0

    store.flush_leases = nothing


async def _renewed(daemon, link, client: str, lease: str) -> protocol.SeatRenewed:
    """Renew; a reply held until the next commit is sent by that flush."""
    before = len(link.sent)
    await daemon.handle(*_renew(daemon, client, lease))
    if len(link.sent) == before:
        await daemon.seats.flush_step()
    reply = protocol.decode_to_client(_body(daemon, *link.sent[-1]))
    assert isinstance(reply, protocol.SeatRenewed)
    return reply


async def test_a_renewal_answered_is_never_lost_to_a_crash(tmp_path, link, wall):
    # Lease 30 s, renewal interval 10 s. A renewal is not written (issue 17): only a bound
    # on when it was, committed before the renewal it covers is answered.
    config = write_config(tmp_path)
    async with running(config, link, wall, serve=False) as daemon:
        assert (await ask(daemon, link, unlock_command(product_key(), "u1"))).ok
        await daemon.handle(*seat_request(daemon, "a"))
        grant = protocol.decode_to_client(_body(daemon, *link.sent[-1]))
        assert isinstance(grant, protocol.SeatGranted)
        await daemon.seats.flush_step()
        granted_end = _stored_end(tmp_path, "a")
        # Within the bound written at start: answered at once, nothing flushed after it.
        wall.ms += 5_000
        sent = len(link.sent)
        await daemon.handle(*_renew(daemon, "a", grant.lease))
        assert len(link.sent) == sent + 1
        renewed = protocol.decode_to_client(_body(daemon, *link.sent[-1]))
        assert isinstance(renewed, protocol.SeatRenewed)
        assert renewed.expires_at == granted_end + 5_000
        assert _stored_end(tmp_path, "a") == granted_end  # the renewal was not written
        _crash(daemon)
    # 25 s later the stored end has passed, the renewed one has not: still held.
    wall.ms += 25_000
    async with running(config, link, wall, serve=False) as daemon:
        assert daemon.seats.ledger.leases["a"].expires_at >= renewed.expires_at
        daemon.seats.settle_restored()  # what the first connection does: expire what ran out
        assert "a" in daemon.seats.ledger.leases
        # Past the bound committed at this start (10 s): held until a commit covers it.
        wall.ms += 12_000
        sent = len(link.sent)
        await daemon.handle(*_renew(daemon, "a", grant.lease))
        assert len(link.sent) == sent
        await daemon.seats.flush_step()
        renewed = protocol.decode_to_client(_body(daemon, *link.sent[-1]))
        assert isinstance(renewed, protocol.SeatRenewed)
        _crash(daemon)
    wall.ms += 25_000
    async with running(config, link, wall, serve=False) as daemon:
        assert daemon.seats.ledger.leases["a"].expires_at >= renewed.expires_at
        daemon.seats.settle_restored()
        assert "a" in daemon.seats.ledger.leases


async def _held_renewal(daemon, link, wall, client: str) -> str:
    """A granted lease, then a renewal past the committed bound: its reply held."""
    assert (await ask(daemon, link, unlock_command(product_key(), "u1"))).ok
    await daemon.handle(*seat_request(daemon, client))
    grant = protocol.decode_to_client(_body(daemon, *link.sent[-1]))
    await daemon.seats.flush_step()
    wall.ms += 12_000  # past the bound committed at start (one renewal interval)
    sent = len(link.sent)
    await daemon.handle(*_renew(daemon, client, grant.lease))
    assert len(link.sent) == sent  # held
    return grant.lease


async def test_a_held_renewal_is_answered_by_whichever_flush_commits_it(tmp_path, link, wall):
    # The usage fold, a usage question and a license change flush too: the reply goes
    # out after that commit, and not before any commit.
    async with running(write_config(tmp_path), link, wall, serve=False) as daemon:
        await _held_renewal(daemon, link, wall, "a")
        sent = len(link.sent)
        await daemon.seats._store.flush_leases()  # not the seat desk's own flush
        assert len(link.sent) == sent + 1
        reply = protocol.decode_to_client(_body(daemon, *link.sent[-1]))
        assert isinstance(reply, protocol.SeatRenewed)
        assert daemon.seats._store.renewals_before_committed > wall()


async def test_a_held_renewal_of_a_seat_released_meanwhile_is_not_sent(tmp_path, link, wall):
    async with running(write_config(tmp_path), link, wall, serve=False) as daemon:
        lease = await _held_renewal(daemon, link, wall, "a")
        body = protocol.SeatRelease(client="a", lease=lease)
        await daemon.handle(daemon.topics.seat("a", "release"), protocol.encode(body))
        sent = len(link.sent)
        await daemon.seats.flush_step()
        assert len(link.sent) == sent  # no seat.renewed after the seat is gone


async def test_a_failing_database_does_not_withhold_renewal_replies(
    tmp_path, link, wall, monkeypatch
):
    # Held through a long write failure, every agent would stop its application at the
    # end of its offline grace: the replies go out after a failed flush.
    monkeypatch.setattr("floatkeyd.seats._STORE_RETRY_S", 0)
    async with running(write_config(tmp_path), link, wall, serve=False) as daemon:
        await _held_renewal(daemon, link, wall, "a")
        blocker = sqlite3.connect(tmp_path / "state" / "floatkeyd.db", isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")  # every write of the daemon now fails (busy)
        try:
            sent = len(link.sent)
            await daemon.seats.flush_step()
            assert len(link.sent) == sent + 1
            reply = protocol.decode_to_client(_body(daemon, *link.sent[-1]))
            assert isinstance(reply, protocol.SeatRenewed)
        finally:
            blocker.rollback()
            blocker.close()


async def test_a_crash_loop_does_not_keep_a_dead_agents_seat(tmp_path, link, wall):
    # Lease 30 s; "live" renews every 10 s, "dead" never again; a crash every 20 s.
    config = write_config(tmp_path)
    async with running(config, link, wall, serve=False) as daemon:
        assert (await ask(daemon, link, unlock_command(product_key(), "u1"))).ok
        await daemon.handle(*seat_request(daemon, "dead"))
        await daemon.handle(*seat_request(daemon, "live"))
        grant = protocol.decode_to_client(_body(daemon, *link.sent[-1]))
        await daemon.seats.flush_step()
        _crash(daemon)
    for _ in range(10):
        async with running(config, link, wall, serve=False) as daemon:
            daemon.seats.settle_restored()
            for _ in range(2):
                wall.ms += 10_000
                await _renewed(daemon, link, "live", grant.lease)
            _crash(daemon)
    async with running(config, link, wall, serve=False) as daemon:
        daemon.seats.settle_restored()
        assert "live" in daemon.seats.ledger.leases
        assert "dead" not in daemon.seats.ledger.leases


async def test_a_wills_grace_holds_through_a_crash(tmp_path, link, wall):
    config = write_config(tmp_path)
    async with running(config, link, wall, serve=False) as daemon:
        assert (await ask(daemon, link, unlock_command(product_key(), "u1"))).ok
        await daemon.handle(*seat_request(daemon, "a"))
        grant = protocol.decode_to_client(_body(daemon, *link.sent[-1]))
        await daemon.seats.flush_step()
        wall.ms += 20_000
        await _renewed(daemon, link, "a", grant.lease)  # the bound moves past now
        wall.ms += 1_000
        will = protocol.encode(protocol.SeatRelease(client="a"))
        await daemon.handle(daemon.topics.seat("a", "release"), will)  # its MQTT will
        grace_end = wall.ms + 5_000
        assert daemon.seats.ledger.leases["a"].expires_at == grace_end
        await daemon.seats.flush_step()
        _crash(daemon)
    wall.ms += 1_000
    async with running(config, link, wall, serve=False) as daemon:
        # Not a lease more: the grace as written.
        assert daemon.seats.ledger.leases["a"].expires_at == grace_end
        # Renewed within it, the seat is kept, and a later crash extends it again.
        renewed = await _renewed(daemon, link, "a", grant.lease)
        _crash(daemon)
    wall.ms += 10_000
    async with running(config, link, wall, serve=False) as daemon:
        assert daemon.seats.ledger.leases["a"].expires_at >= renewed.expires_at


async def test_a_clean_stop_writes_every_renewed_lease_exactly(tmp_path, link, wall):
    config = write_config(tmp_path)
    async with running(config, link, wall) as daemon:
        assert (await ask(daemon, link, unlock_command(product_key(), "u1"))).ok
        await daemon.handle(*seat_request(daemon, "a"))
        grant = protocol.decode_to_client(_body(daemon, *link.sent[-1]))
        wall.ms += 10_000
        renewed = await _renewed_served(daemon, link, "a", grant.lease)
    assert _stored_end(tmp_path, "a") == renewed.expires_at
    wall.ms += 15_000  # a bound left behind would now extend the lease
    async with running(config, link, wall, serve=False) as daemon:
        # Written exactly, so nothing is added at start.
        assert daemon.seats.ledger.leases["a"].expires_at == renewed.expires_at


async def _renewed_served(daemon, link, client: str, lease: str) -> protocol.SeatRenewed:
    """Renew on a serving daemon (its flush loop sends a held reply)."""
    await daemon.handle(*_renew(daemon, client, lease))

    def answered() -> protocol.SeatRenewed | None:
        reply = protocol.decode_to_client(_body(daemon, *link.sent[-1]))
        return reply if isinstance(reply, protocol.SeatRenewed) else None

    await eventually(answered)
    reply = answered()
    assert reply is not None
    return reply


async def test_a_failing_write_back_at_stop_still_stops(tmp_path, link, wall):
    config = write_config(tmp_path)
    answered: list[protocol.SeatRenewed] = []
    blockers: list[sqlite3.Connection] = []

    async def stopped_while_locked() -> None:
        async with running(config, link, wall) as daemon:
            assert (await ask(daemon, link, unlock_command(product_key(), "u1"))).ok
            await daemon.handle(*seat_request(daemon, "a"))
            grant = protocol.decode_to_client(_body(daemon, *link.sent[-1]))
            wall.ms += 10_000
            answered.append(await _renewed_served(daemon, link, "a", grant.lease))
            blocker = sqlite3.connect(tmp_path / "state" / "floatkeyd.db", isolation_level=None)
            blocker.execute("BEGIN EXCLUSIVE")  # the write-back at stop fails (busy)
            blockers.append(blocker)

    with pytest.raises(sqlite3.OperationalError):  # the stop's last write, as Store.close
        await stopped_while_locked()
    (renewed,), (blocker,) = answered, blockers
    # The daemon stopped all the same, its database closed; the bound covers the renewal.
    blocker.rollback()
    blocker.close()
    wall.ms += 15_000
    async with running(config, link, wall, serve=False) as daemon:
        assert daemon.seats.ledger.leases["a"].expires_at >= renewed.expires_at


async def test_a_borrowed_seat_keeps_its_own_end_through_a_crash_and_a_clean_stop(
    tmp_path, link, wall
):
    config = write_config(tmp_path, "[borrow]\nenabled = true\nmax_borrow_days = 1\n")
    borrow = protocol.SeatBorrow(
        client="lap-1", nonce="n1", seconds=3600, host_id="ab" * 16, user="ada", host="lap"
    )
    async with running(config, link, wall, serve=False) as daemon:
        assert (await ask(daemon, link, unlock_command(product_key(), "u1"))).ok
        await daemon.handle(*seat_request(daemon, "a"))
        grant = protocol.decode_to_client(_body(daemon, *link.sent[-1]))
        await daemon.handle(daemon.topics.seat("lap-1", "borrow"), protocol.encode(borrow))
        end = daemon.seats.ledger.leases["lap-1"].expires_at
        wall.ms += 20_000
        await daemon.handle(*_renew(daemon, "a", grant.lease))  # the bound is written
        await daemon.seats.flush_step()
    # As after a crash: the renewed seat is extended to the bound; the borrow is not.
    async with running(config, link, wall) as daemon:
        assert daemon.seats.ledger.leases["lap-1"].expires_at == end
        assert daemon.seats.ledger.leases["a"].expires_at >= wall.ms + 10_000
    # The clean stop wrote the leases back, but not the borrow into the leases table.
    with contextlib.closing(sqlite3.connect(tmp_path / "state" / "floatkeyd.db")) as db:
        assert db.execute("SELECT client FROM leases").fetchall() == [("a",)]
        assert db.execute("SELECT client FROM borrows").fetchall() == [("lap-1",)]
