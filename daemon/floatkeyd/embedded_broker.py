"""The embedded MQTT broker (amqtt), for a server with no broker of its own."""

from __future__ import annotations

import contextlib
import logging
import os
from typing import TYPE_CHECKING, Any

from floatkey.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

__all__ = ["EMBEDDED_LOGINS", "embedded_broker"]

#: The embedded broker's logins, the same names as in the shipped Mosquitto config.
EMBEDDED_LOGINS = ("floatkeyd", "floatkey-admin", "floatkey-agent")


class _SnapshotDict(dict[Any, Any]):
    """A dict whose iteration works on a copy.

    amqtt 0.12 iterates its subscription table with ``await`` inside the loop (when a
    client connects, and in every broadcast); a client subscribing meanwhile then
    raises "dictionary changed size during iteration" and the connection or broadcast
    dies. Iterating over a snapshot makes those loops safe without patching amqtt.
    """

    def __iter__(self):  # type: ignore[no-untyped-def]  # noqa: ANN204
        return iter(list(super().keys()))

    def items(self):  # type: ignore[no-untyped-def]  # noqa: ANN202
        return list(super().items())


@contextlib.asynccontextmanager
async def embedded_broker(host: str, port: int, logins: dict[str, str]) -> AsyncIterator[None]:
    """Run an amqtt broker on ``host:port`` (MQTT 3.1.1) for the block.

    ``logins`` maps the usernames of :data:`EMBEDDED_LOGINS` to their passwords: nobody
    else gets in, so a local user who cannot read the passwords in the state directory
    can neither read product keys in an unlock nor forge the daemon's retained messages.
    There is no per-topic ACL: amqtt 0.12's ACL plugin lost messages under the hostile-
    payload test (several thousand stopped reaching the daemon), and every login here
    belongs to the daemon's own user anyway (docs/SECURITY.md).
    """
    from amqtt.broker import Broker  # noqa: PLC0415 - only a daemon without a broker needs it
    from amqtt.errors import BrokerError  # noqa: PLC0415

    from floatkeyd.embedded_logins import digest  # noqa: PLC0415 - imports amqtt

    for name in ("amqtt", "transitions"):
        logging.getLogger(name).setLevel(logging.ERROR)
    config: dict[str, Any] = {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        "plugins": {
            "floatkeyd.embedded_logins.LoginPlugin": {
                "logins": {user: digest(password) for user, password in logins.items()},
            },
        },
    }
    broker = Broker(config)
    broker._subscriptions = _SnapshotDict()  # noqa: SLF001 - see _SnapshotDict
    amqtt_log = logging.getLogger("amqtt.broker")
    amqtt_log.disabled = True  # a failed start is reported below, in one sentence
    try:
        await broker.start()
    except BrokerError as exc:
        cause = exc.__cause__
        why = os.strerror(cause.errno) if isinstance(cause, OSError) and cause.errno else str(exc)
        raise ConfigError(
            f"[embedded_broker] cannot listen on {host}:{port} ({why}). Is another floatkeyd "
            "or an MQTT broker using that port? Stop it, or set another `port`."
        ) from None
    finally:
        amqtt_log.disabled = False
    try:
        yield
    finally:
        await broker.shutdown()
