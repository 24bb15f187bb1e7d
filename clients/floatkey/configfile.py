"""Reading TOML configuration into typed structs, with errors that name the key.

Shared by the daemon and the agent (both read TOML and keep private directories).
"""

from __future__ import annotations

import os
import tomllib
from typing import TYPE_CHECKING, TypeVar

import msgspec

from floatkey.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

__all__ = ["load_toml", "private_directory_problem"]

T = TypeVar("T")


def load_toml(path: Path, kind: type[T], *, renamed: Mapping[str, str] | None = None) -> T:
    """Read ``path`` as ``kind``; unknown keys and bad values raise ``ConfigError``.

    ``renamed`` maps older names of top-level keys to their current names: a file that
    uses an older name still loads; one that sets both names is refused.
    """
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"Cannot read the configuration file {path}: {exc.strerror}.") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}.") from None
    for old, new in (renamed or {}).items():
        if old not in data:
            continue
        if new in data:
            raise ConfigError(
                f"{path}: {old} is the older name of {new}; set only {new} (remove {old})."
            )
        data[new] = data.pop(old)
    try:
        return msgspec.convert(data, kind)
    except msgspec.ValidationError as exc:
        # msgspec names the key: "Object contains unknown field `x` - at `$.broker`".
        raise ConfigError(f"{path}: {exc}.") from None


def private_directory_problem(path: Path) -> str | None:
    """Create ``path`` (0700) if needed; return why it cannot be written, or ``None``."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        return exc.strerror or str(exc)
    return None if os.access(path, os.W_OK | os.X_OK) else "not writable by this user"
