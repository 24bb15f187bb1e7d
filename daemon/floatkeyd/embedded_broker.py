"""The embedded MQTT broker (amqtt), for a server with no broker of its own."""

from __future__ import annotations

import contextlib
import logging
import os
from typing import TYPE_CHECKING, Any

from floatkey.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

__all__ = ["embedded_broker"]


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
async def embedded_broker(host: str, port: int) -> AsyncIterator[None]:
    """Run an amqtt broker on ``host:port`` (MQTT 3.1.1, anonymous) for the block."""
    from amqtt.broker import Broker  # noqa: PLC0415 - only a daemon without a broker needs it
    from amqtt.errors import BrokerError  # noqa: PLC0415

    for name in ("amqtt", "transitions"):
        logging.getLogger(name).setLevel(logging.ERROR)
    config: dict[str, Any] = {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        "plugins": {
            "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
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
