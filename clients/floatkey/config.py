"""The client agent's configuration (``agent.toml``)."""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import msgspec

from floatkey.broker import BrokerOptions
from floatkey.configfile import load_toml
from floatkey.protocol import ANONYMOUS, LOGIN, Topics
from floatkey.signing import parse_public_key

__all__ = [
    "AgentBrokerOptions",
    "AgentConfig",
    "LoadedAgentConfig",
    "check_server",
    "load_agent_config",
]

_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")


def check_server(server: str, topic_prefix: str, server_key: str | None) -> None:
    """The server a client config names (agent.toml, admin.toml); ``ValidationError``."""
    for name, value in (("server", server), ("topic_prefix", topic_prefix)):
        if not _NAME.fullmatch(value):
            raise msgspec.ValidationError(f"{name} must be 1-64 letters, digits, '.', '_' or '-'")
    if server_key is not None:
        try:
            parse_public_key(server_key)
        except ValueError as exc:
            raise msgspec.ValidationError(f"server_key: {exc}") from None


_HOST = re.compile(r"[A-Za-z0-9._-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\]")


# A login that may begin a client id (protocol.CLIENT_ID, without '.' or ':').
_PREFIX = re.compile(r"[A-Za-z0-9_-]{1,64}")

_DEFAULT_HOST = next(f.default for f in msgspec.structs.fields(BrokerOptions) if f.name == "host")


class AgentBrokerOptions(BrokerOptions, kw_only=True):
    """An agent's ``[broker]``: one address (``host``, ``port``), or several (``hosts``).

    ``hosts = ["mq1.example.com", "mq2.example.com:8883"]`` names the nodes of a
    clustered broker (``port`` is the default port). Each agent starts at a node of its
    own (chosen from its client id, so agents sharing one config spread over the nodes),
    and after a failed or lost connection, or a daemon that stopped answering through
    that node, moves to the next, in turn. The login and TLS settings are the same for
    every one.
    """

    # Empty: not set (the default address unless hosts is set; see __post_init__).
    host: str = ""
    hosts: list[str] = msgspec.field(default_factory=list)
    #: Begin the client id with the login and ``-`` (``floatkey-agent-flowdesigner-...``):
    #: the shipped RabbitMQ topic permissions let a login read only the replies to client
    #: ids that begin so (config/rabbitmq/README.md).
    prefix_client_id: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.hosts) > 64:
            raise msgspec.ValidationError("hosts may name at most 64 broker addresses")
        if self.hosts and self.host:
            raise msgspec.ValidationError("set either host or hosts, not both")
        if not self.hosts and not self.host:
            self.host = _DEFAULT_HOST
        for entry in self.hosts:
            _split_address(entry, self.port)

    def addresses(self, client_id: str | None = None) -> list[tuple[str, int]]:
        """Every broker address to try, in order: ``[(host, port), ...]``.

        With ``client_id``, the list starts at an address chosen from it (the same one
        every time for that client, spread evenly over many clients), then goes on in
        the configured order, wrapping round.
        """
        if not self.hosts:
            return [(self.host, self.port)]
        every = [_split_address(entry, self.port) for entry in self.hosts]
        if client_id is None:
            return every
        start = zlib.crc32(client_id.encode()) % len(every)
        return every[start:] + every[:start]

    def at(self, host: str, port: int) -> BrokerOptions:
        """These options for one of :meth:`addresses`."""
        return BrokerOptions(
            host=host,
            port=port,
            username=self.username,
            password=self.password,
            password_file=self.password_file,
            keepalive=self.keepalive,
            tls=self.tls,
        )

    def describe(self) -> str:
        """Every address, ``mqtt://a:1883, mqtt://b:1883`` (one: as ``BrokerOptions``)."""
        return ", ".join(self.at(host, port).describe() for host, port in self.addresses())


def _split_address(entry: str, default_port: int) -> tuple[str, int]:
    """``host``, ``host:port`` or ``[v6]:port`` → ``(host, port)``; ``ValidationError``."""
    host, port = entry, default_port
    head, colon, tail = entry.rpartition(":")
    if colon and ((entry.startswith("[") and head.endswith("]")) or ":" not in head):
        if not tail.isdigit() or not 0 < int(tail) < 65536:
            raise msgspec.ValidationError(f"hosts: {entry!r} has no valid port after ':'")
        host, port = head, int(tail)
    if not _HOST.fullmatch(host):
        raise msgspec.ValidationError(
            f"hosts: {entry!r} is not a host name, an address, or either with ':port'"
        )
    return host.strip("[]"), port


#: Older names of agent.toml keys, still read (a file may not set both names).
_RENAMED = {"request_timeout": "connect_timeout"}


class AgentConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Everything in ``agent.toml``. Times are in seconds."""

    server: str
    broker: AgentBrokerOptions = msgspec.field(default_factory=AgentBrokerOptions)
    topic_prefix: str = "floatkey"
    # The server's public key (ed25519:...). Without it, the key is trusted on first use
    # and pinned in state_file, like SSH's known_hosts.
    server_key: str | None = None
    state_file: str | None = None
    app: str = ""
    # How long the agent waits for the broker and the license server's answer: at start
    # (then floatkey-agent gives up with status 76, which the shipped unit restarts), and
    # for each seat request after that. Its older name, request_timeout, is still read.
    connect_timeout: float = 10.0
    offline_grace: float = 600.0
    # SIGTERM to SIGKILL for floatkey-agent's application; less than hook_timeout.
    shutdown_grace: float = 10.0
    hook_timeout: float = 15.0
    # When every seat is taken, wait in the license server's queue instead of giving up.
    wait_for_seat: bool = False
    # Report the application's activity (Agent.touch, or floatkey-agent --activity-file),
    # so that the server may reclaim the seat when idle, after warning.
    track_activity: bool = False

    def __post_init__(self) -> None:
        if self.broker.username is not None and not LOGIN.fullmatch(self.broker.username):
            raise msgspec.ValidationError(
                "broker.username must be 1-128 letters, digits or . _ : @ - (it is part of "
                "the agent's seat topics, where the broker's ACL checks it)"
            )
        check_server(self.server, self.topic_prefix, self.server_key)
        login = self.broker.username
        if self.broker.prefix_client_id and (login is None or not _PREFIX.fullmatch(login)):
            raise msgspec.ValidationError(
                "broker.prefix_client_id needs a broker.username of 1-64 letters, digits, "
                "'_' or '-' (client ids begin with it)"
            )
        for name in ("connect_timeout", "offline_grace", "shutdown_grace", "hook_timeout"):
            if not 0 < getattr(self, name) <= 86_400:
                raise msgspec.ValidationError(f"{name} must be between 0 and 86400 seconds")
        if self.shutdown_grace >= self.hook_timeout:
            # floatkey-agent stops the application inside a shutdown hook: SIGTERM, the
            # grace, then SIGKILL. A hook cut short by hook_timeout before the SIGKILL
            # left an application that ignores SIGTERM running.
            raise msgspec.ValidationError(
                f"shutdown_grace ({self.shutdown_grace:g} s) must be shorter than "
                f"hook_timeout ({self.hook_timeout:g} s): the application is given "
                "shutdown_grace after SIGTERM, then killed, within the hook_timeout of the "
                f"shutdown hooks. Set hook_timeout to at least {self.shutdown_grace + 5:g} "
                "(shutdown_grace + 5), or lower shutdown_grace"
            )

    def own_client_id(self, client_id: str) -> str:
        """``client_id``, beginning with the login and ``-`` if ``prefix_client_id`` says so."""
        login = self.broker.username
        if not self.broker.prefix_client_id or login is None:
            return client_id
        prefix = f"{login}-"
        if client_id.startswith(prefix):
            return client_id
        return (prefix + client_id)[:128]

    @property
    def topics(self) -> Topics:
        """The server's topics."""
        return Topics(self.topic_prefix, self.server, login=self.broker.username or ANONYMOUS)


@dataclass(frozen=True, slots=True)
class LoadedAgentConfig:
    """A validated agent config and the directory its relative paths start from."""

    config: AgentConfig
    base: Path

    def state_path(self) -> Path:
        """Where pinned server keys are kept."""
        if self.config.state_file:
            return self.base / self.config.state_file
        return Path.home() / ".local" / "state" / "floatkey" / "known_servers.json"


def load_agent_config(path: Path) -> LoadedAgentConfig:
    """Read and validate an agent config file. Raises ``ConfigError``."""
    path = Path(path).absolute()
    config = load_toml(path, AgentConfig, renamed=_RENAMED)
    loaded = LoadedAgentConfig(config=config, base=path.parent)
    if loaded.config.broker.tls is not None:
        loaded.config.broker.tls.context(loaded.base)  # unusable TLS files: refuse now
    return loaded
