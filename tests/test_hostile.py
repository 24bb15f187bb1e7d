"""What one hostile client can try, and that it costs only its own messages.

Each test is a hole a security test of an earlier version found (docs/SECURITY.md lists
them with their outcome); the attacker holds only what every client machine has.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3

import aiomqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from floatkey import protocol
from floatkey.envelope import Signer, open_envelope
from inprocess import ADMIN, MemoryLink, Wall, ask, running, trusted, write_config
from licensing import issue, unlock
from servers import clients, eventually, make_agent, raw_client, status

pytestmark = pytest.mark.broker

OVERFLOW = b'{"type":"seat.request","client":"x","nonce":"n","pid":18446744073709551615}'


async def test_a_seat_request_with_a_huge_pid_is_dropped_and_the_daemon_serves_on(server, tmp_path):
    daemon = server.start_daemon()
    assert (await asyncio.to_thread(unlock, server, issue(seats=2))).returncode == 0
    async with raw_client(server, "floatkeyd", "x") as attacker:
        await attacker.publish(server.topics.seat("x", "request"), OVERFLOW, qos=1)
    await eventually(lambda: status(server)["dropped"].get("bad_body", 0) >= 1)
    # Still serving, and still writing: a legitimate agent's lease reaches the database.
    async with make_agent(server, tmp_path, "after") as agent:
        assert agent.licensed

        def written() -> bool:
            with contextlib.closing(server.db()) as db:
                return bool(
                    db.execute(
                        "SELECT 1 FROM leases WHERE client = ?", (agent.client_id,)
                    ).fetchone()
                )

        await eventually(written)
    assert daemon.process.poll() is None
    assert "x" not in [row["client"] for row in await asyncio.to_thread(clients, server)]


def _seat(daemon, client: str, nonce: str) -> tuple[str, bytes]:
    body = protocol.SeatRequest(client=client, nonce=nonce)
    return daemon.topics.seat(client, "request"), protocol.encode(body)


def _granted(daemon, link: MemoryLink) -> protocol.SeatGranted:
    topic, payload = link.sent[-1]
    body = open_envelope(payload, topic, trusted(daemon))
    reply = protocol.decode_to_client(body)
    assert isinstance(reply, protocol.SeatGranted)
    return reply


async def test_a_request_on_a_held_client_id_never_gets_the_held_lease(tmp_path):
    link, wall = MemoryLink(), Wall()
    async with running(write_config(tmp_path), link, wall, serve=False) as daemon:
        await daemon.handle(*_seat(daemon, "victim", "v1"))
        victim = _granted(daemon, link)
        await daemon.handle(*_seat(daemon, "victim", "m1"))  # someone else, same id
        impostor = _granted(daemon, link)
        assert impostor.lease != victim.lease
        assert daemon.seats.ledger.in_use == 0  # unlicensed sessions hold no seat
        assert len(daemon.seats.ledger.leases) == 1


async def test_an_admin_command_without_ts_is_refused(tmp_path):
    link, wall = MemoryLink(), Wall()
    async with running(write_config(tmp_path), link, wall, serve=False) as daemon:
        topic = daemon.topics.admin_request
        body = b'{"type":"admin.status","request_id":"nots"}'
        await daemon.handle(topic, ADMIN.seal(topic, body))
        assert daemon.drops.counts["bad_admin_body"] == 1
        assert not [p for p in link.published if p.topic.endswith("/nots")]


async def test_refused_admin_commands_do_not_grow_the_database(tmp_path):
    link, wall = MemoryLink(), Wall()
    async with running(write_config(tmp_path), link, wall, serve=False) as daemon:
        topic = daemon.topics.admin_request
        stranger = Signer(Ed25519PrivateKey.generate())
        for n in range(500):
            command = protocol.AdminStatus(request_id=f"r{n}")
            await daemon.handle(topic, stranger.seal(topic, protocol.encode(command)))
        long_kid = b'{"v":1,"kid":"' + b"k" * 60_000 + b'","body":"e30","sig":"AA"}'
        for _ in range(50):
            await daemon.handle(topic, long_kid)
        status_reply = await ask(daemon, link, protocol.AdminStatus(request_id="s"))
        assert status_reply.ok
    with contextlib.closing(sqlite3.connect(tmp_path / "state" / "floatkeyd.db")) as db:
        rows = db.execute("SELECT actor, detail FROM audit WHERE outcome = 'refused'").fetchall()
    assert len(rows) <= 4  # one row per reason per minute, not one per message
    assert all(len(actor) <= 16 for actor, _ in rows)
    assert sum(len(detail) for _, detail in rows) < 2_000


async def test_long_client_ids_neither_flood_the_log_nor_grow_the_daemon(server):
    daemon = server.start_daemon()
    await eventually(lambda: status(server))
    log_before = len(daemon.log())
    huge = "v" * 60_000
    payload = protocol.encode(protocol.SeatRequest(client="v", nonce="n"))
    async with raw_client(server, "floatkeyd", "flooder") as flooder:
        for n in range(2_000):
            await flooder.publish(
                f"{server.topics.root}/seats/floatkeyd/{huge}/request", payload, qos=0
            )
            if n % 200 == 0:
                await asyncio.sleep(0.01)  # let the broker keep up
        await flooder.publish(
            f"{server.topics.root}/seats/floatkeyd/{huge}/request", payload, qos=1
        )
    dropped = await eventually(
        lambda: (n := status(server)["dropped"].get("unknown_topic", 0)) >= 1_000 and n,
        within=60,
    )
    assert dropped >= 1_000
    grown = len(daemon.log()) - log_before
    assert grown < 64 * 1024, grown  # 2,000 drops, a handful of short lines
    assert "v" * 200 not in daemon.log()


async def test_connecting_with_the_daemons_old_client_id_does_not_kick_it_off(server):
    daemon = server.start_daemon()
    identifier = (server.state_dir / "broker-client-id").read_text().strip()
    assert identifier.startswith("floatkeyd-")
    assert len(identifier) >= 30  # 96 random bits: not guessable
    assert oct((server.state_dir / "broker-client-id").stat().st_mode & 0o777) == "0o600"
    for _ in range(5):
        async with raw_client(server, "floatkey-agent", f"floatkeyd-{server.topics.server}"):
            pass
    assert status(server)["status"] == "unlicensed"  # answers at once: still connected
    assert "broker unreachable" not in daemon.log()


@pytest.mark.parametrize("template", ["{victim}/release", "{victim}/renew", "+", "#", "{victim}/+"])
async def test_the_shipped_acl_holds_against_hostile_client_ids(server_factory, tmp_path, template):
    server = server_factory("mosquitto")
    server.start_daemon()
    assert (await asyncio.to_thread(unlock, server, issue(seats=2))).returncode == 0
    topics = server.topics
    async with make_agent(server, tmp_path, "victim") as victim:
        # The hostile client's id names the victim's topics; the forged release carries
        # the victim's real lease (the worst case: as if it had been read somehow).
        forged = protocol.encode(
            protocol.SeatRelease(client=victim.client_id, lease=victim._grant.lease)
        )
        hostile_id = template.format(victim=victim.client_id)
        targets = [
            f"{topics.root}/seats/floatkey-agent/{victim.client_id}/release",
            f"{topics.root}/seats/floatkey-agent/{hostile_id}/release",
            # "{victim}/release" under a rule ending in '#'
            f"{topics.root}/seats/floatkey-agent/{hostile_id}",
        ]
        async with raw_client(server, "floatkey-agent", hostile_id) as hostile:
            for topic in targets:
                if "+" not in topic and "#" not in topic:  # not publishable anyway
                    await hostile.publish(topic, forged, qos=1)
        # The daemon answers its administrator after anything the broker passed on from
        # the hostile client (one connection to the broker: its messages keep order).
        rows = await asyncio.to_thread(clients, server)
        assert [row["client"] for row in rows] == [victim.client_id]
        assert victim.has_seat


async def test_the_embedded_broker_lets_in_only_the_logins_made_at_first_start(server_factory):
    server = server_factory("embedded")
    server.start_daemon()
    logins = server.state_dir / "embedded-broker"
    assert oct(logins.stat().st_mode & 0o777) == "0o700"
    for user in ("floatkeyd", "floatkey-admin", "floatkey-agent"):
        assert oct((logins / f"{user}.password").stat().st_mode & 0o777) == "0o600"
    for username, password in [(None, None), ("floatkey-agent", "guess"), ("nobody", "x")]:
        with pytest.raises(aiomqtt.MqttError):
            async with aiomqtt.Client(
                "127.0.0.1", server.port, username=username, password=password, identifier="spy"
            ) as spy:
                await spy.subscribe("#")
    async with raw_client(server, "floatkey-agent", "agent-login"):
        pass  # the real password works


async def test_product_keys_cross_the_broker_only_sealed(server_factory):
    server = server_factory("mosquitto")
    server.start_daemon()
    key = issue(seats=4)
    # Whoever reads the admin topic (here the daemon's own login) sees no product key.
    async with raw_client(server, "floatkeyd", "reader") as reader:
        await reader.subscribe(server.topics.admin_request, qos=1)
        assert (await asyncio.to_thread(unlock, server, key)).returncode == 0
        seen = b""
        async with asyncio.timeout(10):
            async for message in reader.messages:
                seen = bytes(message.payload)
                if b"admin.unlock" in open_envelope_body(seen):
                    break
    compact = key.replace("-", "").encode()
    assert compact not in open_envelope_body(seen).replace(b"-", b"")
    assert b"sealed_key" in open_envelope_body(seen)


def open_envelope_body(payload: bytes) -> bytes:
    from floatkey.envelope import peek  # noqa: PLC0415

    peeked = peek(payload)
    return peeked[1] if peeked else b""


async def test_a_product_key_in_clear_or_sealed_for_another_server_is_refused(tmp_path):
    from floatkeyd.statedir import write_private  # noqa: PLC0415
    from floatkeyd.unlockbox import UnlockBox, seal_product_key  # noqa: PLC0415
    from inprocess import ADMIN, NAME, ORG, product_key  # noqa: PLC0415

    link, wall = MemoryLink(), Wall()
    async with running(write_config(tmp_path), link, wall, serve=False) as daemon:
        key = product_key()
        topic = daemon.topics.admin_request
        clear = protocol.AdminUnlock(
            request_id="clear", reply_to="t", name=NAME, organization=ORG, key=key
        )
        await daemon.handle(topic, ADMIN.seal(topic, protocol.encode(clear)))
        other = UnlockBox.load_or_create(tmp_path / "other.key", write_private)
        elsewhere = protocol.AdminUnlock(
            request_id="other",
            reply_to="t",
            name=NAME,
            organization=ORG,
            sealed_key=seal_product_key(other.public_text, "other", key),
        )
        await daemon.handle(topic, ADMIN.seal(topic, protocol.encode(elsewhere)))
        moved = protocol.AdminUnlock(
            request_id="moved",
            reply_to="t",
            name=NAME,
            organization=ORG,
            sealed_key=seal_product_key(
                daemon.admin.status_report().unlock_key, "another-request", key
            ),
        )
        await daemon.handle(topic, ADMIN.seal(topic, protocol.encode(moved)))
        reasons = []
        for item in link.published:
            body = open_envelope(item.payload, item.topic, trusted(daemon))
            reasons.append(protocol.decode(body, protocol.AdminResult).reason)
        assert reasons[-3:] == ["cleartext_key", "unreadable_key", "unreadable_key"]
        assert daemon.authority.status == "unlicensed"


async def test_a_will_under_another_login_does_not_touch_the_seat(tmp_path):
    link, wall = MemoryLink(), Wall()
    async with running(write_config(tmp_path), link, wall, serve=False) as daemon:
        owner = daemon.topics.for_login("lab-1")
        request = protocol.SeatRequest(client="victim", nonce="n")
        await daemon.handle(owner.seat("victim", "request"), protocol.encode(request))
        will = protocol.encode(protocol.SeatRelease(client="victim"))
        intruder = daemon.topics.for_login("lab-2")
        await daemon.handle(intruder.seat("victim", "release"), will)
        assert daemon.drops.counts["login_mismatch"] == 1
        lease = daemon.seats.ledger.leases["victim"]
        assert (lease.login, lease.expires_at > wall() + 10_000) == ("lab-1", True)


async def test_a_refusal_names_the_envelope_it_refuses(tmp_path):
    link, wall = MemoryLink(), Wall()
    async with running(write_config(tmp_path), link, wall, serve=False) as daemon:
        topic = daemon.topics.admin_request
        command = protocol.AdminStatus(request_id="borrowed", reply_to="victim-admin")
        forged = Signer(Ed25519PrivateKey.generate()).seal(topic, protocol.encode(command))
        await daemon.handle(topic, forged)
        (reply_topic, payload) = link.sent[-1]
        assert reply_topic == daemon.topics.admin_reply("victim-admin", "borrowed")
        result = protocol.decode(
            open_envelope(payload, reply_topic, trusted(daemon)), protocol.AdminResult
        )
        assert result.reason == "not_authorized"
        assert result.refused == protocol.envelope_digest(forged)


def test_an_empty_password_or_unlock_key_file_is_made_again(tmp_path):
    from floatkeyd.statedir import held_state_directory  # noqa: PLC0415

    with held_state_directory(tmp_path / "s") as first:
        logins = first.embedded_logins(("floatkey-agent",))
        unlock_key = first.unlock_box.public_text
    (tmp_path / "s" / "embedded-broker" / "floatkey-agent.password").write_text("")
    (tmp_path / "s" / "unlock-box.key").write_text("")
    with held_state_directory(tmp_path / "s") as again:
        renewed = again.embedded_logins(("floatkey-agent",))
        assert renewed["floatkey-agent"]
        assert renewed != logins
        assert again.unlock_box.public_text != unlock_key
    (tmp_path / "s" / "unlock-box.key").write_text("not a key")
    with (
        pytest.raises(Exception, match="is not an unlock key"),
        held_state_directory(tmp_path / "s"),
    ):
        pass
