"""Shared fixtures: paths, the development keys, and running the installed commands."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "config"
BIN = Path(sys.executable).parent


def command(name: str) -> str:
    """The path of an installed floatkey command, from the same environment as the tests."""
    path = BIN / name
    if not path.exists():  # pragma: no cover - only when the package is not installed
        found = shutil.which(name)
        assert found, f"{name} is not installed; run scripts/test"
        return found
    return str(path)


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
