"""The browser console for tests: its config table, accounts, and a real console process."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from typing import TYPE_CHECKING

from conftest import command, run
from servers import free_port, wait_for_port

if TYPE_CHECKING:
    from pathlib import Path

    from servers import Server

PASSWORDS = {"alice": "alice-correct-horse", "victor": "victor-battery-staple"}


def console_table(tmp_path: Path, port: int = 0, **settings: object) -> str:
    """A ``[console]`` table for a test daemon config (after every top-level key)."""
    fields: dict[str, object] = {
        "host": "127.0.0.1",
        "port": port or free_port(),
        "users_file": str(tmp_path / "console" / "users.json"),
        "session_secret_file": str(tmp_path / "console" / "session-secret"),
        "allowed_hosts": ["testserver", "127.0.0.1", "localhost"],
    }
    fields.update(settings)
    lines = ["[console]"]
    for key, value in fields.items():
        # JSON strings, lists and numbers are TOML too.
        lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


def add_user(config: Path, name: str, role: str, password: str | None = None) -> None:
    """``floatkeyctl console-user add NAME --role ROLE --password-stdin``."""
    result = run(
        "floatkeyctl",
        "console-user",
        "add",
        name,
        "--role",
        role,
        "--password-stdin",
        "--config",
        str(config),
        input=(password or PASSWORDS[name]) + "\n",
    )
    assert result.returncode == 0, result.stderr


class ConsoleProcess:
    """A real ``floatkeyd console`` process for ``server`` (its config has a [console])."""

    def __init__(self, server: Server, port: int) -> None:
        self.server = server
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = server.config_path.with_suffix(f".console.{time.time_ns()}.log")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [command("floatkeyd"), "console", "--config", str(self.server.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        try:
            wait_for_port(self.port, timeout=20)
        except TimeoutError:
            self.stop()
            raise AssertionError(f"the console did not start:\n{self.log()}") from None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                msg = f"the console did not stop within 10 s:\n{self.log()}"
                raise AssertionError(msg) from None
        return self.process.returncode

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            self.process.wait()
