"""systemd's notify protocol, by hand: one datagram per message to ``$NOTIFY_SOCKET``.

The protocol is small enough that a dependency would be larger than the code:
newline-separated ``KEY=VALUE`` assignments in one ``AF_UNIX`` datagram, to a path or,
when the name starts with ``@``, to an abstract-namespace socket.
"""

from __future__ import annotations

import os
import socket

__all__ = ["Notifier"]


class Notifier:
    """Sends notifications to systemd; does nothing when not started by systemd."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]
        self._address = address or None
        self._socket: socket.socket | None = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        watchdog_for_us = usec.isdigit() and (not pid or pid == str(os.getpid()))
        #: Seconds between WATCHDOG=1 pings: half the watchdog timeout, or None.
        self.watchdog_interval = int(usec) / 2_000_000 if watchdog_for_us else None

    @property
    def enabled(self) -> bool:
        """Whether systemd is listening."""
        return self._address is not None

    def notify(self, **fields: str | int) -> None:
        """Send ``READY=1``, ``STATUS=...`` and the like; errors are ignored, as sd_notify does."""
        if self._address is None:
            return
        message = "\n".join(f"{key}={value}" for key, value in fields.items()).encode()
        try:
            if self._socket is None:
                self._socket = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                )
                # Never block the event loop: a receiver that does not read loses a status
                # line, which beats a daemon frozen in sendto() (the broker-outage test
                # found exactly that).
                self._socket.setblocking(False)  # noqa: FBT003 - the stdlib signature
            self._socket.sendto(message, self._address)
        except OSError:
            pass

    def ready(self, status: str) -> None:
        """Tell systemd the service is up."""
        self.notify(READY=1, STATUS=status, MAINPID=os.getpid())

    def status(self, status: str) -> None:
        """Update the status line ``systemctl status`` shows."""
        self.notify(STATUS=status)

    def watchdog(self) -> None:
        """Tell systemd the event loop is alive."""
        self.notify(WATCHDOG=1)

    def stopping(self, status: str = "Stopping") -> None:
        """Tell systemd the service is stopping."""
        self.notify(STOPPING=1, STATUS=status)

    def close(self) -> None:
        """Close the socket."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None
