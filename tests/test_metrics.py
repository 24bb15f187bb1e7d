"""The Prometheus endpoint: scraped over real HTTP, parsed with prometheus_client's parser."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import socket
import sqlite3
import urllib.error
import urllib.request

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client.parser import text_string_to_metric_families

from floatkey import protocol
from floatkey.envelope import Signer
from floatkey.errors import ConfigError
from floatkeyd.config import load_config
from floatkeyd.service import open_daemon
from inprocess import MemoryLink, Wall, ask, product_key, running, unlock_command, write_config
from servers import REPO, eventually

METRICS = '[metrics]\nlisten = "127.0.0.1:0"\n'

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


async def scrape(daemon) -> Samples:
    """Every sample of one scrape, by name and labels, as Prometheus would parse them."""
    host, port = daemon.metrics.address
    status, kind, text = await asyncio.to_thread(_get, f"http://{host}:{port}/metrics")
    assert status == 200
    assert kind.startswith("text/plain; version=0.0.4")
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def seat_request(daemon, client: str, host: str = "h") -> tuple[str, bytes]:
    body = protocol.SeatRequest(client=client, nonce="n-" + client, app="app", host=host, pid=1)
    return daemon.topics.seat(client, "request"), protocol.encode(body)


async def test_the_metrics_follow_a_known_sequence_of_grants_and_denials(tmp_path):
    link, wall = MemoryLink(), Wall()
    expires = dt.datetime.now(dt.UTC).date() + dt.timedelta(days=20)
    config = write_config(tmp_path, f"{METRICS}[limits]\nseats_per_host = 1\n")
    async with running(config, link, wall) as daemon:
        before = await scrape(daemon)
        assert before["floatkey_license_status", (("status", "unlicensed"),)] == 1
        assert before["floatkey_license_status", (("status", "licensed"),)] == 0
        assert ("floatkey_license_expiry_timestamp_seconds", ()) not in before
        assert before["floatkey_broker_connected", ()] == 1
        assert before["floatkey_seat_denials_total", (("reason", "seats_exhausted"),)] == 0

        await daemon.handle(*seat_request(daemon, "early"))  # an unlicensed session
        assert (await scrape(daemon))["floatkey_unlicensed_sessions", ()] == 1
        unlock = unlock_command(product_key(seats=2, expires=expires), "m1", ts=wall())
        assert (await ask(daemon, link, unlock)).ok
        await daemon.handle(*seat_request(daemon, "a", host="h1"))
        await daemon.handle(*seat_request(daemon, "b", host="h2"))
        await daemon.handle(*seat_request(daemon, "c", host="h3"))  # all seats in use
        await daemon.handle(*seat_request(daemon, "d", host="h4"))  # and again
        await daemon.handle(*seat_request(daemon, "a2", host="h1"))  # h1 holds its one seat
        await daemon.handle(daemon.topics.seat("x", "request"), b"x" * (70 * 1024))
        stranger = Signer(Ed25519PrivateKey.generate())
        command = protocol.AdminStatus(request_id="q1", reply_to="stranger")
        await daemon.handle(
            daemon.topics.admin_request,
            stranger.seal(daemon.topics.admin_request, protocol.encode(command)),
        )
        assert (await ask(daemon, link, protocol.AdminStatus(request_id="s1", ts=wall()))).ok
        refused = protocol.AdminRelease(request_id="r1", client="nobody", ts=wall())
        assert (await ask(daemon, link, refused)).reason == "unknown_client"

        now = await scrape(daemon)
        assert now["floatkey_seats_licensed", ()] == 2
        assert now["floatkey_seats_in_use", ()] == 2
        assert now["floatkey_unlicensed_sessions", ()] == 0
        assert now["floatkey_clients_awaiting_shutdown", ()] == 1  # "early", told by the unlock
        assert now["floatkey_seat_grants_total", (("seat", "licensed"),)] == 2
        assert now["floatkey_seat_grants_total", (("seat", "unlicensed"),)] == 1
        assert now["floatkey_seat_denials_total", (("reason", "seats_exhausted"),)] == 2
        assert now["floatkey_seat_denials_total", (("reason", "limit_reached"),)] == 1
        assert now["floatkey_seat_denials_total", (("reason", "expired"),)] == 0
        assert now["floatkey_license_status", (("status", "licensed"),)] == 1
        assert now["floatkey_license_status", (("status", "unlicensed"),)] == 0
        deadline = dt.datetime.combine(expires + dt.timedelta(days=1), dt.time(), dt.UTC)
        assert now["floatkey_license_expiry_timestamp_seconds", ()] == deadline.timestamp()
        assert now["floatkey_license_generation", ()] == 1
        assert now["floatkey_messages_dropped_total", (("reason", "oversized"),)] == 1
        assert now["floatkey_messages_dropped_total", (("reason", "admin_unknown_key"),)] == 1
        commands = {
            labels: value
            for (name, labels), value in now.items()
            if name == "floatkey_admin_commands_total"
        }
        assert commands == {
            (("action", "admin.unlock"), ("outcome", "ok")): 1,
            (("action", "admin.status"), ("outcome", "ok")): 1,
            (("action", "admin.release"), ("outcome", "unknown_client")): 1,
            (("action", "unverified"), ("outcome", "not_authorized")): 1,
        }
        assert now["floatkey_leases_expired_total", ()] == 0
        assert now["floatkey_store_write_failures_total", ()] == 0
        assert now["process_resident_memory_bytes", ()] > 0


async def test_expired_leases_failed_writes_and_the_broker_are_counted(tmp_path):
    link, wall = MemoryLink(), Wall()
    async with running(write_config(tmp_path, METRICS), link, wall) as daemon:
        assert (await ask(daemon, link, unlock_command(product_key(), "m1", ts=wall()))).ok
        for client in ("a", "b"):
            await daemon.handle(*seat_request(daemon, client))
        assert (await scrape(daemon))["floatkey_seats_in_use", ()] == 2
        # Nobody renews: both leases run out.
        wall.jump(31 / 86_400)
        daemon.seats._expiry_moved.set()
        await eventually(lambda: _leases_expired(daemon))
        assert (await scrape(daemon))["floatkey_seats_in_use", ()] == 0

        # A database another program holds: the release cannot be written, and says so.
        await daemon.handle(*seat_request(daemon, "e", host="h5"))
        await daemon.seats.flush_step()
        blocker = sqlite3.connect(tmp_path / "state" / "floatkeyd.db", isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            release = protocol.AdminRelease(request_id="r2", client="e", ts=wall())
            assert (await ask(daemon, link, release)).reason == "store_failed"
        finally:
            blocker.rollback()
            blocker.close()
        failed = await scrape(daemon)
        assert failed["floatkey_store_write_failures_total", ()] >= 1
        outcome = (("action", "admin.release"), ("outcome", "store_failed"))
        assert failed["floatkey_admin_commands_total", outcome] == 1

        link.online = False
        assert (await scrape(daemon))["floatkey_broker_connected", ()] == 0
        host, port = daemon.metrics.address
    # Stopped with the daemon: the port is closed.
    with pytest.raises(ConnectionRefusedError), socket.create_connection((host, port), timeout=2):
        pass


async def _leases_expired(daemon) -> bool:
    return (await scrape(daemon))["floatkey_leases_expired_total", ()] == 2


async def test_only_metrics_is_served_and_the_endpoint_is_off_by_default(tmp_path):
    link, wall = MemoryLink(), Wall()
    (tmp_path / "on").mkdir()
    (tmp_path / "off").mkdir()
    async with running(write_config(tmp_path / "on", METRICS), link, wall) as daemon:
        host, port = daemon.metrics.address
        status, _, text = await asyncio.to_thread(_get, f"http://{host}:{port}/")
        assert (status, text) == (404, "Not found: the metrics are at /metrics.\n")
    async with running(write_config(tmp_path / "off"), MemoryLink(), wall) as daemon:
        assert daemon.metrics is None


@pytest.mark.parametrize(
    ("listen", "problem"),
    [
        ("0.0.0.0:9464", "is not a loopback address"),
        ("192.0.2.1:9464", "metrics.allow_remote = true"),
        ("9464", "must be host:port"),
        ("127.0.0.1:99999", "between 0 and 65535"),
    ],
)
def test_a_metrics_address_that_would_be_a_mistake_is_refused(tmp_path, listen, problem):
    path = write_config(tmp_path, f'[metrics]\nlisten = "{listen}"\n')
    with pytest.raises(ConfigError, match=problem):
        load_config(path)


def test_a_remote_metrics_address_is_taken_when_allowed(tmp_path):
    path = write_config(tmp_path, '[metrics]\nlisten = "[::]:9464"\nallow_remote = true\n')
    assert load_config(path).config.metrics.address == ("::", 9464)


async def test_a_metrics_port_in_use_is_refused_at_start_with_a_sentence(tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        config = load_config(write_config(tmp_path, f'[metrics]\nlisten = "127.0.0.1:{port}"\n'))
        with pytest.raises(ConfigError, match="Choose another port in \\[metrics\\] listen"):
            async with open_daemon(config, link=MemoryLink(), wall=Wall()):
                pass


async def test_the_example_alerts_load_and_name_only_exported_metrics(tmp_path):
    rules = yaml.safe_load((REPO / "docs" / "alerts.yml").read_text())
    alerts = {rule["alert"]: rule for group in rules["groups"] for rule in group["rules"]}
    assert {"FloatkeySeatsAtLimit", "FloatkeyLicenseExpiresSoon", "FloatkeyBrokerDisconnected"} <= (
        alerts.keys()
    )
    for rule in alerts.values():
        assert {"expr", "labels", "annotations"} <= rule.keys()
        assert rule["annotations"]["summary"]
    assert alerts["FloatkeySeatsAtLimit"]["for"] == "10m"
    assert "14 * 86400" in alerts["FloatkeyLicenseExpiresSoon"]["expr"]
    named = {m for rule in alerts.values() for m in re.findall(r"floatkey_\w+", rule["expr"])}
    link, wall = MemoryLink(), Wall()
    expires = dt.datetime.now(dt.UTC).date() + dt.timedelta(days=3)
    async with running(write_config(tmp_path, METRICS), link, wall) as daemon:
        unlock = unlock_command(product_key(expires=expires), "a1", ts=wall())
        assert (await ask(daemon, link, unlock)).ok
        exported = {name for name, _ in await scrape(daemon)}
    assert named <= exported
