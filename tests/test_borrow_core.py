"""Borrowed seats in the daemon, in-process (the broker link and the clock are seams)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sqlite3
import threading

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from floatkey import _supervisor, protocol
from floatkey.borrow import BorrowStore, verify_token
from floatkey.envelope import open_envelope
from floatkey.errors import ConfigError, LicenseFileInvalid
from floatkey.licensefile import verify_license_file
from floatkey.pinning import KnownServers
from floatkeyd._ctl_text import clients_text
from floatkeyd.borrowing import DAY_MS
from floatkeyd.config import load_config
from floatkeyd.metrics import DaemonCollector
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
from servers import eventually

HOST_ID = "ab" * 16
BORROWING = "[borrow]\nenabled = true\nmax_borrow_days = 1\n"


def borrow_body(client: str, seconds: int = 3600) -> bytes:
    return protocol.encode(
        protocol.SeatBorrow(
            client=client, nonce="n1", seconds=seconds, host_id=HOST_ID, user="ada", host="lap"
        )
    )


def replies(daemon, link: MemoryLink, client: str) -> list[protocol.BorrowReply]:
    topic = daemon.topics.client(client)
    return [
        protocol.decode(open_envelope(payload, topic, trusted(daemon)), protocol.BorrowReply)  # type: ignore[arg-type]
        for sent_to, payload in link.sent
        if sent_to == topic
    ]


def usage_reasons(tmp_path) -> list[tuple[str, str]]:
    with sqlite3.connect(tmp_path / "state" / "floatkeyd.db") as db:
        return list(db.execute("SELECT kind, reason FROM usage_events WHERE client = 'lap-1'"))


async def test_a_borrow_is_counted_across_a_restart_and_freed_once_at_its_end(tmp_path):
    config, link, wall = write_config(tmp_path, BORROWING), MemoryLink(), Wall()
    async with running(config, link, wall) as daemon:
        assert (await ask(daemon, link, unlock_command(product_key(seats=2), "u1"))).ok
        topic = daemon.topics.seat("lap-1", "borrow")
        await daemon.handle(topic, borrow_body("lap-1"))
        (granted,) = replies(daemon, link, "lap-1")
        assert isinstance(granted, protocol.BorrowGranted)
        key = next(iter(trusted(daemon).values()))
        token = verify_token(granted.token, daemon.topics, key, HOST_ID, "lap-1")
        assert token.end - token.start == 3_600_000
        assert token.features == ["dataflow"]
        assert (daemon.seats.ledger.in_use, daemon.seats.ledger.borrowed) == (1, 1)
    async with running(config, link, wall, serve=False) as daemon:
        assert (daemon.seats.ledger.in_use, daemon.seats.ledger.borrowed) == (1, 1)
    wall.jump(1)  # the borrow's end passes while nobody says anything
    async with running(config, link, wall) as daemon:
        await eventually(lambda: daemon.seats.ledger.borrowed == 0)
        assert daemon.seats.ledger.in_use == 0
    async with running(config, link, wall) as daemon:
        assert daemon.seats.ledger.borrowed == 0
    assert usage_reasons(tmp_path) == [("granted", "borrow"), ("released", "borrow_ended")]


async def test_a_borrow_longer_than_allowed_is_denied_with_its_reason(tmp_path):
    config, link, wall = write_config(tmp_path, BORROWING), MemoryLink(), Wall()
    async with running(config, link, wall) as daemon:
        assert (await ask(daemon, link, unlock_command(product_key(seats=2), "u1"))).ok
        topic = daemon.topics.seat("lap-1", "borrow")
        await daemon.handle(topic, borrow_body("lap-1", seconds=DAY_MS // 1000 + 1))
        (denied,) = replies(daemon, link, "lap-1")
        assert isinstance(denied, protocol.BorrowDenied)
        assert denied.reason == "borrow_too_long"
        assert "at most 1 day" in denied.message


def test_pinning_a_key_keeps_the_borrow_tokens_beside_it(tmp_path):
    path = tmp_path / "state" / "known.json"
    BorrowStore(path).hold_pending("floatkey/a", "lap-1", "n1")
    BorrowStore(path).keep("floatkey/a", "token", "lap-1", 5, 1000)
    BorrowStore(path).saw(1234)
    assert KnownServers(path).pin("floatkey/a", Ed25519PrivateKey.generate().public_key())
    entry = BorrowStore(path).entry("floatkey/a")
    assert entry is not None
    assert (entry.envelope, entry.client, entry.local_end) == ("token", "lap-1", 5)
    assert BorrowStore(path).latest_seen() == 1234
    assert BorrowStore(path).pending("floatkey/a") is None  # kept: no longer pending
    assert path.stat().st_mode & 0o777 == 0o600


LONG_BORROWS = "[borrow]\nenabled = true\nmax_borrow_days = 30\n"


def seat_replies(daemon, link: MemoryLink, client: str) -> list[object]:
    topic = daemon.topics.client(client)
    bodies = [open_envelope(body, topic, trusted(daemon)) for t, body in link.sent if t == topic]
    return [protocol.decode_to_client(b) for b in bodies if b.startswith(b'{"type":"seat.')]


async def lend(daemon, link: MemoryLink, client: str, seconds: int = 3600) -> protocol.BorrowToken:
    await daemon.handle(daemon.topics.seat(client, "borrow"), borrow_body(client, seconds))
    granted = replies(daemon, link, client)[-1]
    assert isinstance(granted, protocol.BorrowGranted), granted
    key = next(iter(trusted(daemon).values()))
    return verify_token(granted.token, daemon.topics, key, HOST_ID, client)


def check_body(token: protocol.BorrowToken) -> bytes:
    return protocol.encode(
        protocol.SeatBorrowCheck(client=token.client, nonce="c1", lease=token.lease)
    )


async def test_borrows_stay_counted_across_a_new_license_until_their_laptop_checks_in(tmp_path):
    config, link, wall = write_config(tmp_path, BORROWING), MemoryLink(), Wall()
    async with running(config, link, wall) as daemon:
        assert (await ask(daemon, link, unlock_command(product_key(seats=2), "u1"))).ok
        first = await lend(daemon, link, "lap-1")
        second = await lend(daemon, link, "lap-2")
        # A smaller license: the laptops run on under their tokens, still counted.
        assert (await ask(daemon, link, unlock_command(product_key(seats=1), "u2"))).ok
        ledger = daemon.seats.ledger
        assert (ledger.in_use, ledger.borrowed) == (2, 2)
        assert sum(row.borrowed for row in daemon.seats.client_rows()) == 2
        collector = DaemonCollector(
            authority=daemon.authority,
            seats=daemon.seats,
            admin=daemon.admin,
            drops=daemon.drops,
            link=link,
            store=daemon.seats._store,
        )
        figures = {m.name: m.samples[0].value for m in collector.collect() if m.samples}
        assert figures["floatkey_seats_borrowed"] == 2
        listing = clients_text(daemon.seats.client_rows(), [])
        assert "Borrowed seats" in listing
        assert "lap-1" in listing.split("Borrowed seats")[1]
        assert "lap-2" in listing.split("Borrowed seats")[1]
        request = protocol.SeatRequest(client="desk", nonce="r1")
        await daemon.handle(daemon.topics.seat("desk", "request"), protocol.encode(request))
        (denied,) = seat_replies(daemon, link, "desk")
        assert isinstance(denied, protocol.SeatDenied)
        assert denied.reason == "seats_exhausted"
        # lap-1 reaches the broker: it learns of the new license, and its borrow ends.
        await daemon.handle(daemon.topics.seat("lap-1", "borrow"), check_body(first))
        status = replies(daemon, link, "lap-1")[-1]
        assert isinstance(status, protocol.BorrowStatus)
        assert not status.held
        assert "new license" in status.message
        assert (ledger.in_use, ledger.borrowed) == (1, 1)
    async with running(config, link, wall, serve=False) as daemon:
        # lap-2's borrow, restored with its exact end.
        (lease,) = daemon.seats.ledger.leases.values()
        assert (lease.client, lease.token, lease.expires_at) == ("lap-2", second.lease, second.end)
        assert daemon.seats.ledger.borrowed == 1
    assert usage_reasons(tmp_path) == [
        ("granted", "borrow"),
        ("released", "license_changed"),
    ]


async def test_a_borrow_never_outlasts_the_license(tmp_path):
    config, link, wall = write_config(tmp_path, LONG_BORROWS), MemoryLink(), Wall()
    expires = dt.datetime.now(dt.UTC).date() + dt.timedelta(days=3)
    async with running(config, link, wall) as daemon:
        key = product_key(seats=2, expires=expires)
        assert (await ask(daemon, link, unlock_command(key, "u1"))).ok
        token = await lend(daemon, link, "lap-1", seconds=20 * 86_400)
        assert token.end == daemon.authority.expiry_deadline()
        assert token.end - token.start < 5 * DAY_MS


async def test_a_license_changed_while_a_borrow_is_recorded_sends_no_token(tmp_path, monkeypatch):
    config, link, wall = write_config(tmp_path, BORROWING), MemoryLink(), Wall()
    async with running(config, link, wall) as daemon:
        assert (await ask(daemon, link, unlock_command(product_key(seats=2), "u1"))).ok
        ledger = daemon.seats.ledger
        add_borrow = daemon.seats._store.add_borrow

        async def meanwhile_a_new_license(*args, **kwargs) -> None:
            await add_borrow(*args, **kwargs)
            ledger.change_license("licensed", 2, ledger.generation + 1)

        monkeypatch.setattr(daemon.seats._store, "add_borrow", meanwhile_a_new_license)
        await daemon.handle(daemon.topics.seat("lap-1", "borrow"), borrow_body("lap-1"))
        (denied,) = replies(daemon, link, "lap-1")
        assert isinstance(denied, protocol.BorrowDenied)
        assert denied.reason == "license_changed"
        assert ledger.borrowed == 0
    with sqlite3.connect(tmp_path / "state" / "floatkeyd.db") as db:
        assert list(db.execute("SELECT client FROM borrows")) == []


async def test_a_failed_store_write_refuses_a_borrow_and_a_return(tmp_path, monkeypatch):
    config, link, wall = write_config(tmp_path, BORROWING), MemoryLink(), Wall()
    async with running(config, link, wall) as daemon:
        assert (await ask(daemon, link, unlock_command(product_key(seats=2), "u1"))).ok
        store, ledger = daemon.seats._store, daemon.seats.ledger

        async def failing(*args: object, **kwargs: object) -> None:
            raise sqlite3.OperationalError("disk I/O error")

        with monkeypatch.context() as patch:
            patch.setattr(store, "add_borrow", failing)
            await daemon.handle(daemon.topics.seat("lap-1", "borrow"), borrow_body("lap-1"))
        (denied,) = replies(daemon, link, "lap-1")
        assert isinstance(denied, protocol.BorrowDenied)
        assert denied.reason == "store_failed"
        assert (ledger.in_use, ledger.borrowed) == (0, 0)
        token = await lend(daemon, link, "lap-1")
        back = protocol.SeatReturn(client="lap-1", nonce="b1", lease=token.lease)
        with monkeypatch.context() as patch:
            patch.setattr(store, "end_borrow", failing)
            await daemon.handle(daemon.topics.seat("lap-1", "return"), protocol.encode(back))
        refused = replies(daemon, link, "lap-1")[-1]
        assert isinstance(refused, protocol.BorrowDenied)
        assert refused.reason == "store_failed"
        assert (ledger.in_use, ledger.borrowed) == (1, 1)  # still lent, as it says
        await daemon.handle(daemon.topics.seat("lap-1", "return"), protocol.encode(back))
        returned = replies(daemon, link, "lap-1")[-1]
        assert isinstance(returned, protocol.BorrowReturned)
        assert returned.returned
        assert (ledger.in_use, ledger.borrowed) == (0, 0)


async def test_seat_messages_on_a_borrowed_client_id_leave_the_borrow_alone(tmp_path):
    config, link, wall = write_config(tmp_path, BORROWING), MemoryLink(), Wall()
    async with running(config, link, wall) as daemon:
        assert (await ask(daemon, link, unlock_command(product_key(seats=2), "u1"))).ok
        token = await lend(daemon, link, "lap-1")
        ledger = daemon.seats.ledger
        seats = daemon.topics.seat
        request = protocol.SeatRequest(client="lap-1", nonce="r1")
        await daemon.handle(seats("lap-1", "request"), protocol.encode(request))
        (denied,) = seat_replies(daemon, link, "lap-1")[-1:]
        assert isinstance(denied, protocol.SeatDenied)
        assert denied.reason == "already_borrowed"
        renew = protocol.SeatRenew(client="lap-1", lease=token.lease)
        await daemon.handle(seats("lap-1", "renew"), protocol.encode(renew))
        release = protocol.SeatRelease(client="lap-1", lease=token.lease)
        await daemon.handle(seats("lap-1", "release"), protocol.encode(release))
        will = protocol.SeatRelease(client="lap-1")
        await daemon.handle(seats("lap-1", "release"), protocol.encode(will))
        assert daemon.drops.counts["borrowed_seat"] == 1
        (lease,) = ledger.leases.values()
        assert (lease.token, lease.expires_at) == (token.lease, token.end)
        assert (ledger.in_use, ledger.borrowed) == (1, 1)
    assert usage_reasons(tmp_path) == [("granted", "borrow"), ("denied", "already_borrowed")]


async def test_a_borrow_asked_again_after_a_lost_answer_gets_the_same_seat(tmp_path):
    config, link, wall = write_config(tmp_path, BORROWING), MemoryLink(), Wall()
    async with running(config, link, wall) as daemon:
        assert (await ask(daemon, link, unlock_command(product_key(seats=2), "u1"))).ok
        first = await lend(daemon, link, "lap-1")
        again = await lend(daemon, link, "lap-1")  # the same request: the answer was lost
        assert (again.lease, again.end) == (first.lease, first.end)
        assert daemon.seats.ledger.borrowed == 1
        # Another request on that client id (another nonce) is not the lost one.
        other = protocol.SeatBorrow(client="lap-1", nonce="n2", seconds=60, host_id=HOST_ID)
        await daemon.handle(daemon.topics.seat("lap-1", "borrow"), protocol.encode(other))
        denied = replies(daemon, link, "lap-1")[-1]
        assert isinstance(denied, protocol.BorrowDenied)
        assert denied.reason == "already_borrowed"
    assert usage_reasons(tmp_path)[0] == ("granted", "borrow")
    assert usage_reasons(tmp_path).count(("granted", "borrow")) == 1


def test_the_state_file_keeps_every_writer_s_change(tmp_path):
    """Read-modify-write under the file's lock: concurrent writers lose nothing."""
    path = tmp_path / "state" / "known.json"
    store = BorrowStore(path)
    store.keep("floatkey/a", "token", "lap-1", 5, 1000)

    def writer(n: int) -> None:
        for i in range(50):
            BorrowStore(path).saw(1000 + n * 1000 + i)
            BorrowStore(path).hold_pending(f"floatkey/p{n}", f"c{i}", "n")

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert store.entry("floatkey/a") is not None
    assert all(store.pending(f"floatkey/p{n}") == ("c49", "n") for n in range(4))
    assert store.latest_seen() == 4049


def test_max_borrow_days_and_the_agent_s_days_share_one_bound(tmp_path):
    assert load_config(write_config(tmp_path, "[borrow]\nmax_borrow_days = 366\n"))
    with pytest.raises(ConfigError) as refused:
        load_config(write_config(tmp_path, "[borrow]\nmax_borrow_days = 367\n"))
    assert "at most 366" in refused.value.message
    assert protocol.BORROW_MAX_S == 366 * 86_400
    assert _supervisor._days("366") == 366
    with pytest.raises(argparse.ArgumentTypeError):
        _supervisor._days("367")


async def test_a_license_file_whose_token_names_another_server_is_refused(tmp_path):
    config, link, wall = write_config(tmp_path, BORROWING), MemoryLink(), Wall()
    async with running(config, link, wall) as daemon:
        token = protocol.BorrowToken(
            server="elsewhere", client="lap-1", lease="l", generation=1, licensee="",
            organization="", features=["dataflow"], host="lap", host_id=HOST_ID, user="",
            app="", start=0, end=protocol.now_ms() + DAY_MS, ts=0,
        )  # fmt: skip
        topic = daemon.topics.borrow_token("lap-1")
        sealed = daemon.seats._signer.seal(topic, protocol.encode(token)).decode()
        key = next(iter(trusted(daemon).values()))
    path = tmp_path / "license.json"
    path.write_text(json.dumps({"borrowed": {"token": sealed, "topic": topic}}))
    with pytest.raises(LicenseFileInvalid) as refused:
        verify_license_file(path, key)
    assert refused.value.problem == "other_server"
