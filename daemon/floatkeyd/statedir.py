"""The state directory: the database, the server identity key, and the lock on both.

One daemon per state directory: two ledgers over one database would each grant every
seat (an oversell), so the directory is held with ``flock`` for the life of the daemon.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

from floatkey.configfile import private_directory_problem
from floatkey.errors import ConfigError, KeyFileError
from floatkey.signing import create_private_key_file, load_private_key
from floatkeyd.errors import StoreError
from floatkeyd.unlockbox import UNLOCK_KEY_FILE, UnlockBox

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = [
    "CLIENT_ID_FILE",
    "DB_FILE",
    "EMBEDDED_LOGINS_DIR",
    "IDENTITY_FILE",
    "LOCK_FILE",
    "StateDirectory",
    "embedded_password_file",
    "held_state_directory",
    "load_or_create_identity",
    "write_private",
]

DB_FILE = "floatkeyd.db"
IDENTITY_FILE = "server-identity.key"
LOCK_FILE = "floatkeyd.lock"
CLIENT_ID_FILE = "broker-client-id"
#: The embedded broker's passwords, one file per login (0600, in a 0700 directory).
EMBEDDED_LOGINS_DIR = "embedded-broker"


def embedded_password_file(state_dir: Path, user: str) -> Path:
    """Where the embedded broker's password for ``user`` is kept."""
    return state_dir / EMBEDDED_LOGINS_DIR / f"{user}.password"


@dataclass(frozen=True, slots=True)
class StateDirectory:
    """A prepared, locked state directory and the server identity found (or made) in it."""

    path: Path
    identity: Ed25519PrivateKey
    identity_created: bool
    #: The daemon's MQTT client id: made at first start and kept, never guessable, so
    #: nobody can take the daemon's place on the broker by connecting with its id.
    broker_client_id: str
    #: The X25519 key product keys are sealed to on their way to the daemon.
    unlock_box: UnlockBox

    @property
    def database(self) -> Path:
        """The daemon's SQLite database."""
        return self.path / DB_FILE

    def embedded_logins(self, users: tuple[str, ...]) -> dict[str, str]:
        """The embedded broker's passwords, made (256 random bits each) at first use.

        Readable by the daemon's user only (and root): local tools and agents of the same
        user read them with ``password_file``. Raises ``OSError``.
        """
        (self.path / EMBEDDED_LOGINS_DIR).mkdir(mode=0o700, exist_ok=True)
        logins = {}
        for user in users:
            path = embedded_password_file(self.path, user)
            try:
                logins[user] = path.read_text().strip()
            except FileNotFoundError:
                logins[user] = ""
            if not logins[user]:  # never an empty password: that would let anyone in
                logins[user] = secrets.token_urlsafe(32)
                write_private(path, logins[user] + "\n")
        return logins


@contextlib.contextmanager
def held_state_directory(path: Path) -> Iterator[StateDirectory]:
    """Prepare ``path`` (0700), hold its lock, load or create the identity; for the block.

    Raises ``ConfigError`` when the directory cannot be used, ``StoreError`` when another
    daemon holds it, ``KeyFileError`` when the identity key cannot be read or written.
    """
    why = private_directory_problem(path)
    if why is not None:
        raise ConfigError(
            f"state_dir = '{path}': cannot use it as the state directory ({why}). Name a "
            "directory floatkeyd may create and write (under systemd: StateDirectory=)."
        )
    fd = _take_lock(path)
    try:
        identity, created = load_or_create_identity(path)
        yield StateDirectory(
            path,
            identity,
            created,
            _load_or_create_client_id(path),
            UnlockBox.load_or_create(path / UNLOCK_KEY_FILE, write_private),
        )
    finally:
        os.close(fd)  # releases the directory for the next daemon


def _take_lock(path: Path) -> int:
    """Hold the directory for the life of this process; return the lock's fd.

    ``flock`` goes with the process, however it ends (SIGKILL included).
    """
    fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise StoreError(
            f"Another floatkeyd is already serving {path} (pid {holder}). One daemon "
            "per state directory: two would each grant every seat. Stop the other one "
            "first (systemctl stop floatkeyd)."
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def load_or_create_identity(path: Path) -> tuple[Ed25519PrivateKey, bool]:
    """The server key, created (0600) on first start; the boolean says whether it was."""
    key_path = path / IDENTITY_FILE
    if key_path.exists():
        return load_private_key(key_path), False
    try:
        return create_private_key_file(key_path), True
    except KeyFileError:
        # Another process created it between our check and our create: use theirs.
        return load_private_key(key_path), False


def _load_or_create_client_id(path: Path) -> str:
    """The daemon's broker client id, made once (``floatkeyd-`` and 24 random hex digits)."""
    id_path = path / CLIENT_ID_FILE
    with contextlib.suppress(FileNotFoundError):
        text = id_path.read_text().strip()
        if text:
            return text
    identifier = f"floatkeyd-{secrets.token_hex(12)}"
    write_private(id_path, identifier + "\n")
    return identifier


def write_private(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` at once, created 0600 (never chmod-ed afterwards).

    Written to a temporary file, synced, then renamed: a crash or a full disk leaves the
    old file or none, never an empty one.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
