"""Console accounts: names, roles and Argon2id password hashes in one JSON file.

The file is written only by ``floatkeyctl console-user`` (as root, on the server) and read
by the console, which re-reads it when it changes: an account removed, or a password
changed, ends that user's sessions at their next request. Written whole (beside, then
renamed), mode 0600, owned by the owner of its directory (the console's systemd
``DynamicUser``), so the console can read it and nobody else.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal

import msgspec

from floatkeyd.console import require_packages
from floatkeyd.errors import ConsoleUserError

if TYPE_CHECKING:
    # The console extra's: imported when a store is made (floatkeyctl's parser needs
    # this module's names without it).
    from argon2 import PasswordHasher

__all__ = [
    "MIN_PASSWORD_LENGTH",
    "ROLES",
    "ConsoleUser",
    "Role",
    "UserStore",
    "check_user_name",
]

Role = Literal["admin", "viewer"]
ROLES: Final = ("admin", "viewer")
MIN_PASSWORD_LENGTH: Final = 10
MAX_PASSWORD_LENGTH: Final = 1024
# Lower case, so "Alice" and "alice" are one account; it goes into the audit log's actor
# as "console:alice" (the protocol's user field allows [A-Za-z0-9._:@-]{0,64}).
_NAME = re.compile(r"[a-z][a-z0-9._-]{0,31}")


def check_user_name(name: str) -> str:
    """Return ``name`` if it can be an account name; raise ``ConsoleUserError``."""
    if not _NAME.fullmatch(name):
        raise ConsoleUserError(
            f"{name[:40]!r} cannot be a console user name: use 1-32 lower-case letters, "
            "digits, '.', '_' or '-', starting with a letter."
        )
    return name


class ConsoleUser(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """One console account."""

    name: str
    role: Role
    password_hash: str
    created: str

    @property
    def stamp(self) -> str:
        """Changes when the password does: a session made before then is ended."""
        return hashlib.sha256(self.password_hash.encode()).hexdigest()[:16]


class _UsersFile(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    version: int = 1
    users: list[ConsoleUser] = msgspec.field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Snapshot:
    signature: tuple[int, int, int]
    users: dict[str, ConsoleUser]


class UserStore:
    """The accounts file at ``path``.

    Reading is cheap and follows changes (the file's inode, size and mtime are compared
    at every read). ``verify`` hashes even for an unknown name, so the time a failed
    log-in takes does not tell whether the account exists.
    """

    def __init__(self, path: Path, hasher: PasswordHasher | None = None) -> None:
        """Raises ``ConsoleUnavailable`` when argon2-cffi (floatkey[console]) is missing."""
        require_packages("argon2")
        from argon2 import PasswordHasher  # noqa: PLC0415 - the console extra's

        self.path = path
        self._hasher = hasher or PasswordHasher()  # Argon2id, RFC 9106 low-memory profile
        self._snapshot: _Snapshot | None = None
        self._dummy_hash: str | None = None

    # --- reading -----------------------------------------------------------------

    def users(self) -> dict[str, ConsoleUser]:
        """Every account by name (none when the file does not exist yet)."""
        try:
            info = self.path.stat()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise self._unreadable(exc) from None
        signature = (info.st_ino, info.st_size, info.st_mtime_ns)
        if self._snapshot is None or self._snapshot.signature != signature:
            try:
                data = msgspec.json.decode(self.path.read_bytes(), type=_UsersFile)
            except OSError as exc:
                raise self._unreadable(exc) from None
            except msgspec.DecodeError as exc:
                raise ConsoleUserError(
                    f"The console accounts file {self.path} is damaged ({exc}). Remove it and "
                    "add the accounts again with `floatkeyctl console-user add`."
                ) from None
            self._snapshot = _Snapshot(signature, {user.name: user for user in data.users})
        return self._snapshot.users

    def get(self, name: str) -> ConsoleUser | None:
        """The account ``name``, if there is one."""
        return self.users().get(name)

    def verify(self, name: str, password: str) -> ConsoleUser | None:
        """The account if ``password`` is its password, else ``None``. Takes a while (Argon2).

        Raises ``ConsoleUserError`` only when the accounts file cannot be read.
        """
        from argon2.exceptions import (  # noqa: PLC0415 - the console extra's
            InvalidHashError,
            VerificationError,
            VerifyMismatchError,
        )

        user = self.users().get(name.strip().lower())
        if self._dummy_hash is None:
            self._dummy_hash = self._hasher.hash("not a password: only to take as long")
        candidate = user.password_hash if user is not None else self._dummy_hash
        if len(password) > MAX_PASSWORD_LENGTH:
            password = password[:MAX_PASSWORD_LENGTH]
        try:
            self._hasher.verify(candidate, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        return user

    # --- writing (floatkeyctl console-user) --------------------------------------

    def add(self, name: str, role: Role, password: str) -> bool:
        """Add the account, or replace its role and password; return whether it existed."""
        check_user_name(name)
        if role not in ROLES:
            raise ConsoleUserError(f"The role must be admin or viewer, not {role[:20]!r}.")
        if not MIN_PASSWORD_LENGTH <= len(password) <= MAX_PASSWORD_LENGTH:
            raise ConsoleUserError(
                f"The password must have between {MIN_PASSWORD_LENGTH} and "
                f"{MAX_PASSWORD_LENGTH} characters."
            )
        users = dict(self.users())
        existed = name in users
        users[name] = ConsoleUser(
            name=name,
            role=role,
            password_hash=self._hasher.hash(password),
            created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        )
        self._write(users)
        return existed

    def remove(self, name: str) -> bool:
        """Remove the account; return whether there was one."""
        users = dict(self.users())
        if users.pop(name, None) is None:
            return False
        self._write(users)
        return True

    def _write(self, users: dict[str, ConsoleUser]) -> None:
        data = msgspec.json.format(
            msgspec.json.encode(_UsersFile(users=sorted(users.values(), key=lambda u: u.name)))
        )
        directory = self.path.parent
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd, temporary = tempfile.mkstemp(prefix=".users-", dir=directory)  # 0600
            try:
                with os.fdopen(fd, "wb") as out:
                    out.write(data + b"\n")
                    out.flush()
                    os.fsync(out.fileno())
                if os.geteuid() == 0:
                    # Root edits the file of the console's (dynamic) user: keep it theirs.
                    owner = directory.stat()
                    os.chown(temporary, owner.st_uid, owner.st_gid)
                Path(temporary).replace(self.path)
            except BaseException:
                Path(temporary).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise ConsoleUserError(
                f"Cannot write the console accounts file {self.path}: "
                f"{exc.strerror or exc}. Run this as the user the console runs as, or as root."
            ) from None
        self._snapshot = None

    def _unreadable(self, exc: OSError) -> ConsoleUserError:
        return ConsoleUserError(
            f"Cannot read the console accounts file {self.path}: {exc.strerror or exc}."
        )
