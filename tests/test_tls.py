"""Agents on other machines reach the broker over TLS: the shipped Mosquitto TLS listener."""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path

import aiomqtt
import pytest
from bench.certificates import make_ca_file

from floatkey.errors import NoAnswer
from licensing import issue, unlock
from servers import clients, make_agent, status, tls_context

pytestmark = pytest.mark.broker


async def test_daemon_admin_and_agents_work_over_tls(server_factory, tmp_path):
    server = server_factory("mosquitto-tls")
    assert server.mosquitto is not None
    config = server.config_path.read_text()
    assert f"port = {server.mosquitto.tls_port}" in config
    assert "[broker.tls]" in config
    server.start_daemon()
    assert status(server)["broker"] == f"mqtts://127.0.0.1:{server.mosquitto.tls_port}"

    result = unlock(server, issue(seats=2, features="dataflow,workflow"))
    assert result.returncode == 0, result.stderr
    async with make_agent(server, tmp_path, "remote") as agent:
        assert agent.has_seat
        assert agent.features == {"dataflow", "workflow"}
        listed = await asyncio.to_thread(clients, server)  # the agent's loop keeps running
        assert [c["client"] for c in listed] == [agent.client_id]


async def test_the_tls_listener_speaks_only_tls(server_factory):
    server = server_factory("mosquitto-tls")
    assert server.mosquitto is not None
    options = server.mosquitto.options("floatkey-agent")
    plain = aiomqtt.Client(
        "127.0.0.1",
        server.mosquitto.tls_port,
        username=options.username,
        password=options.password_for(Path("/")),
        timeout=3,
    )
    with pytest.raises(aiomqtt.MqttError):
        async with plain:
            pass
    # ...and the same client with the CA gets in: the refusal was the missing TLS.
    secure = server.mosquitto.tls_options("floatkey-agent")
    async with aiomqtt.Client(
        "127.0.0.1",
        secure.port,
        username=secure.username,
        password=secure.password_for(Path("/")),
        tls_context=tls_context(secure),
    ):
        pass


# paho-mqtt 2.2 does not close the socket when a TLS handshake fails (its
# _ssl_wrap_socket); the garbage collector does, with a ResourceWarning. The test checks
# that no descriptor is left behind once the refused agent is gone.
@pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <ssl.SSLSocket:pytest.PytestUnraisableExceptionWarning"
)
async def test_an_untrusted_broker_certificate_is_refused_with_advice(server_factory, tmp_path):
    server = server_factory("mosquitto-tls")
    assert server.mosquitto is not None
    server.start_daemon()
    stranger = make_ca_file(tmp_path / "stranger-ca.pem", "stranger CA")
    broker = server.mosquitto.tls_options("floatkey-agent", ca=stranger)

    descriptors = open_descriptors()
    agent = make_agent(server, tmp_path, "wary", broker=broker, connect_timeout=3)
    with pytest.raises(NoAnswer) as refused:
        async with agent:
            pass
    del agent
    gc.collect()
    assert open_descriptors() <= descriptors
    message = str(refused.value)
    assert "certificate verify failed" in message
    assert "`[broker.tls] ca` must name the CA that signed the broker's certificate" in message

    # floatkeyctl, given a config that trusts the stranger, says the same and exits 5.
    wary_config = tmp_path / "wary-floatkeyd.toml"
    text = server.config_path.read_text()
    wary_config.write_text(text.replace(str(server.mosquitto.certificates.ca), str(stranger)))
    result = ctl_with(wary_config, "status")
    assert result.returncode == 5, result.stderr
    assert "certificate verify failed" in result.stderr
    assert "[broker.tls] ca" in result.stderr


def ctl_with(config, *args: str):
    from conftest import run  # noqa: PLC0415

    return run("floatkeyctl", *args, "--config", str(config), timeout=60)


def open_descriptors() -> int:
    return sum(1 for _ in Path("/proc/self/fd").iterdir())
