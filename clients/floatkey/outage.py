"""What an agent says about reaching its license server: a line when it goes, one when back.

An outage of ten minutes is two lines in the log, not one per reconnection attempt: a
warning when the server becomes unreachable (with how long the application may go on),
an info line when it answers again (with how long it was away), and debug lines only for
the attempts in between. Before the agent has ever reached the broker, the first failed
attempt says so once ("cannot reach the broker ... yet"): nothing was lost.

The numbers are in the sentence an administrator reads (f-strings in the log calls, on
purpose) and in fields for queries. Plain and synchronous, the times passed in
(monotonic seconds): the agent's connection and offline-watch tasks call it, and tests
can drive it without a broker.
"""

from __future__ import annotations

import structlog

__all__ = ["OutageLog"]

log = structlog.get_logger("floatkey.agent")


class OutageLog:
    """The reachability of one agent's license server, as its log tells it.

    ``grace_left`` arguments are the seconds the application may still run without an
    answer (the agent's offline grace, counted from the daemon's last answer), or
    ``None`` when the agent holds no seat and nothing will stop.
    """

    def __init__(self, client: str, broker: str) -> None:
        self._client = client
        self._broker = broker
        self._ever_connected = False
        self._said_not_yet = False
        #: When the current outage began (monotonic seconds), or ``None`` while reachable.
        self.down_since: float | None = None

    def connected(self) -> None:
        """The broker connection is up (the daemon may still be silent)."""
        self._ever_connected = True

    def connection_failed(self, error: str, now: float, grace_left: float | None) -> None:
        """A connection attempt failed, or the connection was lost."""
        if not self._ever_connected:
            if self._said_not_yet:
                log.debug("broker not reachable yet; retrying", client=self._client, error=error)
                return
            self._said_not_yet = True
            log.warning(
                f"cannot reach the broker ({self._broker}) yet; retrying",  # noqa: G004
                client=self._client,
                error=error,
            )
            return
        if self.down_since is None:
            self._begin(now, grace_left, error=error)
        else:
            log.debug(
                "license server still unreachable; retrying", client=self._client, error=error
            )

    def silent(self, since: float, grace_left: float | None) -> None:
        """Connected, but no answer from the daemon since ``since``: a renewal went unanswered."""
        if self.down_since is None:
            self._begin(since, grace_left, error="no answer from floatkeyd through the broker")

    def answered(self, now: float) -> None:
        """The daemon answered (a reply to this agent)."""
        since, self.down_since = self.down_since, None
        if since is not None:
            away = max(now - since, 0.0)
            log.info(
                f"license server reachable again after {away:.0f} s",  # noqa: G004
                client=self._client,
                away_s=round(away, 1),
            )

    def _begin(self, since: float, grace_left: float | None, *, error: str) -> None:
        self.down_since = since
        if grace_left is None:
            log.warning(
                "license server unreachable; retrying (this client holds no seat)",
                client=self._client,
                broker=self._broker,
                error=error,
            )
            return
        log.warning(
            "license server unreachable; the application keeps running for up to "  # noqa: G004
            f"{grace_left:.0f} s of offline grace",
            client=self._client,
            broker=self._broker,
            error=error,
            grace_left_s=round(grace_left),
        )
