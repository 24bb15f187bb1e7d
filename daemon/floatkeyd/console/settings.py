"""The console's settings, from the ``[console]`` table of the daemon's config file."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

from floatkey.errors import ConfigError
from floatkey.signing import load_private_key, parse_public_key
from floatkeyd.admin_client import find_server_key

if TYPE_CHECKING:
    from pathlib import Path

    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

    from floatkeyd.config import ConsoleConfig, LoadedConfig

__all__ = ["ConsoleSettings", "session_secret"]


@dataclass(frozen=True)
class ConsoleSettings:
    """Everything the console needs, with paths resolved."""

    loaded: LoadedConfig
    console: ConsoleConfig
    users_file: Path
    session_secret_file: Path
    admin_key_file: Path
    tls_cert: Path | None
    tls_key: Path | None

    @classmethod
    def from_config(cls, loaded: LoadedConfig) -> ConsoleSettings:
        """Resolve the ``[console]`` table. Raises ``ConfigError``."""
        console = loaded.config.console
        key_file = console.admin_key_file or loaded.config.admin_key_file
        if key_file is None:
            raise ConfigError(
                f"{loaded.path}: the console needs an admin key of its own: create one with "
                "`floatkeyctl admin-key create --out console-admin.key`, authorize it with "
                "`floatkeyd admin-key add`, and name it in [console] admin_key_file."
            )
        return cls(
            loaded=loaded,
            console=console,
            users_file=loaded.path_setting(console.users_file),
            session_secret_file=loaded.path_setting(console.session_secret_file),
            admin_key_file=loaded.path_setting(key_file),
            tls_cert=loaded.path_setting(console.tls_cert) if console.tls_cert else None,
            tls_key=loaded.path_setting(console.tls_key) if console.tls_key else None,
        )

    @property
    def https(self) -> bool:
        """Whether the console serves HTTPS."""
        return self.tls_cert is not None

    @property
    def allowed_hosts(self) -> list[str]:
        """Host names the console answers to (against DNS rebinding)."""
        if self.console.allowed_hosts:
            return list(self.console.allowed_hosts)
        return sorted({"127.0.0.1", "localhost", self.console.host})

    def admin_key(self) -> Ed25519PrivateKey:
        """The console's admin private key. Raises ``KeyFileError``."""
        return load_private_key(self.admin_key_file)

    def server_key(self) -> Ed25519PublicKey | None:
        """The daemon's key: configured, else from its state directory if readable."""
        if self.console.server_key:
            return parse_public_key(self.console.server_key)
        return find_server_key(self.loaded.state_dir)


def session_secret(path: Path) -> str:
    """The key that signs session cookies: read, or made (0600) at first start."""
    try:
        return path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        pass
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"Cannot read the console's session secret {path}: {exc}.") from None
    secret = secrets.token_urlsafe(48)
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as out:
            out.write(secret + "\n")
            if os.geteuid() == 0:
                # Root running the console by hand makes it in the service's state
                # directory: keep it the service's, as floatkeyctl console-user does.
                owner = path.parent.stat()
                os.fchown(out.fileno(), owner.st_uid, owner.st_gid)
    except FileExistsError:  # another console made it first: use theirs
        return path.read_text(encoding="ascii").strip()
    except OSError as exc:
        raise ConfigError(
            f"Cannot create the console's session secret {path}: {exc.strerror or exc}. "
            "Set [console] session_secret_file to a path this user may write."
        ) from None
    return secret
