"""floatkeyd end to end: a real daemon process, real floatkeyctl, real brokers."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import pty
import signal
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from conftest import CONFIG, command, run
from floatkey import protocol
from floatkey.envelope import EnvelopeError, Signer, open_envelope
from floatkey.signing import key_id, load_private_key, parse_public_key
from floatkeyd.admin_client import AdminSession
from licensing import FORMAT_1_KEY, NAME, ORG, ctl, issue, unlock
from servers import (
    eventually,
    raw_client,
    read_retained,
    read_state,
    read_terminal,
    required_tool,
    status,
)

pytestmark = pytest.mark.broker


def mistype(key: str) -> str:
    return key[:-1] + ("Z" if not key.endswith("Z") else "Y")


def ctl_unlock(server, *args: str):
    return ctl(server, "unlock", *args)


async def test_unlock_happy_path_with_the_real_tools(server):
    daemon = server.start_daemon()
    state = await read_state(server)
    assert state.status == "unlicensed"
    assert state.license is None

    result = unlock(server, issue())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "successfully activated" in result.stdout
    assert "Ada Lovelace" in result.stdout
    assert "Analytical Engines Ltd" in result.stdout
    assert "dataflow, subflow, workflow" in result.stdout
    assert "0 connected clients were told to shut down" in result.stdout

    state = await read_state(server)
    assert state.status == "licensed"
    assert state.generation == 1
    assert state.license is not None
    assert state.license.seats == 10
    assert state.license.features == ["dataflow", "subflow", "workflow"]

    report = json.loads(ctl(server, "status", "--json").stdout)
    assert report["status"] == "licensed"
    assert report["fingerprint"] == key_id(server.server_key())

    # The same key again is a no-op that says so.
    again = unlock(server, issue())  # a new serial: a different key, so it activates
    assert again.returncode == 0
    same_key = issue()
    unlock(server, same_key)
    noop = unlock(server, same_key)
    assert noop.returncode == 0
    assert "already active" in noop.stdout
    assert (await read_state(server)).generation == 3
    assert daemon.stop() == 0


async def test_the_product_key_can_come_from_standard_input(server_factory):
    server = server_factory("mosquitto")
    server.start_daemon()
    args = ("unlock", "--name", NAME, "--organization", ORG, "--config", str(server.config_path))

    nothing = run("floatkeyctl", *args, input="")
    assert nothing.returncode == 2
    assert "no product key given" in nothing.stderr

    piped = run("floatkeyctl", *args, input=issue(seats=2) + "\n")
    assert piped.returncode == 0, piped.stderr
    assert "successfully activated" in piped.stdout

    # On a terminal: a prompt, and a key pasted over two lines (as from an e-mail).
    key = issue(seats=3)
    primary, secondary = pty.openpty()
    process = await asyncio.create_subprocess_exec(
        command("floatkeyctl"),
        *args,
        stdin=secondary,
        stdout=secondary,
        stderr=secondary,
    )
    os.close(secondary)
    half = len(key) // 2
    os.write(primary, f"{key[:half]}\n{key[half:]}\n".encode())
    screen = await asyncio.to_thread(read_terminal, primary)
    assert await process.wait() == 0, screen
    assert "Product key (paste it, then press Enter):" in screen
    assert "successfully activated: 3 seats" in screen
    assert (await read_state(server)).license.seats == 3


async def test_a_state_moved_to_another_topic_fails_verification(server):
    server.start_daemon()
    payload = await read_retained(server, server.topics.state)
    key = server.server_key()
    with pytest.raises(EnvelopeError):
        open_envelope(payload, server.topics.events, {key_id(key): key})


@pytest.mark.parametrize(
    ("make_key", "name", "reason", "words", "code"),
    [
        (lambda: mistype(issue()), NAME, "mistyped", "typing error", 3),
        (
            lambda: issue("--product-version", "7"),
            NAME,
            "wrong_product_version",
            "Keys from versions 6 and 7 cannot be used with version 8",
            3,
        ),
        (
            lambda: issue("--product-version", "6"),
            NAME,
            "wrong_product_version",
            "contact sales",
            3,
        ),
        (
            issue,
            "Charles Babbage",
            "licensee_mismatch",
            "issued to another name: the organization matches, the name does not",
            3,
        ),
        (
            lambda: FORMAT_1_KEY,
            "Charles Babbage",
            "licensee_mismatch",
            (
                "the name or the organization does not match. Enter the name and organization "
                "exactly as they appear on your license certificate; case and spacing do not "
                "matter."
            ),
            3,
        ),
        (
            lambda: issue("--issued", "2020-01-01", "--expires", "2020-12-31"),
            NAME,
            "expired",
            "expired on 2020-12-31",
            3,
        ),
        (lambda: "FK-NOT-A-KEY", NAME, "malformed", "too short", 3),
    ],
)
async def test_refused_keys_change_nothing(server, make_key, name, reason, words, code):
    server.start_daemon()
    assert unlock(server, issue(seats=3)).returncode == 0
    before_db = server.snapshot()
    before_state = await read_retained(server, server.topics.state)

    result = unlock(server, make_key(), name=name)
    assert result.returncode == code, result.stdout + result.stderr
    assert f"Refused ({reason})" in result.stderr
    assert words in " ".join(result.stderr.split())

    assert server.snapshot() == before_db
    assert await read_retained(server, server.topics.state) == before_state
    with contextlib.closing(server.db()) as db:
        audit = db.execute("SELECT outcome, reason, detail FROM audit ORDER BY seq DESC").fetchone()
    assert audit[:2] == ("refused", reason)
    # The audit log says which key was refused, but never holds it whole.
    assert len(json.loads(audit[2])["key"]) < 20


async def test_a_key_from_another_vendor_is_refused(server, tmp_path):
    other = tmp_path / "other-vendor.key"
    assert run("floatkey-vendor", "keygen", "--out", str(other)).returncode == 0
    (tmp_path / "product.toml").write_text((CONFIG / "product.toml").read_text())
    forged = run(
        "floatkey-vendor",
        "issue",
        "--vendor-key",
        str(other),
        "--name",
        NAME,
        "--organization",
        ORG,
        "--seats",
        "99",
        "--features",
        "dataflow",
    ).stdout.strip()
    server.start_daemon()
    before = server.snapshot()
    result = unlock(server, forged)
    assert result.returncode == 3
    assert "Refused (bad_signature)" in result.stderr
    assert server.snapshot() == before


async def test_an_unauthorized_admin_key_is_refused(server, tmp_path):
    server.start_daemon()
    stranger = tmp_path / "stranger.key"
    assert run("floatkeyctl", "admin-key", "create", "--out", str(stranger)).returncode == 0
    before = server.snapshot()
    result = ctl_unlock(
        server,
        "--name",
        NAME,
        "--organization",
        ORG,
        "--key",
        issue(),
        "--admin-key",
        str(stranger),
    )
    assert result.returncode == 4, result.stdout + result.stderr
    assert "Refused (not_authorized)" in result.stderr
    assert server.snapshot() == before

    # Authorized on the server, the same key works without restarting the daemon.
    public = (tmp_path / "stranger.key.pub").read_text().strip()
    added = run("floatkeyd", "admin-key", "add", public, "--config", str(server.config_path))
    assert added.returncode == 0, added.stderr
    result = ctl_unlock(
        server,
        "--name",
        NAME,
        "--organization",
        ORG,
        "--key",
        issue(),
        "--admin-key",
        str(stranger),
    )
    assert result.returncode == 0, result.stdout + result.stderr


async def test_stale_and_replayed_commands_are_refused(server):

    server.start_daemon()
    before = server.snapshot()
    async with AdminSession(
        server.broker("floatkey-admin"),
        server.topics,
        load_private_key(CONFIG / "dev-admin.key"),
        base=CONFIG,
        server_key=server.server_key(),
    ) as session:
        stale = protocol.AdminUnlock(
            request_id=session.request_id(),
            name=NAME,
            organization=ORG,
            key=issue(),
            ts=protocol.now_ms() - 61_000,
        )
        result = await session.send(stale)
        assert (result.ok, result.reason) == (False, "clock_skew")
        assert "Check the time" in result.message
        assert server.snapshot() == before

        command = protocol.AdminUnlock(
            request_id=session.request_id(), name=NAME, organization=ORG, key=issue()
        )
        assert (await session.send(command)).ok
        after_first = server.snapshot()
        replay = await session.send(command)
        assert (replay.ok, replay.reason) == (False, "replayed")
        assert server.snapshot() == after_first


async def test_forged_and_replayed_states_do_not_change_the_daemon(server, tmp_path):

    server.start_daemon()
    assert unlock(server, issue()).returncode == 0
    old_state = await read_retained(server, server.topics.state)
    assert unlock(server, issue(seats=5)).returncode == 0
    genuine = await read_retained(server, server.topics.state)

    forged_body = protocol.encode(
        protocol.State(
            server=server.topics.server,
            revision=10**9,
            generation=99,
            status="licensed",
            license=None,
        )
    )
    forged = Signer(Ed25519PrivateKey.generate()).seal(server.topics.state, forged_body)
    seen_before = status(server)["dropped"].get("foreign_retained", 0)
    # The daemon's own broker user can publish there (an ACL would stop anyone else).
    async with raw_client(server, "floatkeyd", "forger") as client:
        await client.publish(server.topics.state, forged, qos=1, retain=True)
        await client.publish(server.topics.state, old_state, qos=1, retain=True)
    # The daemon counts each foreign state it puts right, handling its messages in order:
    # once both are counted, the status it answers comes after both.
    after = await eventually(
        lambda: (s := status(server))["dropped"].get("foreign_retained", 0) >= seen_before + 2 and s
    )
    assert after["generation"] == 2
    assert after["license"]["seats"] == 5
    # ...and the daemon put its own state back on the broker (acknowledged before it
    # handled the status command).
    assert await read_retained(server, server.topics.state) == genuine


async def test_restart_keeps_generation_revision_license_and_leases(server):
    daemon = server.start_daemon()
    assert unlock(server, issue()).returncode == 0
    state = await read_state(server)
    assert daemon.stop() == 0

    server.start_daemon()
    restarted = await read_state(server)
    assert restarted.generation == state.generation
    assert restarted.revision > state.revision
    assert restarted.license == state.license
    assert restarted.status == "licensed"


async def test_a_tampered_database_is_caught_at_start(server):
    daemon = server.start_daemon()
    assert unlock(server, issue(seats=10)).returncode == 0
    assert daemon.stop() == 0
    with contextlib.closing(server.db()) as db:
        db.execute("UPDATE licenses SET seats = 1000 WHERE active = 1")
        db.commit()

    daemon = server.start_daemon()
    state = await read_state(server)
    assert state.status == "unlicensed"
    assert state.license is None
    assert "stored license refused" in daemon.log()
    with contextlib.closing(server.db()) as db:
        row = db.execute(
            "SELECT action, outcome, reason FROM audit WHERE action = 'license.reverify'",
        ).fetchone()
    assert row == ("license.reverify", "refused", "tampered")


async def test_a_product_key_in_the_database_edited_is_caught(server):
    daemon = server.start_daemon()
    assert unlock(server, issue(seats=10)).returncode == 0
    assert daemon.stop() == 0
    with contextlib.closing(server.db()) as db:
        other = issue(seats=10, features="scheduler")
        db.execute("UPDATE licenses SET key_text = ? WHERE active = 1", (other,))
        db.execute("UPDATE licenses SET licensee = 'Someone Else' WHERE active = 1")
        db.commit()
    server.start_daemon()
    assert (await read_state(server)).status == "unlicensed"


async def test_sigterm_stops_cleanly_and_notifies_systemd(server):
    daemon = server.start_daemon(watchdog_usec=200_000)
    ready = daemon.wait_for_notification("READY=1")
    assert "STATUS=Unlicensed; waiting for a product key" in ready
    daemon.wait_for_notification("WATCHDOG=1", timeout=3)
    daemon.process.send_signal(signal.SIGTERM)
    daemon.wait_for_notification("STOPPING=1")
    assert daemon.wait_exit(5) == 0


async def test_a_second_daemon_on_the_same_state_directory_refuses_to_start(server):
    first = server.start_daemon()
    # Two ledgers over one database would each grant every seat: an oversell.
    second = run("floatkeyd", "run", "--config", str(server.config_path), timeout=20)
    assert second.returncode == 1
    assert "Another floatkeyd is already serving" in second.stderr
    assert f"pid {first.process.pid}" in second.stderr
    assert first.process.poll() is None
    assert unlock(server, issue(seats=1)).returncode == 0  # the first one still serves
    assert first.stop() == 0
    third = server.start_daemon()  # the lock went with the first
    assert third.process.poll() is None


async def test_status_and_clients_as_tables_and_json(server):
    server.start_daemon()
    table = ctl(server, "status")
    assert table.returncode == 0
    assert "Status" in table.stdout
    assert "unlicensed" in table.stdout
    clients = ctl(server, "clients")
    assert clients.returncode == 0
    assert "No clients are connected." in clients.stdout
    listing = json.loads(ctl(server, "clients", "--json").stdout)
    assert listing["clients"] == []
    missing = ctl(server, "release", "nobody")
    assert missing.returncode == 1
    assert "No client 'nobody'" in missing.stderr


def test_an_unreachable_daemon_is_reported(server_factory):
    server = server_factory("embedded")  # nothing started on its port
    result = run("floatkeyctl", "status", "--config", str(server.config_path), "--timeout", "2")
    assert result.returncode == 5
    assert "Cannot reach the MQTT broker" in result.stderr


async def test_secrets_stay_private_and_out_of_the_logs(server, tmp_path):
    daemon = server.start_daemon()
    key = issue()
    assert unlock(server, key).returncode == 0
    assert unlock(server, mistype(issue())).returncode == 3
    assert oct(server.state_dir.stat().st_mode & 0o777) == "0o700"
    for name in ("server-identity.key", "floatkeyd.db"):
        assert oct((server.state_dir / name).stat().st_mode & 0o777) == "0o600", name
    assert daemon.stop() == 0
    log = daemon.log()
    assert "license activated" in log
    compact = key.replace("-", "")
    assert key not in log
    assert compact not in log.replace("-", "")
    assert "PRIVATE KEY" not in log
    identity = (server.state_dir / "server-identity.key").read_text()
    secret_line = identity.splitlines()[1]
    assert secret_line not in log


async def test_the_license_expires_on_time_and_a_clock_set_back_does_not_revive_it(server):
    required_tool("faketime")
    libfaketime = next(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"), None)  # noqa: ASYNC240
    assert libfaketime is not None, "libfaketime.so.1 not found"

    def at(moment: str) -> tuple[str, ...]:
        # `env` execs the daemon in place (the faketime wrapper would fork and not pass
        # SIGTERM on), with libfaketime preloaded and its clock starting at `moment`.
        return ("env", f"LD_PRELOAD={libfaketime}", f"FAKETIME=@{moment}")

    today = dt.datetime.now(dt.UTC).date()
    daemon = server.start_daemon()
    yesterday = today - dt.timedelta(days=1)
    key = issue("--issued", yesterday.isoformat(), "--expires", today.isoformat())
    assert unlock(server, key).returncode == 0
    assert daemon.stop() == 0

    # Three seconds before the key's last day ends: the timer fires, no polling involved.
    late = server.start_daemon(prefix=at(f"{today} 23:59:57"))
    assert (await read_state(server)).status == "licensed"
    async with raw_client(server, "floatkey-admin", "expiry-watch") as watch:
        await watch.subscribe(server.topics.events, qos=1)
        async with asyncio.timeout(15):
            async for message in watch.messages:
                if message.topic.value == server.topics.events:  # amqtt sends others too
                    break
    key = server.server_key()
    event = protocol.decode(
        open_envelope(bytes(message.payload), server.topics.events, {key_id(key): key}),
        protocol.Event,
    )
    assert event.name == "license.expired"
    state = await read_state(server)
    assert state.status == "expired"
    assert state.generation == event.generation == 2
    assert late.stop() == 0

    # A week earlier on the clock: still expired, nothing un-expires.
    early = server.start_daemon(prefix=at(f"{today - dt.timedelta(days=7)} 12:00:00"))
    state = await read_state(server)
    assert state.status == "expired"
    assert state.generation == 2
    assert early.stop() == 0


async def test_admin_keys_added_or_damaged_are_picked_up_without_a_restart(server, tmp_path):
    daemon = server.start_daemon()
    extra = tmp_path / "extra.key"
    assert run("floatkeyctl", "admin-key", "create", "--out", str(extra)).returncode == 0
    public = (tmp_path / "extra.key.pub").read_text().strip()
    added = run("floatkeyd", "admin-key", "add", public, "--config", str(server.config_path))
    assert added.returncode == 0, added.stderr
    # Picked up at the next admin command (another process changed the database).
    assert status(server)["admin_keys"] == 2
    # A damaged key in the database is skipped on the next reload, and said in the log;
    # the daemon goes on with the others (it used to die of it unseen).
    with contextlib.closing(server.db()) as db:
        db.execute("INSERT INTO admin_keys VALUES ('0000000000000000', 'ed25519:bad', 0)")
        db.commit()
    daemon.process.send_signal(signal.SIGHUP)
    await eventually(lambda: "admin key skipped" in daemon.log())
    assert status(server)["admin_keys"] == 2
    listed = run("floatkeyd", "admin-key", "list", "--config", str(server.config_path))
    assert key_id(parse_public_key(public)) in listed.stdout
