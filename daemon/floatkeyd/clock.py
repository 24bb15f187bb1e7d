"""The daemon's clock: the never-backwards time that decides when a license expires.

Two clocks, on purpose:

- :meth:`Clock.now` never goes back. A clock set back must not make an expired license
  valid again, so the latest time seen is persisted (by the license authority) and the
  clock starts from it after a restart.
- :meth:`Clock.wall` is the machine's real clock, for checks against another machine's
  clock (an admin command's ``ts``): a clock that once ran a day ahead must not lock out
  every administrator for a day afterwards.

This module is also the one place that says when a product key stops being valid.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

from floatkey.protocol import now_ms

if TYPE_CHECKING:
    from collections.abc import Callable

    from floatkey.productkey import ProductKey

__all__ = ["Clock", "day_of", "expiry_instant_ms"]


def day_of(ms: int) -> dt.date:
    """The UTC calendar day of a Unix-ms instant (product keys are dated in UTC days)."""
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).date()


def expiry_instant_ms(key: ProductKey) -> int | None:
    """The moment a key stops being valid: the start of the day after ``expires``, UTC.

    Agrees with ``ProductKey.is_expired(day_of(ms))``: a key is valid through its last day.
    """
    if key.expires is None:
        return None
    end = dt.datetime.combine(key.expires + dt.timedelta(days=1), dt.time(), dt.UTC)
    return int(end.timestamp() * 1000)


class Clock:
    """Wall-clock milliseconds, and a never-backwards reading of them."""

    def __init__(self, latest_ms: int = 0, wall: Callable[[], int] = now_ms) -> None:
        self._latest_ms = latest_ms
        self._wall = wall

    def wall(self) -> int:
        """The machine's clock now (Unix ms), as it is, for comparing with other machines."""
        return self._wall()

    def now(self) -> int:
        """Unix ms, never earlier than the latest time this clock has returned."""
        self._latest_ms = max(self._latest_ms, self._wall())
        return self._latest_ms

    @property
    def latest_ms(self) -> int:
        """The latest time seen, to persist."""
        return self._latest_ms

    def today(self) -> dt.date:
        """The UTC day of :meth:`now`, for a product key's validity."""
        return day_of(self.now())

    def has_expired(self, key: ProductKey) -> bool:
        """Whether ``key`` is past its last valid day by this clock."""
        deadline = expiry_instant_ms(key)
        return deadline is not None and self.now() >= deadline
