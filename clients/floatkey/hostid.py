"""Who is asking: this computer's identity, and a client id for this process.

The computer's identity is what a borrow token is bound to (docs/SECURITY.md).
Small on purpose: the license-file check (``floatkey.licensefile``) needs it without
the MQTT client.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = [
    "MACHINE_ID_FILES",
    "HostIdentity",
    "default_client_id",
    "host_identity",
    "identify_host",
]

# Not even '.', though a client id may have one: on RabbitMQ's MQTT plugin a '.' in a
# topic level is a level separator too (a host name with dots would break its topics).
_UNSAFE = re.compile(r"[^A-Za-z0-9_:-]")

#: Where the machine id is read, first found first (systemd, then D-Bus's copy).
MACHINE_ID_FILES = (Path("/etc/machine-id"), Path("/var/lib/dbus/machine-id"))

HostKind = Literal["machine-id", "hostname"]


@dataclass(frozen=True, slots=True)
class HostIdentity:
    """``id``: 32 hex digits; ``kind``: what it was derived from."""

    id: str
    kind: HostKind


def identify_host() -> HostIdentity:
    """A hash of the machine id, keyed to floatkey (the id itself is not disclosed).

    The machine id is set once when the system is installed and survives reboots,
    network and hardware changes. Without one, a hash of the host name (``kind``
    ``hostname``), which anyone can set: borrowing refuses it.
    """
    for path in MACHINE_ID_FILES:
        with contextlib.suppress(OSError, UnicodeDecodeError):
            text = path.read_text().strip()
            if text:
                return HostIdentity(_hashed("machine-id", text), "machine-id")
    return HostIdentity(_hashed("hostname", socket.gethostname()), "hostname")


def host_identity() -> str:
    """This computer's identity for borrow tokens: 32 hex digits (:func:`identify_host`)."""
    return identify_host().id


def _hashed(kind: str, value: str) -> str:
    return hashlib.sha256(f"floatkey/host/v1\n{kind}\n{value}".encode()).hexdigest()[:32]


def default_client_id(app: str) -> str:
    """A client id unique to this process: app, host, pid and a random suffix."""
    raw = f"{app or 'agent'}-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
    return _UNSAFE.sub("_", raw)[:128]
