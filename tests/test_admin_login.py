"""Administrators' tools log in as the administrators' user, and read only their answers."""

from __future__ import annotations

import asyncio
import contextlib
import re

import pytest

from conftest import run
from floatkey import protocol
from floatkey.signing import load_private_key
from floatkeyd.admin_client import AdminSession
from licensing import ctl
from servers import CONFIG, raw_client

pytestmark = pytest.mark.broker


async def test_floatkeyctl_never_needs_the_daemons_password(server_factory):
    server = server_factory("mosquitto")
    server.start_daemon()
    secret = server.config_path.with_name(server.config_path.stem + ".mqtt-password")
    assert (
        "floatkeyd" not in re.findall(r'username = "([^"]+)"', server.config_path.read_text())[1:]
    )
    secret.rename(secret.with_suffix(".gone"))  # the daemon read it at start; ctl never does
    result = await asyncio.to_thread(ctl, server, "status", "--json")
    assert result.returncode == 0, result.stderr


def test_floatkeyctl_refuses_to_log_in_as_the_daemon(server_factory):
    server = server_factory("mosquitto")
    text = server.config_path.read_text()
    server.config_path.write_text(text[: text.index("[admin_broker]")])
    result = run("floatkeyctl", "status", "--config", str(server.config_path))
    assert result.returncode != 0
    assert "[admin_broker]" in result.stderr
    assert "never as the daemon" in result.stderr


async def test_an_administrator_reads_only_the_answers_to_its_own_commands(server_factory):
    server = server_factory("mosquitto")
    server.start_daemon()
    async with (
        raw_client(server, "floatkey-admin", "eavesdropper") as eavesdropper,
        AdminSession(
            server.broker("floatkey-admin"),
            server.topics,
            load_private_key(CONFIG / "dev-admin.key"),
            base=CONFIG,
            server_key=server.server_key(),
        ) as session,
    ):
        await eavesdropper.subscribe(f"{server.topics.root}/admin/reply/#", qos=1)
        answer = await session.send(protocol.AdminClients(request_id=session.request_id()))
        assert answer.ok
        # Its own answer came and went; the eavesdropper, same login, got none of it.
        overheard = []
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.5):  # nothing to wait for: a negative check
                async for message in eavesdropper.messages:
                    overheard.append(message.topic.value)  # noqa: PERF401
        assert overheard == []
