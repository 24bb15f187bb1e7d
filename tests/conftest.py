"""Shared fixtures: paths, the development keys, and running the installed commands."""

from __future__ import annotations

import itertools
import os
import subprocess
from typing import TYPE_CHECKING

import pytest
from hypothesis import settings

from floatkey.protocol import Topics
from servers import (
    CONFIG,
    REPO,
    Mosquitto,
    Server,
    command,
    free_port,
    rabbitmq_cluster,
    write_daemon_config,
)

# Tests import these from here, beside ``run``.
__all__ = ["CONFIG", "REPO", "command", "run"]

if TYPE_CHECKING:
    from pathlib import Path

# Property tests sign and verify Ed25519 keys: on a loaded 2-core CI machine one example
# can take longer than hypothesis's default 200 ms deadline. Correctness, not speed, is
# what they check.
settings.register_profile("floatkey", deadline=None, print_blob=True)
settings.load_profile("floatkey")


def run(
    name: str, *args: str, timeout: float = 30, **kw: object
) -> subprocess.CompletedProcess[str]:
    """Run a floatkey command and capture its output."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        [command(name), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=env,
        **kw,
    )


@pytest.fixture
def dev_vendor_key() -> Path:
    return CONFIG / "dev-vendor.key"


@pytest.fixture
def dev_vendor_public() -> str:
    return (CONFIG / "dev-vendor.key.pub").read_text().strip()


# --- brokers and daemons ---------------------------------------------------------------

_names = itertools.count()


@pytest.fixture
def mosquitto():
    broker = Mosquitto()
    broker.start()
    yield broker
    broker.cleanup()


@pytest.fixture(scope="session")
def rabbitmq_node():
    """One RabbitMQ node for the whole session (it takes seconds to start): every test
    on it has topics of its own (a unique server name)."""
    cluster = rabbitmq_cluster(1)
    cluster.start()
    yield cluster.nodes[0]
    cluster.cleanup()


def _server(kind: str, tmp_path: Path, request: pytest.FixtureRequest, extra: str = "") -> Server:
    # A unique server name per test: unique topics, as the brokers are shared by nothing else.
    name = f"t{os.getpid()}x{next(_names)}"
    mosq = None
    if kind in {"mosquitto", "mosquitto-tls"}:
        mosq = Mosquitto()
        request.addfinalizer(mosq.cleanup)
        mosq.start()
    rabbit = request.getfixturevalue("rabbitmq_node") if kind == "rabbitmq" else None
    port = mosq.port if mosq else rabbit.port if rabbit else free_port()
    state = tmp_path / "state"
    config = tmp_path / "floatkeyd.toml"
    write_daemon_config(
        config,
        server=name,
        state_dir=state,
        port=port,
        mosquitto=mosq,
        extra=extra,
        tls=kind == "mosquitto-tls",
        rabbit=rabbit,
    )
    server = Server(
        kind=kind,
        config_path=config,
        state_dir=state,
        topics=Topics("floatkey", name),
        port=port,
        mosquitto=mosq,
        rabbit=rabbit,
    )

    def stop_daemons() -> None:
        for process in server.processes:
            if process.process and process.process.poll() is None:
                process.kill()

    request.addfinalizer(stop_daemons)
    return server


@pytest.fixture(params=["mosquitto", "embedded"])
def server(request, tmp_path) -> Server:
    """A daemon config on each broker kind (the daemon is started by the test)."""
    return _server(request.param, tmp_path, request)


@pytest.fixture
def server_factory(request, tmp_path):
    """Make a server config on a chosen broker, with extra config lines."""

    def make(kind: str = "mosquitto", extra: str = "") -> Server:
        return _server(kind, tmp_path, request, extra)

    return make
