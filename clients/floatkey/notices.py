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

__all__ = ["Denial", "LicenseView", "ShutdownCode", "ShutdownReason", "ShutdownSignal"]

#: Why an application must stop: a new license, an expired one, a seat an administrator
#: took back, a seat lost with none free in time, or a license server silent past the
#: offline grace.
ShutdownCode = Literal[
    "license.activated", "license.expired", "seat.revoked", "seat.lost", "offline"
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
