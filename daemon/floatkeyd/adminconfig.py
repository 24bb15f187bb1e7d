"""What floatkeyctl connects with: the daemon's ``floatkeyd.toml``, or an ``admin.toml``.

On the license server, floatkeyctl reads the daemon's own file: its ``[admin_broker]``
login, the server name, the server key from the state directory, and ``admin_key_file``.
On an administrator's own machine there is no daemon config; ``admin.toml`` holds just
what floatkeyctl needs (``config/admin.toml`` is the commented example)::

    server = "licenses"
    admin_key = "admin.key"            # relative to this file; ~ is expanded
    server_key = "ed25519:..."         # optional: `floatkeyctl server-key` prints it
    catalogue = "product.toml"         # optional: feature display names

    [broker]
    host = "licenses.example.com"
    port = 8883
    username = "floatkey-admin"
    password_file = "admin-mqtt-password"

    [broker.tls]
    ca = "ca.pem"

The two are told apart by content (``vendor_public_key`` or ``admin_key``), so
``--config`` takes either.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from floatkey.broker import BrokerOptions  # noqa: TC001 - msgspec reads it at runtime
from floatkey.config import check_server
from floatkey.configfile import load_toml
from floatkey.errors import ConfigError
from floatkey.protocol import Topics
from floatkey.signing import parse_public_key
from floatkeyd.admin_client import find_server_key
from floatkeyd.catalogue import Catalogue, load_catalogue
from floatkeyd.config import EmbeddedBroker, load_config
from floatkeyd.configkind import kind_of, wrong_kind

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

__all__ = ["AdminConfig", "AdminTarget", "load_admin_target"]

_NEEDED = (
    "floatkeyctl needs the daemon's (floatkeyd.toml) or an admin.toml (config/admin.toml "
    "is an example)"
)


class AdminConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Everything in ``admin.toml``."""

    #: The license server's name: its topics live under ``{topic_prefix}/{server}/``.
    server: str
    #: The admin private key (``floatkeyctl admin-key create``).
    admin_key: str
    #: The broker login of administrators (``floatkey-admin``), as the daemon's
    #: ``[admin_broker]``.
    broker: BrokerOptions
    topic_prefix: str = "floatkey"
    #: The server's public key (``ed25519:...``). Without it the key the server publishes
    #: is trusted as it comes.
    server_key: str | None = None
    #: A product catalogue (``product.toml``): display names where the server has none.
    catalogue: str | None = None

    def __post_init__(self) -> None:
        check_server(self.server, self.topic_prefix, self.server_key)


@dataclass(frozen=True)
class AdminTarget:
    """Where floatkeyctl finds the license server, what it signs with and what it trusts."""

    #: The directory the broker's relative paths (password file, TLS files) start from.
    base: Path
    broker: BrokerOptions
    topics: Topics
    admin_key_file: Path | None
    #: The pinned server key; ``None``: trust the one the server publishes.
    server_key: Ed25519PublicKey | None
    catalogue: Catalogue | None
    #: A daemon config without ``[broker]``: floatkeyd serves the broker itself.
    embedded: EmbeddedBroker | None

    @property
    def feature_names(self) -> dict[str, str]:
        """Feature display names from the local catalogue, if there is one."""
        return dict(self.catalogue.features) if self.catalogue else {}


def load_admin_target(path: Path) -> AdminTarget:
    """Read ``path`` as a daemon config or an admin.toml. Raises ``ConfigError``."""
    path = Path(path).absolute()
    kind = kind_of(path)
    if kind == "admin":
        return _from_admin_config(path)
    if kind in {None, "daemon"}:  # unreadable: the daemon's loader says why
        return _from_daemon_config(path)
    if kind == "unknown":
        raise ConfigError(
            f"{path} sets neither vendor_public_key (the daemon's floatkeyd.toml) nor "
            f"admin_key (an admin.toml); {_NEEDED}."
        )
    assert kind is not None
    raise wrong_kind(path, kind, _NEEDED)


def _from_daemon_config(path: Path) -> AdminTarget:
    loaded = load_config(path)
    config = loaded.config
    return AdminTarget(
        base=loaded.base,
        broker=loaded.admin_broker,
        topics=loaded.topics,
        admin_key_file=loaded.admin_key_file,
        server_key=find_server_key(loaded.state_dir),
        catalogue=loaded.catalogue,
        embedded=config.embedded_broker if config.broker is None else None,
    )


def _from_admin_config(path: Path) -> AdminTarget:
    config = load_toml(path, AdminConfig)
    base = path.parent
    if config.broker.tls is not None:
        config.broker.tls.context(base)  # unusable TLS files: refuse now
    return AdminTarget(
        base=base,
        broker=config.broker,
        topics=Topics(config.topic_prefix, config.server),
        admin_key_file=base / Path(config.admin_key).expanduser(),
        server_key=parse_public_key(config.server_key) if config.server_key else None,
        catalogue=(
            load_catalogue(base / Path(config.catalogue).expanduser()) if config.catalogue else None
        ),
        embedded=None,
    )
