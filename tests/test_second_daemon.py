"""Two floatkeyd with one server name on one broker: noticed, said once, no fight."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from floatkeyd.retained import FIGHT_LIMIT
from servers import DaemonProcess, eventually, raw_client

pytestmark = pytest.mark.broker


async def test_a_second_daemon_for_the_same_server_is_noticed_without_a_fight(server_factory):
    server = server_factory("mosquitto")
    first = server.start_daemon()
    # The same config (server name, broker), but a state directory of its own: another
    # identity key and another broker client id, as on a second machine.
    second_config = server.config_path.with_name("second.toml")
    second_config.write_text(
        server.config_path.read_text().replace(
            str(server.state_dir), str(server.state_dir.with_name("state2"))
        )
    )
    second = DaemonProcess(second_config)
    second.start()
    server.processes.append(second)
    said = "another publisher keeps overwriting"
    # Whichever steps back first says so; the other then sees no more rivals.
    await eventually(lambda: said in first.log() or said in second.log(), within=30)
    # Nothing to wait for: a fight republishes as fast as the broker echoes (thousands a
    # second); stepped back, neither publishes the state again within the minute.
    async with raw_client(server, "floatkey-admin", "watcher") as client:
        await client.subscribe(server.topics.state, qos=1)
        seen = 0
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2):
                async for _message in client.messages:
                    seen += 1
    assert seen <= 1 + 2 * FIGHT_LIMIT  # the retained one, and at most what is allowed
    assert first.log().count(said) + second.log().count(said) in {1, 2}
    assert first.stop() == 0
    assert second.stop() == 0
