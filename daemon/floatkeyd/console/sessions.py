"""Log-in sessions, kept in the console's memory; the browser holds only their id.

The cookie (Starlette's ``SessionMiddleware``: signed with itsdangerous, ``Secure``,
``HttpOnly``, ``SameSite=Strict``) carries the session id and the CSRF token. The
session itself lives here, so a log-out, an account removed, or a password changed ends
it at once, and a copied cookie is worth nothing after that. Restarting the console
logs everyone out.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["LoginSession", "SessionStore", "csrf_token", "same_token"]

_MAX_SESSIONS = 10_000


def csrf_token() -> str:
    """A fresh CSRF token (a new one at every log-in and log-out)."""
    return secrets.token_urlsafe(32)


def same_token(given: object, expected: object) -> bool:
    """Whether a form's CSRF token is the session's (compared in constant time)."""
    return (
        isinstance(given, str)
        and isinstance(expected, str)
        and bool(expected)
        and secrets.compare_digest(given.encode(), expected.encode())
    )


@dataclass(slots=True)
class LoginSession:
    """One logged-in browser: who, since when, last seen when (clock seconds)."""

    sid: str
    user: str
    stamp: str
    created: float
    seen: float


class SessionStore:
    """Sessions by id, with an idle and an absolute expiry."""

    def __init__(
        self, idle_s: float, max_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.idle_s = idle_s
        self.max_s = max_s
        self._clock = clock
        self._sessions: OrderedDict[str, LoginSession] = OrderedDict()

    def create(self, user: str, stamp: str) -> LoginSession:
        """A new session for ``user`` (whose password has ``stamp``)."""
        now = self._clock()
        session = LoginSession(secrets.token_urlsafe(32), user, stamp, now, now)
        self._sessions[session.sid] = session
        while len(self._sessions) > _MAX_SESSIONS:
            self._sessions.popitem(last=False)
        return session

    def get(self, sid: object) -> LoginSession | None:
        """The live session ``sid``, marked as seen now; ``None`` if unknown or expired."""
        if not isinstance(sid, str):
            return None
        session = self._sessions.get(sid)
        if session is None:
            return None
        now = self._clock()
        if now - session.seen > self.idle_s or now - session.created > self.max_s:
            del self._sessions[sid]
            return None
        session.seen = now
        self._sessions.move_to_end(sid)
        return session

    def peek(self, sid: object) -> LoginSession | None:
        """Like :meth:`get` without counting as activity (live updates keep no one in)."""
        if not isinstance(sid, str):
            return None
        session = self._sessions.get(sid)
        if session is None:
            return None
        now = self._clock()
        if now - session.seen > self.idle_s or now - session.created > self.max_s:
            return None
        return session

    def end(self, sid: object) -> None:
        """End session ``sid`` (log-out)."""
        if isinstance(sid, str):
            self._sessions.pop(sid, None)

    def __len__(self) -> int:
        return len(self._sessions)
