"""Dropped inbound messages: counted always, logged sparingly.

Whoever can publish to the broker can make the daemon drop messages as fast as they
can send them. Each drop is counted by reason (``floatkeyctl status`` shows the counts),
but only the first few per reason per minute are logged, and every untrusted string in
a log line is cut short: a flood must not fill the disk or the journal.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Final

import structlog

__all__ = ["LOGGED_PER_MINUTE", "Drops", "clip"]

log = structlog.get_logger("floatkeyd")

#: Drops logged per reason per minute; the rest are only counted.
LOGGED_PER_MINUTE: Final = 5
_CLIP = 128


def clip(text: object, limit: int = _CLIP) -> str:
    """``text`` as a string of at most ``limit`` characters, for a log line or audit row."""
    value = str(text)
    return value if len(value) <= limit else value[: limit - 1] + "…"


class Drops:
    """Counts of dropped messages by reason, and the rate-limited log of them."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._window = -1
        self._logged: Counter[str] = Counter()

    def __call__(self, reason: str, topic: str, **context: object) -> None:
        """Count one dropped message; log it unless this reason was logged enough lately."""
        self.counts[reason] += 1
        window = int(time.monotonic() // 60)
        if window != self._window:
            suppressed = {
                r: n - LOGGED_PER_MINUTE for r, n in self._logged.items() if n > LOGGED_PER_MINUTE
            }
            if suppressed:
                log.warning("drops not logged last minute", counts=suppressed)
            self._window, self._logged = window, Counter()
        self._logged[reason] += 1
        if self._logged[reason] <= LOGGED_PER_MINUTE:
            fields = {key: clip(value) for key, value in context.items()}
            log.warning("message dropped", reason=reason, topic=clip(topic), **fields)

    def add(self, reason: str, count: int = 1) -> None:
        """Count drops that need no log line of their own (already logged as a batch)."""
        self.counts[reason] += count
