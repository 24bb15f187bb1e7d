"""The daemon's own errors, under the shared ``floatkey.errors.FloatkeyError``.

::

    FloatkeyError            (floatkey.errors)
    ├── StoreError           the database or the state directory cannot be used
    ├── Refused              an admin command was refused: reason code and sentence
    ├── ConsoleUserError     a console account cannot be added, removed or read
    └── ConsoleUnavailable   the console's packages (floatkey[console]) are not installed

Errors both sides raise (``ConfigError``, ``KeyFileError``, the product-key errors) stay in
``floatkey.errors``.
"""

from __future__ import annotations

from typing import ClassVar

from floatkey.errors import FloatkeyError

__all__ = ["ConsoleUnavailable", "ConsoleUserError", "Refused", "StoreError"]


class StoreError(FloatkeyError):
    """The database or the state directory cannot be used; the sentence says what to do."""

    reason: ClassVar[str] = "store"


class Refused(FloatkeyError):
    """An admin command was refused; ``code`` goes in the reply and the audit row."""

    def __init__(self, code: str, message: str, detail: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        #: What the audit row should say besides the command (a shortened key, say).
        self.detail = detail or {}


class ConsoleUserError(FloatkeyError):
    """A console account cannot be added, removed or read; the sentence says why."""

    reason: ClassVar[str] = "console_user"


class ConsoleUnavailable(FloatkeyError):
    """The browser console's packages (the ``console`` extra) are not installed here."""

    reason: ClassVar[str] = "console_not_installed"
