"""The README's main command really brings the daemon up."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess

import aiomqtt
import pytest

from floatkey import protocol
from floatkey.envelope import open_envelope
from floatkey.signing import key_id, parse_public_key
from servers import REPO, command, free_port, wait_for_port

pytestmark = pytest.mark.broker


async def test_scripts_run_starts_the_daemon_on_the_embedded_broker(tmp_path):
    # Its own port and state directory: a developer's `scripts/run` may be running.
    port, state = free_port(), tmp_path / "state"
    log = (tmp_path / "run.log").open("wb")
    process = subprocess.Popen(
        [str(REPO / "scripts" / "run"), "--state-dir", str(state), "--embedded-port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        await asyncio.to_thread(wait_for_port, port, 60)
        # The embedded broker wants a login: the agents', made at the daemon's first start.
        password = (state / "embedded-broker" / "floatkey-agent.password").read_text().strip()
        async with aiomqtt.Client(
            "127.0.0.1",
            port,
            identifier="quickstart-test",
            username="floatkey-agent",
            password=password,
        ) as client:
            await client.subscribe("floatkey/dev/state", qos=1)
            async with asyncio.timeout(10):
                # amqtt may also hand a new session other topics' retained messages.
                async for message in client.messages:
                    if message.topic.value == "floatkey/dev/state":
                        break
        key = parse_public_key((state / "server-identity.key.pub").read_text())
        body = open_envelope(bytes(message.payload), "floatkey/dev/state", {key_id(key): key})
        state = protocol.decode(body, protocol.State)
        assert (state.server, state.status, state.license) == ("dev", "unlicensed", None)
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
        log.close()


def test_the_example_applications_the_readme_names_exist_and_start():
    readme = (REPO / "README.md").read_text()
    named = set(re.findall(r"clients/examples/[\w.]+\.py", readme))
    assert {f"clients/examples/{n}.py" for n in ("flowdesigner", "flowdesigner_tk")} <= named
    for path in sorted(named):
        assert (REPO / path).is_file(), path
        if "flowdesigner" in path:  # embedded.py runs in tests/test_example.py
            result = subprocess.run(
                [command("python"), str(REPO / path), "--help"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            assert result.returncode == 0, result.stderr
            assert "--document" in result.stdout
