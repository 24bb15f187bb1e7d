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

    An attempt is counted when it starts (:meth:`begin`), before its password is checked,
    and taken back if it succeeds: parallel attempts, whose passwords are all being
    hashed at once, cannot pass the limit together.
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
        account_key, address_key = _keys(account, address)
        waits = [
            self._wait(account_key, self.per_account, now),
            self._wait(address_key, self.per_address, now),
        ]
        return max(waits)

    def begin(self, account: str, address: str) -> float:
        """Start a log-in: 0 when it may go on, else the seconds to wait.

        An attempt that may go on is counted as failed until :meth:`succeeded` or
        :meth:`cancelled` says otherwise; one refused is not counted.
        """
        wait = self.retry_after(account, address)
        if wait <= 0:
            self.failed(account, address)
        return wait

    def failed(self, account: str, address: str) -> None:
        """Count a failed log-in."""
        now = self._clock()
        for key in _keys(account, address):
            times = self._failures.pop(key, None) or deque()
            times.append(now)
            self._failures[key] = times  # most recent last
        while len(self._failures) > _MAX_KEYS:
            self._failures.popitem(last=False)

    def succeeded(self, account: str, address: str) -> None:
        """A log-in that :meth:`begin` counted succeeded.

        Forgets the account's failures, and this attempt from the address's.
        """
        account_key, address_key = _keys(account, address)
        self._failures.pop(account_key, None)
        self._forget_one(address_key)

    def cancelled(self, account: str, address: str) -> None:
        """A log-in that :meth:`begin` counted could not be checked: take it back.

        For a failure that is not the person's (the accounts file cannot be read).
        """
        for key in _keys(account, address):
            self._forget_one(key)

    def _forget_one(self, key: str) -> None:
        times = self._failures.get(key)
        if times:
            times.pop()  # parallel attempts count the same: any one of them will do
            if not times:
                del self._failures[key]

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


def _keys(account: str, address: str) -> tuple[str, str]:
    return f"account:{account.strip().lower()}", f"address:{address}"
