"""Borrowed seats in the daemon, in-process (the broker link and the clock are seams)."""

from __future__ import annotations

import sqlite3

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from floatkey import protocol
from floatkey.borrow import BorrowStore, verify_token
from floatkey.envelope import open_envelope
from floatkey.pinning import KnownServers
from floatkeyd.borrowing import DAY_MS
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
        token = verify_token(granted.token, daemon.topics, *trusted(daemon).values(), HOST_ID)
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
    BorrowStore(path).keep("floatkey/a", "token", 5)
    BorrowStore(path).saw(1234)
    assert KnownServers(path).pin("floatkey/a", Ed25519PrivateKey.generate().public_key())
    assert BorrowStore(path).entry("floatkey/a") == ("token", 5)
    assert BorrowStore(path).latest_seen() == 1234
    assert path.stat().st_mode & 0o777 == 0o600
