"""The daemon's configuration file (``floatkeyd.toml``).

Relative paths in the file are taken from the directory the file is in, so the
development config works from any working directory.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import msgspec

from floatkey.broker import BrokerOptions
from floatkey.configfile import load_toml
from floatkey.errors import ConfigError
from floatkey.protocol import BORROW_MAX_DAYS, Topics
from floatkey.signing import parse_public_key
from floatkeyd.borrowing import DAY_MS, BorrowRules
from floatkeyd.catalogue import Catalogue, load_catalogue
from floatkeyd.configkind import kind_of, wrong_kind
from floatkeyd.statedir import embedded_password_file

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

__all__ = [
    "BorrowConfig",
    "ConsoleConfig",
    "DaemonConfig",
    "EmbeddedBroker",
    "LicenseSettings",
    "Limits",
    "LoadedConfig",
    "MetricsConfig",
    "UsageConfig",
    "load_config",
]

_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")


class EmbeddedBroker(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The in-process amqtt broker, used when the file has no ``[broker]`` table."""

    host: str = "127.0.0.1"
    port: int = 1883

    def __post_init__(self) -> None:
        # amqtt as embedded here has no logins and no ACL: anyone who reaches it could
        # speak as any agent (docs/SECURITY.md). Loopback only, on purpose.
        if not _is_loopback(self.host):
            raise msgspec.ValidationError(
                "embedded_broker.host must be a loopback address (127.0.0.1, ::1 or "
                "localhost): the embedded broker has no logins and no ACL. For agents on "
                "other machines, run Mosquitto with config/mosquitto.conf and name it in "
                "[broker]"
            )
        if not 0 < self.port < 65536:
            raise msgspec.ValidationError("embedded_broker.port must be between 1 and 65535")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Limits(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``[limits]``: licensed seats one broker login, host or user may hold; 0 for no cap.

    Re-read on SIGHUP (``systemctl reload floatkeyd``); seats already held are kept.
    """

    seats_per_login: int = 0
    seats_per_host: int = 0
    seats_per_user: int = 0

    def __post_init__(self) -> None:
        for name in ("seats_per_login", "seats_per_host", "seats_per_user"):
            if not 0 <= getattr(self, name) <= 100_000:
                raise msgspec.ValidationError(f"limits.{name} must be between 0 and 100000")


class BorrowConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``[borrow]``: lending seats for offline use (``floatkey-agent borrow``); off by default.

    ``max_borrow_days`` is the longest borrow (fractions of a day allowed: 0.5 is 12
    hours); ``max_borrowed`` the most seats borrowed at once (0: no cap but the seats);
    ``keep_on_site`` seats never lent, kept for the computers on the network. Read at
    start.
    """

    enabled: bool = False
    max_borrow_days: float = 7
    max_borrowed: int = 0
    keep_on_site: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.max_borrow_days <= BORROW_MAX_DAYS:
            raise msgspec.ValidationError(
                f"borrow.max_borrow_days must be above 0, at most {BORROW_MAX_DAYS}"
            )
        for name in ("max_borrowed", "keep_on_site"):
            if not 0 <= getattr(self, name) <= 1_000_000:
                raise msgspec.ValidationError(f"borrow.{name} must be between 0 and 1000000")

    @property
    def rules(self) -> BorrowRules:
        """The seat ledger's rules for borrowing."""
        return BorrowRules(
            enabled=self.enabled,
            max_ms=round(self.max_borrow_days * DAY_MS),
            max_borrowed=self.max_borrowed,
            keep_on_site=self.keep_on_site,
        )


class MetricsConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``[metrics]``: the Prometheus endpoint (docs/METRICS.md); off without ``listen``.

    Loopback only unless ``allow_remote``: the figures reveal the site's usage (seats,
    denials, the license's expiry), never a secret, and the endpoint has no log-in.
    """

    #: ``host:port`` (``[::1]:9464`` for IPv6); port 0 takes any free port (tests).
    listen: str | None = None
    allow_remote: bool = False

    def __post_init__(self) -> None:
        if self.listen is None:
            return
        host, port = _host_port(self.listen)
        if not _is_loopback(host) and not self.allow_remote:
            raise msgspec.ValidationError(
                f"metrics.listen {self.listen!r} is not a loopback address: anyone who "
                "reaches it reads the site's seat usage and the license's expiry. Set "
                "metrics.allow_remote = true to serve it on the network (behind a firewall "
                "that lets only Prometheus in)"
            )
        if not 0 <= port < 65536:
            raise msgspec.ValidationError("metrics.listen: the port must be between 0 and 65535")

    @property
    def address(self) -> tuple[str, int] | None:
        """``(host, port)`` to listen on, or ``None`` when the endpoint is off."""
        return None if self.listen is None else _host_port(self.listen)


def _host_port(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit():
        raise msgspec.ValidationError(
            f'metrics.listen {listen!r} must be host:port, such as "127.0.0.1:9464" or "[::1]:9464"'
        )
    return host, int(port)


class LicenseSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``[license]``: when to warn that the license expires (``license.expiring``)."""

    #: Days before the license's last day at which the event goes out, once each.
    warn_days: list[int] = msgspec.field(default_factory=lambda: [30, 7, 1])

    def __post_init__(self) -> None:
        if any(not 0 <= days <= 3650 for days in self.warn_days):
            raise msgspec.ValidationError("license.warn_days must be days between 0 and 3650")
        if len(set(self.warn_days)) != len(self.warn_days):
            raise msgspec.ValidationError("license.warn_days must not name a day twice")
        self.warn_days = sorted(self.warn_days, reverse=True)


class UsageConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``[usage]``: how long the seat usage history is kept (docs/USAGE.md)."""

    #: Raw seat events (exact to the millisecond, distinct users), then folded into hours.
    keep_events_days: int = 90
    #: Hourly aggregates.
    keep_hours_years: int = 5

    def __post_init__(self) -> None:
        if not 1 <= self.keep_events_days <= 3650:
            raise msgspec.ValidationError("usage.keep_events_days must be between 1 and 3650")
        if not 1 <= self.keep_hours_years <= 100:
            raise msgspec.ValidationError("usage.keep_hours_years must be between 1 and 100")
        if self.keep_hours_years * 365 < self.keep_events_days:
            raise msgspec.ValidationError(
                "usage.keep_hours_years must cover at least usage.keep_events_days: the "
                "hours are what the events are folded into"
            )


class ConsoleConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``[console]``: the browser console (``floatkeyd console``), an admin client of the daemon.

    Paths are taken from the config file's directory, with ``$VARS`` expanded (systemd's
    ``${CREDENTIALS_DIRECTORY}`` for the key files).
    """

    host: str = "127.0.0.1"
    #: Default 8443 with TLS, 8080 without.
    port: int | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    #: The console's own admin key (authorize it with ``floatkeyd admin-key add``);
    #: default: the config's ``admin_key_file``.
    admin_key_file: str | None = None
    #: The daemon's public key (``ed25519:...``); default: read from the daemon's state
    #: directory, else the key the daemon publishes (trusted on first use, logged).
    server_key: str | None = None
    #: Host names the console answers to (against DNS rebinding); default: 127.0.0.1,
    #: localhost and ``host``. Name the server's DNS name here when serving HTTPS.
    allowed_hosts: list[str] = msgspec.field(default_factory=list)
    users_file: str = "/var/lib/floatkey-console/users.json"
    session_secret_file: str = "/var/lib/floatkey-console/session-secret"  # noqa: S105 - a path
    session_idle_minutes: int = 30
    session_max_hours: int = 12
    #: Failed log-ins allowed per account and per address within ``login_window_minutes``.
    login_failures_per_account: int = 5
    login_failures_per_address: int = 20
    login_window_minutes: int = 15

    def __post_init__(self) -> None:
        if self.port is not None and not 0 < self.port < 65536:
            raise msgspec.ValidationError("console.port must be between 1 and 65535")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise msgspec.ValidationError(
                "console.tls_cert and console.tls_key go together: give both for HTTPS, or "
                "neither for plain HTTP on a loopback address"
            )
        if self.tls_cert is None and not _is_loopback(self.host):
            raise msgspec.ValidationError(
                "console.host must be a loopback address without TLS: passwords and session "
                "cookies would cross the network in clear. Give console.tls_cert and "
                "console.tls_key to listen on other addresses"
            )
        for name, low, high in [
            ("session_idle_minutes", 1, 24 * 60),
            ("session_max_hours", 1, 7 * 24),
            ("login_failures_per_account", 1, 1000),
            ("login_failures_per_address", 1, 100_000),
            ("login_window_minutes", 1, 24 * 60),
        ]:
            if not low <= getattr(self, name) <= high:
                raise msgspec.ValidationError(f"console.{name} must be between {low} and {high}")
        if self.server_key is not None:
            try:
                parse_public_key(self.server_key)
            except ValueError as exc:
                raise msgspec.ValidationError(f"console.server_key: {exc}") from None

    @property
    def listen_port(self) -> int:
        """The port to listen on: the configured one, else 8443 with TLS and 8080 without."""
        if self.port is not None:
            return self.port
        return 8443 if self.tls_cert else 8080


class DaemonConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Everything in ``floatkeyd.toml``."""

    server: str
    vendor_public_key: str
    state_dir: str = "/var/lib/floatkeyd"
    topic_prefix: str = "floatkey"
    admin_keys: list[str] = msgspec.field(default_factory=list)
    # Used by floatkeyctl on the server, never by the daemon.
    admin_key_file: str | None = None
    #: The product catalogue (``product.toml``): feature display names for administrators.
    catalogue: str | None = None
    broker: BrokerOptions | None = None
    #: How floatkeyctl (and the console) log in to the broker: the administrators' user
    #: (``floatkey-admin``), never the daemon's, which may read and write everything.
    admin_broker: BrokerOptions | None = None
    embedded_broker: EmbeddedBroker = msgspec.field(default_factory=EmbeddedBroker)
    limits: Limits = msgspec.field(default_factory=Limits)
    #: Lending seats for offline use (off by default).
    borrow: BorrowConfig = msgspec.field(default_factory=BorrowConfig)
    #: The Prometheus endpoint (off by default).
    metrics: MetricsConfig = msgspec.field(default_factory=MetricsConfig)
    #: When the daemon warns that the license expires.
    license: LicenseSettings = msgspec.field(default_factory=LicenseSettings)
    usage: UsageConfig = msgspec.field(default_factory=UsageConfig)
    #: The browser console's settings (read by ``floatkeyd console``, not by the daemon).
    console: ConsoleConfig = msgspec.field(default_factory=ConsoleConfig)
    client_id: str | None = None
    lease_seconds: int = 120
    # How long a seat outlives its agent's MQTT will (a broker restart sends every will).
    will_grace_seconds: int = 5
    max_payload: int = 64 * 1024
    max_requests_per_client: int = 20
    #: The most clients that may wait for a seat (0: no queue: every request that finds
    #: the seats taken is denied, as for agents that never ask to wait).
    queue_max: int = 100
    #: The longest a client may wait, in seconds (0: no limit); then ``queue_timeout``.
    queue_max_wait_seconds: int = 0
    #: A seat idle this many seconds is reclaimed (0: never), for agents that report
    #: activity; ``idle_warning`` seconds before, the agent is warned (always: a seat is
    #: reclaimed no earlier than ``idle_warning`` after its warning). At least two and
    #: one renewal intervals (``lease_seconds / 3``) respectively.
    idle_timeout: float = 0
    idle_warning: float = 0
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"

    def _check_queue_and_idle(self) -> None:
        if not 0 <= self.queue_max <= 100_000:
            raise msgspec.ValidationError("queue_max must be between 0 (no queue) and 100000")
        if not 0 <= self.queue_max_wait_seconds <= 30 * 86_400:
            raise msgspec.ValidationError(
                "queue_max_wait_seconds must be between 0 (no limit) and 2592000 (30 days)"
            )
        if not 0 <= self.idle_timeout <= 30 * 86_400:
            raise msgspec.ValidationError(
                "idle_timeout must be between 0 (seats are never reclaimed) and 2592000 seconds"
            )
        if self.idle_timeout and not 0 <= self.idle_warning < self.idle_timeout:
            raise msgspec.ValidationError(
                "idle_warning must be at least 0 and less than idle_timeout (it is how long "
                "before the reclaim the user is warned)"
            )
        renewal = self.lease_seconds / 3  # agents report their activity when they renew
        if self.idle_timeout and self.idle_timeout < 2 * renewal:
            raise msgspec.ValidationError(
                f"idle_timeout ({self.idle_timeout:g} s) must be at least two renewal "
                f"intervals ({2 * renewal:g} s: agents renew every lease_seconds/3 and report "
                "their activity then); raise idle_timeout or lower lease_seconds"
            )
        if self.idle_timeout and self.idle_warning < renewal:
            raise msgspec.ValidationError(
                f"idle_warning ({self.idle_warning:g} s) must be at least one renewal "
                f"interval ({renewal:g} s, lease_seconds/3), or a user who comes back after "
                "the warning cannot reach the server in time; raise idle_warning"
            )

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.server):
            raise msgspec.ValidationError("server must be 1-64 letters, digits, '.', '_' or '-'")
        if not _NAME.fullmatch(self.topic_prefix):
            raise msgspec.ValidationError(
                "topic_prefix must be 1-64 letters, digits, '.', '_' or '-'"
            )
        if not 10 <= self.lease_seconds <= 86_400:
            raise msgspec.ValidationError("lease_seconds must be between 10 and 86400")
        if not 0 <= self.will_grace_seconds <= self.lease_seconds:
            raise msgspec.ValidationError("will_grace_seconds must be between 0 and lease_seconds")
        if not 1024 <= self.max_payload <= 16 * 1024 * 1024:
            raise msgspec.ValidationError("max_payload must be between 1024 and 16777216")
        if not 1 <= self.max_requests_per_client <= 10_000:
            raise msgspec.ValidationError("max_requests_per_client must be between 1 and 10000")
        self._check_queue_and_idle()
        for field, text in [
            ("vendor_public_key", self.vendor_public_key),
            *(("admin_keys", k) for k in self.admin_keys),
        ]:
            try:
                parse_public_key(text)
            except ValueError as exc:
                raise msgspec.ValidationError(f"{field}: {exc}") from None


@dataclass(frozen=True)
class LoadedConfig:
    """A validated config and where it came from."""

    path: Path
    config: DaemonConfig

    @property
    def base(self) -> Path:
        """The directory relative paths are taken from."""
        return self.path.parent

    @property
    def state_dir(self) -> Path:
        """Where the database and the server identity live."""
        return self.base / self.config.state_dir

    @property
    def admin_key_file(self) -> Path | None:
        """The admin private key floatkeyctl uses, if the config names one."""
        return self.base / self.config.admin_key_file if self.config.admin_key_file else None

    def path_setting(self, value: str) -> Path:
        """A path from the file: ``$VARS`` expanded, relative to the file's directory."""
        return self.base / os.path.expandvars(value)

    @cached_property
    def catalogue(self) -> Catalogue | None:
        """The product catalogue the config names, or ``None``. Raises ``ConfigError``."""
        if self.config.catalogue is None:
            return None
        return load_catalogue(self.base / self.config.catalogue)

    @property
    def topics(self) -> Topics:
        """This server's topics."""
        return Topics(self.config.topic_prefix, self.config.server)

    @property
    def broker(self) -> BrokerOptions:
        """Where to connect: the external broker, or the embedded one."""
        if self.config.broker is not None:
            return self.config.broker
        return self._embedded("floatkeyd")

    def _embedded(self, user: str) -> BrokerOptions:
        """The embedded broker, logged in as ``user`` (its password made at first start)."""
        embedded = self.config.embedded_broker
        return BrokerOptions(
            host=embedded.host,
            port=embedded.port,
            username=user,
            password_file=str(embedded_password_file(self.state_dir, user)),
        )

    @property
    def admin_broker(self) -> BrokerOptions:
        """Where and how administrators' tools connect. Raises ``ConfigError``."""
        if self.config.admin_broker is not None:
            return self.config.admin_broker
        if self.config.broker is None:
            return self._embedded("floatkey-admin")
        raise ConfigError(
            f"{self.path}: no [admin_broker] section. floatkeyctl logs in to the broker as "
            "the administrators' user (floatkey-admin in config/mosquitto.passwd), never as "
            "the daemon: add [admin_broker] with its host, port, username and password."
        )

    @property
    def vendor_public_key(self) -> Ed25519PublicKey:
        """The key product keys must be signed with."""
        return parse_public_key(self.config.vendor_public_key)


def load_config(
    path: Path, *, state_dir: Path | None = None, embedded_port: int | None = None
) -> LoadedConfig:
    """Read and validate a daemon config file. Raises ``ConfigError``.

    ``state_dir`` and ``embedded_port`` override the file's (``floatkeyd run`` flags: a
    second development daemon beside ``scripts/run``, as the quick-start test runs).
    """
    path = Path(path).absolute()
    kind = kind_of(path)
    if kind is not None and kind not in {"daemon", "unknown"}:
        # An agent's or floatkeyctl's file: say so, not "unknown field 'app'".
        raise wrong_kind(path, kind, "floatkeyd needs the daemon's (floatkeyd.toml)")
    config = load_toml(path, DaemonConfig)
    if state_dir is not None:
        config = msgspec.structs.replace(config, state_dir=str(Path(state_dir).absolute()))
    if embedded_port is not None:
        try:
            embedded = EmbeddedBroker(host=config.embedded_broker.host, port=embedded_port)
        except msgspec.ValidationError as exc:
            raise ConfigError(f"--embedded-port: {exc}.") from None
        config = msgspec.structs.replace(config, embedded_broker=embedded)
    loaded = LoadedConfig(path=path, config=config)
    if loaded.config.broker is not None and loaded.config.broker.tls is not None:
        loaded.config.broker.tls.context(loaded.base)  # unusable TLS files: refuse now
    _ = loaded.catalogue  # an unreadable catalogue: refuse now, not at the first status
    return loaded
