"""floatkeyctl and AdminSession when the broker fails after the connection is made.

Each failure must come out as ``DaemonUnreachable`` (floatkeyctl: one sentence saying
what to check, exit status 5), at once and with its real reason rather than as a
timeout, and must leave no task of the session running.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiomqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from conftest import CONFIG, run
from floatkey import protocol
from floatkey.protocol import Topics
from floatkey.signing import load_private_key
from floatkeyd.admin_client import AdminSession, DaemonUnreachable
from licensing import NAME, ORG
from servers import eventually

pytestmark = pytest.mark.broker

ADMIN_KEY = CONFIG / "dev-admin.key"
LOST = "Lost the connection to the MQTT broker"


def session(broker, topics: Topics, **kw: object) -> AdminSession:
    return AdminSession(broker, topics, load_private_key(ADMIN_KEY), base=CONFIG, **kw)


def other_tasks() -> set[str]:
    """The tasks left besides the test's own, by name.

    A task already told to stop is left out when it is aiomqtt's: its client cancels its
    housekeeping loop when the socket closes and lets it end on the next loop turn. The
    session's listener ("admin-replies") must be gone, not merely cancelled.
    """
    return {
        task.get_name()
        for task in asyncio.all_tasks() - {asyncio.current_task()}
        if task.get_name() == "admin-replies" or not task.cancelling()
    }


async def test_a_broker_gone_between_connect_and_send_is_reported_and_leaves_no_task(mosquitto):
    topics = Topics("floatkey", "ctl-lost")
    before = other_tasks()
    # A pinned key: the session needs nothing from a daemon before the send.
    pinned = Ed25519PrivateKey.generate().public_key()
    async with session(
        mosquitto.options("floatkey-admin"), topics, server_key=pinned, timeout=60
    ) as admin:
        await asyncio.to_thread(mosquitto.stop)
        with pytest.raises(DaemonUnreachable) as failed:
            await admin.send(protocol.AdminStatus(request_id=admin.request_id()))
    assert failed.value.message.startswith(LOST), failed.value.message
    assert "Check that the broker is running" in failed.value.message
    assert other_tasks() == before


async def test_a_broker_gone_while_waiting_for_the_identity_is_not_a_missing_server(mosquitto):
    topics = Topics("floatkey", "ctl-no-identity")  # no daemon: no identity will come
    before = other_tasks()
    admin = session(mosquitto.options("floatkey-admin"), topics, timeout=60)
    opening = asyncio.create_task(admin.__aenter__())
    # The session is waiting (or about to wait) for the retained identity.
    await eventually(lambda: admin._identity is not None)
    await asyncio.to_thread(mosquitto.stop)
    with pytest.raises(DaemonUnreachable) as failed:
        await opening
    # Not "No floatkey server ... is publishing": the broker went, and the session says so.
    assert failed.value.message.startswith(LOST), failed.value.message
    # Opening failed, so nobody will call __aexit__: the session closed itself.
    assert other_tasks() == before


async def test_a_listener_that_dies_reports_its_own_error_not_a_timeout(mosquitto, monkeypatch):
    # A listener bug cannot be produced by a real broker: the reply handler is replaced
    # with one that fails, and a real message on the reply topic sets it off.
    topics = Topics("floatkey", "ctl-listener")
    pinned = Ed25519PrivateKey.generate().public_key()
    before = other_tasks()
    async with session(
        mosquitto.options("floatkey-admin"), topics, server_key=pinned, timeout=60
    ) as admin:

        def broken(topic: str, payload: bytes) -> None:
            raise RuntimeError("reply handler broke")

        monkeypatch.setattr(admin, "_take_reply", broken)
        sending = asyncio.create_task(
            admin.send(protocol.AdminStatus(request_id=admin.request_id()))
        )
        # The daemon's broker user may publish on the reply topics.
        broker = mosquitto.options("floatkeyd")
        async with raw_client_for(broker, "fake-daemon") as daemon:
            await daemon.publish(topics.admin_reply(admin.identifier, "whatever"), b"{}", qos=1)
        with pytest.raises(RuntimeError, match="reply handler broke"):
            await sending
    assert other_tasks() == before


async def test_a_login_the_acl_does_not_let_read_answers_is_told_to_check_the_acl(
    server_factory,
):
    server = server_factory("mosquitto")
    server.start_daemon()
    # The agents' broker user: Mosquitto grants its subscription to the admin replies
    # but, by the shipped ACL, delivers none of them (MQTT 3.1.1 cannot say "refused").
    async with session(
        server.broker("floatkey-agent"), server.topics, server_key=server.server_key(), timeout=3
    ) as admin:
        with pytest.raises(DaemonUnreachable) as failed:
            await admin.send(protocol.AdminStatus(request_id=admin.request_id()))
    message = failed.value.message
    assert "did not answer" in message
    assert f"the broker's ACL lets this admin user write {server.topics.admin_request}" in message


async def test_floatkeyctl_cut_off_by_the_broker_mid_command_says_so_and_exits_5(server_factory):
    server = server_factory("mosquitto")
    server.start_daemon()
    # Over the shipped max_packet_size (256 KiB): Mosquitto closes the connection
    # instead of acknowledging the command.
    oversized = "A" * 300_000
    result = await asyncio.to_thread(
        run,
        "floatkeyctl",
        "unlock",
        "--name",
        NAME,
        "--organization",
        ORG,
        "--config",
        str(server.config_path),
        "--timeout",
        "60",
        input=oversized,
    )
    assert result.returncode == 5, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith(f"floatkeyctl: {LOST}"), result.stderr
    assert "max_packet_size" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def raw_client_for(broker, identifier: str):
    """A plain MQTT client for broker options (``raw_client`` wants a Server)."""
    return aiomqtt.Client(
        broker.host,
        broker.port,
        username=broker.username,
        password=broker.password_for(Path("/")),
        identifier=identifier,
    )
