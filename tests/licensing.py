"""Issuing development keys and unlocking test servers with the real tools."""

from __future__ import annotations

from typing import TYPE_CHECKING

from conftest import CONFIG, run

if TYPE_CHECKING:
    import subprocess

    from servers import Server

NAME, ORG = "Ada Lovelace", "Analytical Engines Ltd"


def issue(*extra: str, seats: int = 10, features: str = "dataflow,workflow,subflow") -> str:
    """A product key from the development vendor key, through floatkey-vendor."""
    result = run(
        "floatkey-vendor",
        "issue",
        "--vendor-key",
        str(CONFIG / "dev-vendor.key"),
        "--name",
        NAME,
        "--organization",
        ORG,
        "--seats",
        str(seats),
        "--features",
        features,
        *extra,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def ctl(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    """floatkeyctl against ``server``'s config."""
    return run("floatkeyctl", *args, "--config", str(server.config_path), timeout=90)


def unlock(
    server: Server, key: str, *extra: str, name: str = NAME, org: str = ORG, yes: bool = True
) -> subprocess.CompletedProcess[str]:
    """floatkeyctl unlock; with ``--yes`` unless ``yes`` is false.

    Most tests unlock one key after another whatever they grant; the question asked
    before a key that reduces the license is tested on its own (test_ctl_unlock.py).
    """
    confirm = ("--yes",) if yes else ()
    return ctl(
        server, "unlock", "--name", name, "--organization", org, "--key", key, *confirm, *extra
    )
