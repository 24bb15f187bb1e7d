"""Warnings before the license expires: the signed ``license.expiring`` event.

At each of ``[license] warn_days`` (default 30, 7 and 1 days before the license's last
day) the daemon publishes one ``license.expiring`` event on the events topic, saying the
days left and the last day. Each threshold is sent once per license: which were sent is
kept in the database (``meta.expiry_warned``), so a restart does not send them again,
while a daemon that starts inside a threshold it never sent (it was down when the day
came) sends it at once. When it starts past several at once it sends one event, for the
days actually left. An event that could not be published (no broker) is sent when the
broker is back.

Days are counted as the product key counts them, in UTC calendar days by the daemon's
never-backwards clock: ``days_left`` is 0 on the last valid day.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import sqlite3
from typing import TYPE_CHECKING

import structlog

from floatkey import protocol
from floatkeyd.clock import day_of

if TYPE_CHECKING:
    from floatkey.envelope import Signer
    from floatkeyd.authority import LicenseAuthority
    from floatkeyd.clock import Clock
    from floatkeyd.link import Link
    from floatkeyd.store import Store

__all__ = ["ExpiryWarnings", "days_left"]

log = structlog.get_logger("floatkeyd")

#: The longest wait between two looks: a clock moved forward (NTP, a VM resumed) is
#: noticed within this, as asyncio's timers run on the monotonic clock.
_LOOK_AGAIN_S = 600.0
#: After a publication that found no broker (the reconnect wakes it sooner).
_RETRY_S = 5.0
_MIN_WAIT_S = 0.05


def days_left(expires: dt.date, now_ms: int) -> int:
    """Days from the UTC day of ``now_ms`` to ``expires`` (0 on the last day, <0 after)."""
    return (expires - day_of(now_ms)).days


class ExpiryWarnings:
    """Sends ``license.expiring`` at the configured thresholds; build with :meth:`open`."""

    def __init__(  # noqa: PLR0913 - wired once by the daemon's factory
        self,
        *,
        warn_days: list[int],
        authority: LicenseAuthority,
        store: Store,
        clock: Clock,
        signer: Signer,
        link: Link,
        topics: protocol.Topics,
        sent: tuple[str, set[int]],
    ) -> None:
        self._warn_days = sorted(warn_days, reverse=True)
        self._authority = authority
        self._store = store
        self._clock = clock
        self._signer = signer
        self._link = link
        self._topics = topics
        #: The license the thresholds in ``_sent`` were sent for (serial and last day).
        self._license, self._sent = sent
        self._wake = asyncio.Event()

    @classmethod
    async def open(  # noqa: PLR0913 - see __init__
        cls,
        *,
        warn_days: list[int],
        authority: LicenseAuthority,
        store: Store,
        clock: Clock,
        signer: Signer,
        link: Link,
        topics: protocol.Topics,
    ) -> ExpiryWarnings:
        """Read which thresholds were sent (for which license) from the database."""
        return cls(
            warn_days=warn_days,
            authority=authority,
            store=store,
            clock=clock,
            signer=signer,
            link=link,
            topics=topics,
            sent=_parse(await store.expiry_warnings()),
        )

    # --- what others read and tell ----------------------------------------------------

    def days_left(self) -> int | None:
        """Days to the last day of the license, if it is licensed and dated."""
        info = self._authority.info
        if self._authority.status != "licensed" or info is None or info.expires is None:
            return None
        return days_left(dt.date.fromisoformat(info.expires), self._clock.now())

    def within_warning(self) -> bool:
        """Whether the days left are within the largest threshold (the warning window)."""
        left = self.days_left()
        return left is not None and bool(self._warn_days) and left <= self._warn_days[0]

    def recheck(self) -> None:
        """Look again now: a new license, or the broker back."""
        self._wake.set()

    # --- the loop, one step at a time ---------------------------------------------

    async def step(self) -> None:
        """Send what is due, then wait until the next threshold (or a recheck)."""
        self._wake.clear()
        wait = _LOOK_AGAIN_S
        if not await self._send_due():
            wait = _RETRY_S
        crossing = self._next_crossing_ms()
        if crossing is not None:
            wait = min(wait, max(_MIN_WAIT_S, (crossing - self._clock.now()) / 1000))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await self._wake.wait()

    def _current(self) -> tuple[str, dt.date] | None:
        info = self._authority.info
        if self._authority.status != "licensed" or info is None or info.expires is None:
            return None
        return f"{info.serial}/{info.expires}", dt.date.fromisoformat(info.expires)

    async def _send_due(self) -> bool:
        """Publish the event if a threshold was reached and not sent; ``False``: retry."""
        current = self._current()
        if current is None:
            return True
        license_, expires = current
        if license_ != self._license:
            self._license, self._sent = license_, set()
        left = days_left(expires, self._clock.now())
        reached = {days for days in self._warn_days if left <= days}
        if not reached - self._sent or left < 0:
            return True
        body = protocol.Event(
            name="license.expiring",
            generation=self._authority.generation,
            revision=self._authority.revision,
            days_left=left,
            expires=expires.isoformat(),
        )
        sealed = self._signer.seal(self._topics.events, protocol.encode(body))
        if not await self._link.publish(self._topics.events, sealed):
            log.info("license expiry warning not sent: no broker; sent when it is back")
            return False
        log.warning(
            "license expires soon; agents warned",
            days_left=left,
            expires=expires.isoformat(),
            thresholds=sorted(reached - self._sent, reverse=True),
        )
        self._sent |= reached
        try:
            await self._store.set_expiry_warnings(_format(self._license, self._sent))
        except sqlite3.Error as exc:
            # Sent, and remembered in memory: only a restart before the next write could
            # send it once more.
            log.error("database write failed; expiry warning not recorded", error=str(exc))
        return True

    def _next_crossing_ms(self) -> int | None:
        """When the next threshold not yet sent is reached (the start of its UTC day)."""
        current = self._current()
        if current is None:
            return None
        _, expires = current
        # Only thresholds still ahead: one already reached is sent or retried, never
        # waited for (a zero-second wait would spin while the broker is away).
        left = days_left(expires, self._clock.now())
        ahead = [days for days in self._warn_days if days < left and days not in self._sent]
        if not ahead:
            return None
        day = expires - dt.timedelta(days=max(ahead))
        start = dt.datetime.combine(day, dt.time(), dt.UTC)
        return int(start.timestamp() * 1000)


def _parse(text: str | None) -> tuple[str, set[int]]:
    if not text:
        return "", set()
    try:
        data = json.loads(text)
        return str(data["license"]), {int(days) for days in data["days"]}
    except (ValueError, KeyError, TypeError):
        log.warning("expiry warnings record unreadable; starting afresh")
        return "", set()


def _format(license_: str, sent: set[int]) -> str:
    return json.dumps({"license": license_, "days": sorted(sent, reverse=True)})
