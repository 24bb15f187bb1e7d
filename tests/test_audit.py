"""The audit log: one row per change, in its transaction, chained and signed; and its walk."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import signal
import sqlite3

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from conftest import CONFIG, run
from floatkey import protocol
from floatkey.envelope import Signer, open_envelope
from floatkey.signing import load_private_key
from floatkeyd.auditchain import AuditRowData, row_hash, verify_chain
from floatkeyd.store import AuditEntry, Store
from inprocess import (
    ADMIN,
    MemoryLink,
    Wall,
    admin_command,
    ask,
    product_key,
    running,
    trusted,
    unlock_command,
    write_config,
)
from licensing import ctl, issue, unlock
from servers import eventually

DB = ("state", "floatkeyd.db")


def audit_rows(tmp_path) -> list[tuple[str, str, str, str, dict[str, object]]]:
    with contextlib.closing(sqlite3.connect(tmp_path.joinpath(*DB))) as db:
        rows = db.execute("SELECT actor, action, outcome, reason, detail FROM audit ORDER BY seq")
        return [(*row[:4], json.loads(row[4])) for row in rows]


async def test_every_change_writes_exactly_one_row_with_its_actor_and_what_it_did(  # noqa: PLR0915 - one walk through every action
    tmp_path,
):
    link, wall = MemoryLink(), Wall()
    config = write_config(tmp_path)
    admin_kid = ADMIN.kid
    today = dt.datetime.now(dt.UTC).date()
    seen = 0

    def new_rows() -> list[tuple[str, str, str, str, dict[str, object]]]:
        nonlocal seen
        rows = audit_rows(tmp_path)
        fresh, seen = rows[seen:], len(rows)
        return fresh

    async with running(config, link, wall, serve=False) as daemon:
        key = product_key(seats=4, expires=today)
        assert (await ask(daemon, link, unlock_command(key, "u1"))).ok
        [row] = new_rows()
        assert row[:4] == (admin_kid, "admin.unlock", "accepted", "")
        assert (row[4]["generation"], row[4]["seats"], row[4]["status"]) == (1, 4, "licensed")
        serial = row[4]["serial"]

        assert (await ask(daemon, link, unlock_command(key, "u2"))).reason == "already_active"
        [row] = new_rows()
        assert row[:4] == (admin_kid, "admin.unlock", "accepted", "already_active")
        assert row[4]["serial"] == serial

        mistyped = key[:-1] + ("Z" if not key.endswith("Z") else "Y")
        assert not (await ask(daemon, link, unlock_command(mistyped, "u3"))).ok
        [row] = new_rows()
        assert row[:4] == (admin_kid, "admin.unlock", "refused", "mistyped")
        assert len(row[4]["key"]) < 20  # shortened, never whole

        request = protocol.SeatRequest(client="c1", nonce="n")
        await daemon.handle(daemon.topics.seat("c1", "request"), protocol.encode(request))
        assert (await ask(daemon, link, protocol.AdminRelease(request_id="r1", client="c1"))).ok
        [row] = new_rows()
        assert row[:4] == (admin_kid, "admin.release", "accepted", "")
        assert row[4] == {"client": "c1"}

        # A second activation, over a stored license: its own row too.
        assert (
            await ask(daemon, link, unlock_command(product_key(seats=5, expires=today), "u4"))
        ).ok
        [row] = new_rows()
        assert row[:4] == (admin_kid, "admin.unlock", "accepted", "")
        assert (row[4]["generation"], row[4]["seats"]) == (2, 5)
        assert row[4]["serial"] != serial

        status = await ask(daemon, link, protocol.AdminStatus(request_id="s1"))
        assert status.ok
        assert new_rows() == []  # reading changes nothing, so it is not audited

        wall.jump(2)
        assert await daemon.authority.expire_if_due()
        [row] = new_rows()
        assert row[:4] == ("system", "license.expired", "done", "")
        assert (row[4]["generation"], row[4]["status"]) == (3, "expired")

        stranger = protocol.AdminStatus(request_id="x1", reply_to="t")
        forged = Signer(Ed25519PrivateKey.generate()).seal(
            daemon.topics.admin_request, protocol.encode(stranger)
        )
        await daemon.handle(daemon.topics.admin_request, forged)
        [row] = new_rows()
        assert row[:4][1:] == ("admin", "refused", "not_authorized")

    # floatkeyd admin-key add (a separate process in real life: the same store call).
    identity = Signer(load_private_key(tmp_path / "state" / "server-identity.key"))
    async with await Store.open(tmp_path.joinpath(*DB), identity) as store:
        assert await store.add_admin_key("00112233445566aa", "ed25519:x", wall())
    [row] = new_rows()
    assert row[:4] == ("local", "admin-key.add", "done", "")

    with contextlib.closing(sqlite3.connect(tmp_path.joinpath(*DB))) as db:
        db.execute("DELETE FROM admin_keys")
        db.execute("UPDATE licenses SET seats = 1000 WHERE active = 1")
        db.commit()
    async with running(config, link, wall) as daemon:
        [row] = new_rows()
        assert row[:4] == ("system", "license.reverify", "refused", "tampered")
        daemon.reload()
        await eventually(lambda: len(audit_rows(tmp_path)) > seen)
        [row] = new_rows()
        assert row[:4] == ("system", "config.reload", "done", "")
        assert row[4]["limits"]["after"] == {"per_login": 0, "per_host": 0, "per_user": 0}


async def test_a_replayed_unlock_is_refused_and_the_newer_license_stays(tmp_path):
    link, wall = MemoryLink(), Wall()
    async with running(write_config(tmp_path), link, wall, serve=False) as daemon:
        first = unlock_command(product_key(seats=3), "key-a")
        captured = admin_command(daemon, first)  # what someone on the broker saw
        await daemon.handle(daemon.topics.admin_request, captured)
        assert (await ask(daemon, link, unlock_command(product_key(seats=7), "key-b"))).ok
        before = (daemon.authority.generation, daemon.authority.seats)
        await daemon.handle(daemon.topics.admin_request, captured)
        reply = [p for p in link.published if p.topic.endswith("/key-a")][-1]
        result = protocol.decode(
            open_envelope(reply.payload, reply.topic, trusted(daemon)), protocol.AdminResult
        )
        assert (result.ok, result.reason) == (False, "replayed")
        assert (daemon.authority.generation, daemon.authority.seats) == before == (2, 7)


def _chain(n: int) -> list[AuditRowData]:
    rows, previous = [], "0" * 64
    for seq in range(1, n + 1):
        fields = ("kid", "admin.unlock", "accepted", "", json.dumps({"n": seq}))
        previous = row_hash(previous, seq, 1000 + seq, fields)
        rows.append(AuditRowData(seq, 1000 + seq, *fields, previous))
    return rows


async def test_the_walk_names_the_row_altered_removed_or_inserted(tmp_path):
    link, wall = MemoryLink(), Wall()
    async with running(write_config(tmp_path), link, wall, serve=False) as daemon:
        for n in range(5):
            assert (await ask(daemon, link, unlock_command(product_key(seats=n + 1), f"a{n}"))).ok
        key = next(iter(trusted(daemon).values()))
        rows, head = await daemon.admin._store.audit_log.chain()
    verdict = verify_chain(rows, head, key)
    assert verdict.intact, verdict.message
    assert verdict.message == "5 rows, intact; the last signed at row 5."

    def check(changed: list[AuditRowData], words: str, seq: int) -> None:
        found = verify_chain(changed, head, key)
        assert not found.intact
        assert words in found.message
        assert found.bad_seq == seq

    edited = dataclasses.replace(
        rows[2], detail=rows[2].detail.replace('"seats": 3', '"seats": 99')
    )
    check([*rows[:2], edited, *rows[3:]], "Row 3 was altered", 3)
    check([*rows[:1], *rows[2:]], "Rows 2 to 2 were removed", 2)
    check(rows[:3], "Rows 4 to 5 were removed from the end", 4)
    extra = AuditRowData(6, 9, "kid", "admin.unlock", "accepted", "", "{}", "f" * 64)
    check([*rows, extra], "Row 6 was altered", 6)
    # Inserted with a correct hash (SHA-256 is no secret): the signed head catches it.
    content = (extra.actor, extra.action, extra.outcome, extra.reason, extra.detail)
    forged = dataclasses.replace(extra, hash=row_hash(rows[-1].hash, 6, 9, content))
    check([*rows, forged], "added after the last signed head", 6)
    # Everything from row 3 on recomputed after an edit: only the signed head can tell.
    rewritten, previous = list(rows[:2]), rows[1].hash
    for row in [edited, *rows[3:]]:
        fields = (row.actor, row.action, row.outcome, row.reason, row.detail)
        previous = row_hash(previous, row.seq, row.ts, fields)
        rewritten.append(dataclasses.replace(row, hash=previous))
    check(rewritten, "rewritten", 5)
    assert not verify_chain(rows, None, key).intact  # the signed head removed
    blanked = dataclasses.replace(rows[1], hash="")
    check([rows[0], blanked, *rows[2:]], "Row 2 was altered", 2)
    early = dataclasses.replace(rows[0], seq=0)
    check([early, *rows], "Row 0 was inserted", 0)
    check([], "removed from the end", 1)  # everything deleted, the head kept
    # A head moved to another time is not the server's signature any more.
    moved = dataclasses.replace(head, signed_at=head.signed_at + 1)
    assert "signature" in verify_chain(rows, moved, key).message


async def test_rows_from_before_the_chain_are_chained_when_the_database_is_upgraded(tmp_path):
    from floatkeyd.store import _MIGRATIONS, _split_sql  # noqa: PLC0415

    path = tmp_path / "old.db"
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        for script in _MIGRATIONS[:2]:  # the schema as version 2 left it
            for statement in _split_sql(script):
                db.execute(statement)
        db.execute("PRAGMA user_version = 2")
        for n in range(3):
            db.execute(
                "INSERT INTO audit (ts, actor, action, outcome, reason, detail) "
                "VALUES (?, 'kid', 'admin.unlock', 'accepted', '', '{}')",
                (1000 + n,),
            )
    signer = Signer(Ed25519PrivateKey.generate())
    async with await Store.open(path, signer) as store:
        rows, head = await store.audit_log.chain()
        assert [row.hash != "" for row in rows] == [True, True, True]
        assert head is None  # nothing signed yet: a log from before
        await store.audit(AuditEntry("local", "admin-key.add", "done"), 2000)
        rows, head = await store.audit_log.chain()
    verdict = verify_chain(rows, head, signer.public_key)
    assert verdict.intact, verdict.message
    assert verdict.rows == 4


@pytest.mark.broker
async def test_floatkeyctl_lists_the_log_and_says_which_row_was_altered(server_factory):
    server = server_factory("mosquitto")
    daemon = server.start_daemon()
    assert (await asyncio.to_thread(unlock, server, issue(seats=2))).returncode == 0
    # Another process appends to the same chain while the daemon runs.
    public = CONFIG.joinpath("dev-admin.key.pub").read_text().strip()
    other = await asyncio.to_thread(
        run, "floatkeyd", "admin-key", "add", public, "--config", str(server.config_path)
    )
    assert other.returncode == 0, other.stderr
    assert (await asyncio.to_thread(unlock, server, issue(seats=3))).returncode == 0
    listing = await asyncio.to_thread(ctl, server, "audit", "--json", "--action", "admin.unlock")
    assert listing.returncode == 0, listing.stderr
    rows = json.loads(listing.stdout)["entries"]
    assert [r["detail"]["seats"] for r in rows] == [2, 3]
    intact = await asyncio.to_thread(ctl, server, "audit", "verify")
    assert intact.returncode == 0, intact.stdout + intact.stderr
    assert "intact" in intact.stdout
    # Someone with the database raises the seats of the first unlock in its audit row.
    with contextlib.closing(server.db()) as db:
        db.execute("DROP TRIGGER audit_no_update")
        db.execute("UPDATE audit SET detail = replace(detail, '\"seats\": 2', '\"seats\": 20')")
        db.commit()
    altered = await asyncio.to_thread(ctl, server, "audit", "verify")
    assert altered.returncode == 1
    assert f"Row {rows[0]['seq']} was altered." in altered.stdout
    daemon.process.send_signal(signal.SIGTERM)


async def test_a_command_made_for_a_person_names_both_in_the_audit(tmp_path):
    link, wall = MemoryLink(), Wall()
    async with running(write_config(tmp_path), link, wall, serve=False) as daemon:
        command = msgspec.structs.replace(
            unlock_command(product_key(), "for-alice"), user="console:alice"
        )
        assert (await ask(daemon, link, command)).ok
    assert audit_rows(tmp_path)[-1][:2] == (f"console:alice via {ADMIN.kid}", "admin.unlock")


async def test_the_audit_pages_newest_first_backwards_and_filters_by_outcome(tmp_path):
    link, wall = MemoryLink(), Wall()
    async with running(write_config(tmp_path), link, wall, serve=False) as daemon:
        good = product_key(seats=4)
        for i in range(3):
            assert (await ask(daemon, link, unlock_command(good, f"ok{i}"))).ok
            bad = good[:-1] + ("Z" if not good.endswith("Z") else "Y")
            assert not (await ask(daemon, link, unlock_command(bad, f"bad{i}"))).ok

        async def page(**query) -> list[protocol.AuditRow]:
            command = protocol.AdminAudit(request_id=f"q{len(link.published)}", **query)
            result = await ask(daemon, link, command)
            assert result.ok, result.message
            return result.audit or []

        newest = await page(newest_first=True, limit=4)
        seqs = [row.seq for row in newest]
        assert seqs == sorted(seqs, reverse=True)
        assert seqs[0] == 6
        older = await page(newest_first=True, before_seq=seqs[-1], limit=4)
        assert [row.seq for row in older] == [2, 1]
        refused = await page(outcome="refused", newest_first=True)
        assert [row.reason for row in refused] == ["mistyped"] * 3
        accepted = await page(outcome="accepted", action="admin.unlock")
        assert [row.seq for row in accepted] == [1, 3, 5]
