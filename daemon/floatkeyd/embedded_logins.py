"""The embedded broker's login check (an amqtt authentication plugin).

amqtt loads plugins by their dotted path, so this module imports amqtt at the top and
is only ever imported by amqtt itself, when ``floatkeyd`` runs the embedded broker.

The passwords are 256-bit random secrets made at first start (``floatkeyd.statedir``),
not chosen by people: comparing their SHA-256 digests in constant time is enough, and a
slow password hash (amqtt's own file plugin uses Argon2) would cost ~50 ms of CPU per
connection, which a thousand agents reconnecting after a restart cannot afford.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from typing import Any

from amqtt.plugins.base import BaseAuthPlugin

__all__ = ["LoginPlugin", "digest"]


def digest(password: str) -> str:
    """What the plugin's config holds for a password."""
    return hashlib.sha256(password.encode()).hexdigest()


class LoginPlugin(BaseAuthPlugin):  # type: ignore[misc]  # amqtt ships no type information
    """Admit a client only with one of the configured username/password pairs."""

    @dataclass
    class Config:
        """``logins``: username to the SHA-256 hex digest of its password."""

        logins: dict[str, str] = field(default_factory=dict)

    async def authenticate(self, *, session: Any) -> bool:  # noqa: ANN401 - amqtt's Session
        """Whether the session's username and password are one of the logins."""
        logins: dict[str, str] = self._get_config_option("logins", {}) or {}
        expected = logins.get(session.username or "")
        if expected is None:
            return False
        return hmac.compare_digest(expected, digest(session.password or ""))
