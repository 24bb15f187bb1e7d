"""The Prometheus endpoint (``[metrics] listen``, off by default; docs/METRICS.md).

Nothing is counted for it on the hot path: :class:`DaemonCollector` reads, at scrape
time, what the components keep anyway (the ledger, the license authority, the drop
counts) and a few plain counters beside them (grants and denials in the seat desk,
commands in the admin desk, failed transactions in the store). A renewal costs the same
with the endpoint on or off.

:class:`MetricsEndpoint` serves prometheus_client's ASGI app with uvicorn inside the
daemon's own event loop, on a socket bound when the daemon is built (a port in use is
refused at start, with a sentence). A scrape therefore reads the components between two
messages, never halfway through one, and no lock is needed: prometheus_client's own
HTTP server would run the collector in another thread while the loop changes what it
reads.
"""

from __future__ import annotations

import contextlib
import socket
from typing import TYPE_CHECKING, Any

import structlog
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.asgi import make_asgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from floatkey.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator, MutableMapping

    from prometheus_client.metrics_core import Metric

    from floatkeyd.admin import AdminDesk
    from floatkeyd.authority import LicenseAuthority
    from floatkeyd.drops import Drops
    from floatkeyd.link import Link
    from floatkeyd.seats import SeatDesk
    from floatkeyd.store import Store

    _Scope = MutableMapping[str, Any]
    _Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
    _Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

__all__ = ["DaemonCollector", "MetricsEndpoint", "bind_metrics_socket", "metrics_registry"]

log = structlog.get_logger("floatkeyd")

_STATUSES = ("unlicensed", "licensed", "expired")
_DENIAL_REASONS = ("seats_exhausted", "expired", "limit_reached")
_PATH = "/metrics"
# A scrape is quick and Prometheus sends one at a time: a few at once is plenty, and
# caps what a flood of connections can hold.
_MAX_CONNECTIONS = 16


class DaemonCollector:
    """Every ``floatkey_*`` metric, read from the daemon's components at scrape time."""

    def __init__(  # noqa: PLR0913 - the components it reads
        self,
        *,
        authority: LicenseAuthority,
        seats: SeatDesk,
        admin: AdminDesk,
        drops: Drops,
        link: Link,
        store: Store,
    ) -> None:
        self._authority = authority
        self._seats = seats
        self._admin = admin
        self._drops = drops
        self._link = link
        self._store = store

    def collect(self) -> Iterator[Metric]:
        """The metrics now (called by prometheus_client for each scrape)."""
        authority, ledger = self._authority, self._seats.ledger
        yield GaugeMetricFamily(
            "floatkey_seats_licensed", "Seats of the active license (0 unless licensed).",
            value=authority.seats,
        )  # fmt: skip
        yield GaugeMetricFamily(
            "floatkey_seats_in_use", "Licensed seats held now.", value=ledger.in_use
        )
        yield GaugeMetricFamily(
            "floatkey_seats_borrowed",
            "Seats lent for offline use now (floatkey-agent borrow), counted in seats_in_use.",
            value=ledger.borrowed,
        )
        unlicensed = sum(1 for lease in ledger.leases.values() if not lease.licensed)
        yield GaugeMetricFamily(
            "floatkey_unlicensed_sessions",
            "Clients running without a license (while the server has none).",
            value=unlicensed,
        )
        yield GaugeMetricFamily(
            "floatkey_clients_awaiting_shutdown",
            "Clients told to shut down by the latest license change that still hold a seat.",
            value=ledger.awaiting_release(authority.generation - 1),
        )
        grants = CounterMetricFamily(
            "floatkey_seat_grants", "Seats granted, by kind of seat.", labels=["seat"]
        )
        for seat in ("licensed", "unlicensed"):
            grants.add_metric([seat], self._seats.granted[seat])
        yield grants
        denials = CounterMetricFamily(
            "floatkey_seat_denials", "Seat requests denied, by reason.", labels=["reason"]
        )
        for reason in sorted({*_DENIAL_REASONS, *self._seats.denied}):
            denials.add_metric([reason], self._seats.denied[reason])
        yield denials
        yield CounterMetricFamily(
            "floatkey_leases_expired",
            "Leases that ran out without a renewal (the client vanished without a release).",
            value=self._seats.leases_expired,
        )
        status = GaugeMetricFamily(
            "floatkey_license_status",
            "The license status: 1 for the current one, 0 for the others.",
            labels=["status"],
        )
        for name in _STATUSES:
            status.add_metric([name], 1 if authority.status == name else 0)
        yield status
        expires = authority.expires_at_ms
        if expires is not None:
            yield GaugeMetricFamily(
                "floatkey_license_expiry_timestamp_seconds",
                "When the license stops being valid (the start of the day after its last "
                "day, UTC), Unix seconds. Absent for a license without an expiry.",
                value=expires / 1000,
            )
        yield GaugeMetricFamily(
            "floatkey_license_generation",
            "Grows by one with every activation and expiry.",
            value=authority.generation,
        )
        yield GaugeMetricFamily(
            "floatkey_broker_connected",
            "1 while the daemon is connected to its MQTT broker, else 0.",
            value=1 if self._link.online else 0,
        )
        dropped = CounterMetricFamily(
            "floatkey_messages_dropped",
            "Inbound messages dropped, by reason (bad signature, oversized, rate limited, ...).",
            labels=["reason"],
        )
        for reason, count in sorted(self._drops.counts.items()):
            dropped.add_metric([reason], count)
        yield dropped
        commands = CounterMetricFamily(
            "floatkey_admin_commands",
            "Admin commands, by action and outcome (ok, or the refusal's reason).",
            labels=["action", "outcome"],
        )
        for (action, outcome), count in sorted(self._admin.commands.items()):
            commands.add_metric([action, outcome], count)
        yield commands
        yield CounterMetricFamily(
            "floatkey_store_write_failures",
            "Database transactions that failed (disk full, locked, ...).",
            value=self._store.write_failures,
        )


def metrics_registry(collector: DaemonCollector) -> CollectorRegistry:
    """A registry of the daemon's own (not prometheus_client's global one) plus process_*."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    ProcessCollector(registry=registry)
    return registry


def bind_metrics_socket(host: str, port: int) -> socket.socket:
    """A listening socket for the endpoint; raise ``ConfigError`` with a sentence."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise ConfigError(
            f"Cannot listen for metrics on {host}:{port}: {exc.strerror or exc}. Check "
            "[metrics] listen."
        ) from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(_MAX_CONNECTIONS)
        sock.setblocking(False)  # noqa: FBT003 - the socket API's own flag
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"Cannot listen for metrics on {host}:{port}: {exc.strerror or exc}. Choose "
            "another port in [metrics] listen, or stop the program that holds it."
        ) from None
    return sock


class MetricsEndpoint:
    """The HTTP endpoint: ``GET /metrics`` on a socket bound by :func:`bind_metrics_socket`."""

    def __init__(self, sock: socket.socket, registry: CollectorRegistry) -> None:
        self._sock = sock
        self._metrics = make_asgi_app(registry)
        self._server: Any = None  # the uvicorn.Server while serving
        self._stopping = False

    @property
    def address(self) -> tuple[str, int]:
        """The address it listens on (the port chosen, for ``listen = "...:0"``)."""
        host, port = self._sock.getsockname()[:2]
        return str(host), int(port)

    async def _app(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        if scope["type"] != "http":
            return  # lifespan is off; nothing else is served
        if scope["path"] != _PATH or scope["method"] not in {"GET", "HEAD"}:
            body = b"Not found: the metrics are at /metrics.\n"
            await send(
                {
                    "type": "http.response.start",
                    "status": 404,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8")],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        await self._metrics(scope, receive, send)

    async def serve(self) -> None:
        """Serve until :meth:`stop`; a failure is logged and ends only the endpoint."""
        import uvicorn  # noqa: PLC0415 - the web server, only when the endpoint is on

        class Server(uvicorn.Server):
            # The daemon owns SIGTERM and SIGINT (it stops in order); uvicorn must not
            # take them over, nor raise them again once it has stopped.
            @contextlib.contextmanager
            def capture_signals(self) -> Iterator[None]:
                yield

        config = uvicorn.Config(
            self._app,
            interface="asgi3",
            lifespan="off",
            log_config=None,
            access_log=False,
            proxy_headers=False,
            server_header=False,
            limit_concurrency=_MAX_CONNECTIONS,
            timeout_graceful_shutdown=2,
        )
        self._server = Server(config)
        self._server.should_exit = self._stopping  # a stop that came before the start
        host, port = self.address
        log.info("metrics endpoint listening", url=f"http://{_url_host(host)}:{port}{_PATH}")
        try:
            await self._server.serve(sockets=[self._sock])
        except Exception:
            log.exception("metrics endpoint failed; the daemon goes on without it")

    def stop(self) -> None:
        """Ask the server to finish the scrapes in hand and stop."""
        self._stopping = True
        if self._server is not None:
            self._server.should_exit = True

    def close(self) -> None:
        """Close the listening socket (after :meth:`serve` returned, or if it never ran)."""
        self._sock.close()


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
