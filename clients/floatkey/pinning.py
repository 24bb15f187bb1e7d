"""Trust on first use: the license servers' keys an agent has pinned.

Like SSH's ``known_hosts``: one private JSON state file, mode 0600 in a 0700 directory,
``{"servers": {topic_root: "ed25519:..."}}``, holds one key per server (topic root), and,
kept there by ``floatkey.borrow``, borrow tokens and the latest time seen. A key, once
pinned, is never replaced here: a server that presents another one is refused by the
agent.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from typing import TYPE_CHECKING, TypeVar

import msgspec

from floatkey import protocol
from floatkey.configfile import private_directory_problem
from floatkey.envelope import EnvelopeError, open_envelope, peek
from floatkey.errors import ConfigError
from floatkey.signing import key_id, parse_public_key, public_key_text

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

__all__ = ["KnownServers", "signed_identity"]

_T = TypeVar("_T")


def signed_identity(data: bytes, topic: str, server: str) -> Ed25519PublicKey | None:
    """The key of an ``identity`` on a client's own ``topic``, signed by the key it announces.

    The daemon's answer to a ``state.request`` asking for it: only the daemon may write
    that topic (broker ACL), the signature shows the sender holds the key, and the topic
    inside it that the answer was made for this client. ``None`` when ``data`` is no
    identity (a seat reply, the state); raises ``EnvelopeError`` (``bad_identity``, or
    the envelope's reason) for an identity that is refused.
    """
    peeked = peek(data)
    if peeked is None:
        return None
    kid, body = peeked
    try:
        identity = protocol.decode(body, protocol.Identity)
        key = parse_public_key(identity.public_key)
    except (msgspec.DecodeError, ValueError):
        return None
    if kid != key_id(key) or identity.kid != kid or identity.server != server:
        raise EnvelopeError("bad_identity", kid)
    open_envelope(data, topic, {kid: key})
    return key


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

        def add(data: dict[str, object]) -> bool:
            known = _servers_in(data)
            if root in known:
                return False
            known[root] = public_key_text(key)
            data["servers"] = known  # and whatever else the file keeps (floatkey.borrow)
            return True

        return self.update(add)

    def read(self) -> dict[str, object]:
        """The whole file's JSON object (``{}`` when missing or unreadable)."""
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _servers(self) -> dict[str, str]:
        return _servers_in(self.read())

    def update(self, change: Callable[[dict[str, object]], _T]) -> _T:
        """Read, ``change`` in place, and write back the file, under an exclusive lock.

        Every writer of the file goes through here (the pins, ``floatkey.borrow``'s
        tokens and latest time seen), so that two agents on one account never lose each
        other's change. Written only when ``change`` returns a true value. Raises
        ``OSError``.
        """
        path = self.path
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            data = self.read()
            result = change(data)
            if result:
                self._write(data)
            return result
        finally:
            os.close(fd)  # and with it the lock

    def _write(self, data: object) -> None:
        path = self.path
        # Written beside, flushed to disk, and renamed: a reader never sees half a file,
        # and a crash just after never leaves an empty one.
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(data, out, indent=2)
            out.flush()
            os.fsync(out.fileno())
        tmp.replace(path)
        with contextlib.suppress(OSError):
            directory = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)


def _servers_in(data: dict[str, object]) -> dict[str, str]:
    servers = data.get("servers")
    if not isinstance(servers, dict):
        return {}
    return {k: v for k, v in servers.items() if isinstance(v, str)}
