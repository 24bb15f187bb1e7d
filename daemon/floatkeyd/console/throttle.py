"""Failed log-ins, counted per account and per address, to stop password guessing.

Plain and synchronous (the clock is passed in), so the limits are tested without a
server. An account is counted whether it exists or not, so being limited says nothing
about which names exist.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["LoginThrottle"]

# Bounded memory whatever an attacker sends: the keys seen least recently go first.
_MAX_KEYS = 50_000


class LoginThrottle:
    """Failed log-ins per account and per address, and how long to refuse more.

    At most ``per_account`` failures for one account and ``per_address`` from one address
    within ``window_s`` seconds; past either, log-ins are refused until the oldest failure
    leaves the window. A success clears the account's failures, not the address's (one
    known password must not reset the count for guessing others from there).
    """

    def __init__(
        self,
        per_account: int,
        per_address: int,
        window_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_account = per_account
        self.per_address = per_address
        self.window_s = window_s
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after(self, account: str, address: str) -> float:
        """Seconds until a log-in for ``account`` from ``address`` is allowed; 0 for now."""
        now = self._clock()
        waits = [
            self._wait(f"account:{account.strip().lower()}", self.per_account, now),
            self._wait(f"address:{address}", self.per_address, now),
        ]
        return max(waits)

    def failed(self, account: str, address: str) -> None:
        """Count a failed log-in."""
        now = self._clock()
        for key in (f"account:{account.strip().lower()}", f"address:{address}"):
            times = self._failures.pop(key, None) or deque()
            times.append(now)
            self._failures[key] = times  # most recent last
        while len(self._failures) > _MAX_KEYS:
            self._failures.popitem(last=False)

    def succeeded(self, account: str) -> None:
        """Forget the account's failures."""
        self._failures.pop(f"account:{account.strip().lower()}", None)

    def _wait(self, key: str, limit: int, now: float) -> float:
        times = self._failures.get(key)
        if not times:
            return 0.0
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if not times:
            del self._failures[key]
            return 0.0
        if len(times) < limit:
            return 0.0
        return times[-limit] + self.window_s - now
