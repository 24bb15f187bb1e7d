"""Issuing development keys and unlocking test servers with the real tools."""

from __future__ import annotations

from typing import TYPE_CHECKING

from conftest import CONFIG, run

if TYPE_CHECKING:
    import subprocess

    from servers import Server

NAME, ORG = "Ada Lovelace", "Analytical Engines Ltd"

# Golden keys from the development vendor key for NAME and ORG: product version 8,
# serial 0123456789ab, 10 seats, dataflow + subflow + workflow, issued 2026-11-01, no
# expiry. FORMAT_1_KEY was issued by the release before record format 2 (one licensee
# digest over name and organization): servers hold such keys, and must keep taking them.
# FORMAT_2_KEY pins format 2's layout (a name digest and an organization digest).
FORMAT_1_KEY = (
    "FK-044028-T5CY4T-PXRF5M-36KJA3-NW0002-G9R000-00RG2M-0HHGYQ-04TM46-63TW0Q-7MHCCC-"
    "7NR014-VEKS1Z-HJ0PKH-4EW3DN-WAZ44T-R0B1RN-5PA95Y-XGMSK9-9AWQCC-7T8ABP-QW7BNV-G0Q4YS-"
    "SNC0EY-C44TRB-W9JJQY-JK5PV6-ZKZGYZ-WK10E1-B7C"
)
FORMAT_2_KEY = (
    "FK-084028-T5CY4T-QY8VG8-8GNA26-7G0002-G9R000-00RG2M-0HHGYQ-04TM46-63TW0Q-7MHCCC-"
    "7NR04G-F5J458-DS10V6-JQMVYM-REVRYB-ZH48Z7-TKF0YK-CSWN34-0VR9XK-TQFWQX-ZJ4Q7Y-4JJYR5-"
    "0JCMQS-SCE8HQ-A8S5H2-S1Z8P0-1FMQPQ-CS20J0-J66"
)


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
