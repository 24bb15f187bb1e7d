"""What the agent tells its application: the license, a denial, a request to stop.

The license it sees, why it has no seat, why the application must stop: plain values
(and one awaitable signal) that :class:`floatkey.Agent` produces and :mod:`floatkey`
re-exports.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from collections.abc import Generator

    from floatkey import protocol

__all__ = [
    "Denial",
    "ExpiryWarning",
    "LicenseView",
    "ShutdownCode",
    "ShutdownReason",
    "ShutdownSignal",
]

#: Why an application must stop: a new license, an expired one, a seat an administrator
#: took back, a seat lost with none free in time, a license server silent past the
#: offline grace, or the end of a borrowed seat.
ShutdownCode = Literal[
    "license.activated", "license.expired", "seat.revoked", "seat.lost", "offline", "borrow.ended"
]


@dataclass(frozen=True, slots=True)
class LicenseView:
    """The verified license state as the agent last saw it."""

    status: protocol.Status
    generation: int
    licensee: str | None = None
    organization: str | None = None
    seats: int | None = None
    features: frozenset[str] = frozenset()
    expires: str | None = None


@dataclass(frozen=True, slots=True)
class ExpiryWarning:
    """The license server's warning that its license expires soon (``license.expiring``).

    Nothing stops yet: the application may tell its user, who can tell the administrator.
    """

    #: Days from the server's today (UTC) to the license's last day: 0 on the last day.
    days_left: int
    #: The license's last valid day, ISO (``2026-12-31``).
    expires: str
    #: The license generation it is about.
    generation: int

    @property
    def message(self) -> str:
        """A sentence for the application's user."""
        if self.days_left == 0:
            when = "today"
        else:
            when = f"in {self.days_left} day{'s' if self.days_left != 1 else ''}"
        return (
            f"The license on the license server expires {when} (its last day is "
            f"{self.expires}). Ask your administrator to enter a new product key."
        )


@dataclass(frozen=True, slots=True)
class Denial:
    """Why the agent has no seat: ``seats_exhausted``, ``expired``, ..., and the sentence."""

    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class ShutdownReason:
    """Why the application must stop."""

    code: ShutdownCode
    message: str
    generation: int | None = None
    #: When the agent learned it (Unix seconds).
    requested_at: float = 0.0


class ShutdownSignal:
    """Set when the application must stop. ``await`` it for the :class:`ShutdownReason`."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.reason: ShutdownReason | None = None

    def is_set(self) -> bool:
        """Whether a stop was requested."""
        return self._event.is_set()

    def _set(self, reason: ShutdownReason) -> bool:
        if self._event.is_set():
            return False
        self.reason = reason
        self._event.set()
        return True

    async def wait(self) -> ShutdownReason:
        """Wait for the stop request; return why."""
        await self._event.wait()
        assert self.reason is not None
        return self.reason

    def __await__(self) -> Generator[object, None, ShutdownReason]:
        return self.wait().__await__()
