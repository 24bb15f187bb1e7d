"""Trust on first use: the license servers' keys an agent has pinned.

Like SSH's ``known_hosts``: one private JSON state file, mode 0600 in a 0700 directory,
``{"servers": {topic_root: "ed25519:..."}}``, holds one key per server (topic root), and,
kept there by ``floatkey.borrow``, borrow tokens and the latest time seen. A key, once
pinned, is never replaced here: a server that presents another one is refused by the
agent.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import TYPE_CHECKING

from floatkey.configfile import private_directory_problem
from floatkey.errors import ConfigError
from floatkey.signing import parse_public_key, public_key_text

if TYPE_CHECKING:
    from pathlib import Path

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

__all__ = ["KnownServers"]


class KnownServers:
    """The pinned server keys kept in ``path``; the only reader and writer of that file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def check_writable(self) -> None:
        """Raise ``ConfigError`` (naming ``state_file``) if a pin could not be kept here.

        Called before trusting on first use: a key trusted but not kept would be trusted
        again, unchecked, at the next start.
        """
        why = private_directory_problem(self.path.parent)
        if why is not None:
            raise ConfigError(
                f"state_file = '{self.path}': cannot keep the pinned server key there "
                f"({why}). Set state_file to a writable path, or pin the server's key "
                "with server_key."
            )

    def key_of(self, root: str) -> Ed25519PublicKey | None:
        """The key pinned for the server at topic root ``root``, if any (and readable)."""
        text = self._servers().get(root)
        if text:
            with contextlib.suppress(ValueError):
                return parse_public_key(text)
        return None

    def pin(self, root: str, key: Ed25519PublicKey) -> bool:
        """Keep ``key`` for ``root`` unless a key is pinned for it already.

        Returns whether it was written. Raises ``OSError`` when the file cannot be
        written (it was checked at start; it went away since).
        """
        known = self._servers()
        if root in known:
            return False
        known[root] = public_key_text(key)
        data = self._data()
        data["servers"] = known  # and whatever else the file keeps (floatkey.borrow)
        self.write(data)
        return True

    def _data(self) -> dict[str, object]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _servers(self) -> dict[str, str]:
        servers = self._data().get("servers")
        if not isinstance(servers, dict):
            return {}
        return {k: v for k, v in servers.items() if isinstance(v, str)}

    def write(self, data: object) -> None:
        """Replace the whole file with ``data`` (JSON), atomically. Raises ``OSError``."""
        path = self.path
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Written beside and renamed: a reader never sees half a file.
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(data, out, indent=2)
        tmp.replace(path)
