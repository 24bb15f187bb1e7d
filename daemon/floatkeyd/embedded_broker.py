"""The embedded MQTT broker (amqtt), for a server with no broker of its own."""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

__all__ = ["embedded_broker"]


@contextlib.asynccontextmanager
async def embedded_broker(host: str, port: int) -> AsyncIterator[None]:
    """Run an amqtt broker on ``host:port`` (MQTT 3.1.1, anonymous) for the block."""
    from amqtt.broker import Broker  # noqa: PLC0415 - only a daemon without a broker needs it

    for name in ("amqtt", "transitions"):
        logging.getLogger(name).setLevel(logging.ERROR)
    config: dict[str, Any] = {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        "plugins": {
            "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
        },
    }
    broker = Broker(config)
    await broker.start()
    try:
        yield
    finally:
        await broker.shutdown()
