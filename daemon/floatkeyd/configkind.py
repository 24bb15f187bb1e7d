"""Which floatkey file is this? So that a file given to the wrong command says so.

A license server holds several configuration files that are easily confused: the
daemon's (``floatkeyd.toml``), an administrator's (``admin.toml``), an agent's
(``agent.toml``), the product catalogue (``product.toml``) and Mosquitto's
(``mosquitto.conf`` and its ACL, which are not TOML). They are told apart by what they
contain, never by their names, so that ``floatkeyctl --config agent.toml`` says "this is
an agent configuration" instead of "unknown field 'app'".
"""

from __future__ import annotations

import re
import tomllib
from typing import TYPE_CHECKING, Literal

from floatkey.errors import ConfigError

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["Kind", "kind_of", "wrong_kind"]

Kind = Literal["daemon", "admin", "agent", "catalogue", "mosquitto", "mosquitto_acl", "unknown"]

_DESCRIPTIONS: dict[Kind, str] = {
    "daemon": "the daemon's configuration (floatkeyd.toml)",
    "admin": "an administrator's configuration (admin.toml, floatkeyctl's)",
    "agent": "an agent configuration (floatkey-agent's)",
    "catalogue": "a product catalogue (product.toml)",
    "mosquitto": "a Mosquitto configuration",
    "mosquitto_acl": "a Mosquitto ACL file",
}

# Settings only an agent configuration has (its AgentConfig fields that neither the
# daemon's nor an admin.toml know).
_AGENT_ONLY = frozenset(
    {
        "app",
        "state_file",
        "connect_timeout",
        "request_timeout",  # connect_timeout's older name, still read
        "offline_grace",
        "shutdown_grace",
        "hook_timeout",
    }
)
_MOSQUITTO = re.compile(
    r"^\s*(listener|acl_file|password_file|allow_anonymous|persistence|per_listener_settings"
    r"|certfile|keyfile|set_tcp_nodelay|max_packet_size)\s",
    re.MULTILINE,
)
_MOSQUITTO_ACL = re.compile(r"^\s*(topic|pattern)\s+(read|write|readwrite|deny)\s", re.MULTILINE)


def kind_of(path: Path) -> Kind | None:
    """What kind of file ``path`` is; ``None`` when it cannot be read (the loader says why)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        if _MOSQUITTO.search(text):
            return "mosquitto"
        return "mosquitto_acl" if _MOSQUITTO_ACL.search(text) else "unknown"
    return _toml_kind(data)


def _toml_kind(data: dict[str, object]) -> Kind:
    if "vendor_public_key" in data:
        return "daemon"
    if "admin_key" in data:
        return "admin"
    if isinstance(data.get("product"), dict) and isinstance(data.get("features"), dict):
        return "catalogue"
    return "agent" if _AGENT_ONLY & data.keys() else "unknown"


def wrong_kind(path: Path, kind: Kind, needed: str) -> ConfigError:
    """The error for a file of a known ``kind`` given where ``needed`` says what is wanted."""
    assert kind != "unknown", "an unknown file is reported by its loader"
    return ConfigError(f"{path}: this is {_DESCRIPTIONS[kind]}; {needed}.")
