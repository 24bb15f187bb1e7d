"""The example application, started through the agent, shows the seed's experience."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from conftest import REPO, command
from licensing import issue, unlock
from servers import write_agent_config

pytestmark = pytest.mark.broker
EXAMPLE = REPO / "clients" / "examples" / "flowdesigner.py"


def start(server, tmp_path, name: str) -> subprocess.Popen[bytes]:
    config = write_agent_config(server, tmp_path / f"{name}.toml")
    with (tmp_path / f"{name}.out").open("wb") as out:
        return subprocess.Popen(
            [
                command("floatkey-agent"),
                "run",
                "--config",
                str(config),
                "--app",
                "flowdesigner",
                "--",
                command("python"),
                str(EXAMPLE),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            env={"FLOWDESIGNER_DOCUMENT": str(tmp_path / f"{name}.json"), "PATH": "/usr/bin:/bin"},
        )


def wait_for(path, text: str, within: float = 20) -> str:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        content = path.read_text() if path.exists() else ""
        if text in content:
            return content
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in {path}:\n{content}")


def test_two_example_clients_shut_down_on_unlock_and_restart_with_features(
    server_factory, tmp_path
):
    server = server_factory("embedded")
    server.start_daemon()
    first = [start(server, tmp_path, name) for name in ("one", "two")]
    for name in ("one", "two"):
        menu = wait_for(tmp_path / f"{name}.out", "Quit")
        assert "New Dataflow   [disabled]" in menu
        assert "license: unlicensed" in menu

    result = unlock(server, issue())
    assert "2 connected clients were told to shut down" in result.stdout
    for name, process in zip(("one", "two"), first, strict=True):
        assert process.wait(20) == 75
        output = wait_for(tmp_path / f"{name}.out", "closing.")
        assert "Closing because: A new license was activated" in output
        assert json.loads((tmp_path / f"{name}.json").read_text())["edits"] >= 1

    again = start(server, tmp_path, "three")
    menu = wait_for(tmp_path / "three.out", "Quit")
    assert "license: licensed, licensed to Ada Lovelace" in menu
    for label in ("Dataflow", "Workflow", "Subflow"):
        assert f"New {label:<10} [enabled ]" in menu
    assert "New Reporting  [disabled]" in menu
    again.terminate()
    assert again.wait(20) == 0
