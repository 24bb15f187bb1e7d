"""The daemon's logic in-process, without a broker: an in-memory link and a settable clock.

The real-broker tests stay (tests/test_daemon.py and the others); these are for logic
that needs exact control of time and ordering (races, expiry, injected failures).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import msgspec

from floatkey import protocol
from floatkey.envelope import Signer, open_envelope
from floatkey.productkey import issue_product_key
from floatkey.signing import key_id, load_private_key, parse_public_key
from floatkeyd.config import load_config
from floatkeyd.service import open_daemon
from floatkeyd.unlockbox import seal_product_key

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from floatkeyd.link import Inbox
    from floatkeyd.service import Daemon

from conftest import CONFIG

NAME, ORG = "Ada Lovelace", "Analytical Engines Ltd"
VENDOR = load_private_key(CONFIG / "dev-vendor.key")
ADMIN = Signer(load_private_key(CONFIG / "dev-admin.key"))


@dataclass
class Published:
    topic: str
    payload: bytes
    retain: bool


@dataclass
class MemoryLink:
    """A :class:`floatkeyd.link.Link` that records what the daemon publishes and sends."""

    published: list[Published] = field(default_factory=list)
    sent: list[tuple[str, bytes]] = field(default_factory=list)
    online: bool = True

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> bool:
        if not self.online:
            return False
        self.published.append(Published(topic, payload, retain))
        return True

    def send(self, topic: str, payload: bytes) -> None:
        self.sent.append((topic, payload))

    async def run(self, inbox: Inbox, stop: asyncio.Event) -> None:
        await inbox.connected()
        await stop.wait()


class Wall:
    """A settable wall clock (Unix ms)."""

    def __init__(self) -> None:
        self.ms = protocol.now_ms()

    def __call__(self) -> int:
        return self.ms

    def jump(self, days: float) -> None:
        self.ms += int(days * 86_400_000)


def product_key(
    seats: int = 10, features: tuple[str, ...] = ("dataflow",), expires: dt.date | None = None
) -> str:
    today = dt.datetime.now(dt.UTC).date()
    return issue_product_key(
        VENDOR,
        name=NAME,
        organization=ORG,
        seats=seats,
        features=features,
        issued=today - dt.timedelta(days=1),
        expires=expires,
    )


def write_config(tmp_path: Path, extra: str = "") -> Path:
    vendor = (CONFIG / "dev-vendor.key.pub").read_text().strip()
    admin = (CONFIG / "dev-admin.key.pub").read_text().strip()
    path = tmp_path / "floatkeyd.toml"
    path.write_text(
        f'server = "core"\nstate_dir = "{tmp_path / "state"}"\n'
        f'vendor_public_key = "{vendor}"\nadmin_keys = ["{admin}"]\n'
        f"lease_seconds = 30\n{extra}\n"
    )
    return path


@contextlib.asynccontextmanager
async def running(
    config: Path, link: MemoryLink, wall: Wall, *, serve: bool = True
) -> AsyncIterator[Daemon]:
    """A daemon on ``link``; with ``serve``, its loops run (stopped at the end)."""
    async with open_daemon(load_config(config), link=link, wall=wall) as daemon:
        if not serve:
            yield daemon
            return
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.serve(stop))
        await daemon.wait_ready()
        try:
            yield daemon
        finally:
            stop.set()
            await task


def trusted(daemon: Daemon) -> dict[str, Ed25519PublicKey]:
    """The daemon's own key, to verify what it published."""
    key = parse_public_key((daemon.loaded.state_dir / "server-identity.key.pub").read_text())
    return {key_id(key): key}


def admin_command(daemon: Daemon, command: protocol.AdminCommand) -> bytes:
    """``command`` signed with the development admin key for the admin topic."""
    topic = daemon.topics.admin_request
    command = msgspec.structs.replace(command, reply_to=command.reply_to or "test-admin")
    if isinstance(command, protocol.AdminUnlock) and command.key:  # as AdminSession does
        unlock_key = daemon.admin.status_report().unlock_key
        sealed = seal_product_key(unlock_key, command.request_id, command.key)
        command = msgspec.structs.replace(command, key="", sealed_key=sealed)
    return ADMIN.seal(topic, protocol.encode(command))


async def ask(
    daemon: Daemon, link: MemoryLink, command: protocol.AdminCommand
) -> protocol.AdminResult:
    """Hand the daemon a signed admin command; return its verified reply."""
    await daemon.handle(daemon.topics.admin_request, admin_command(daemon, command))
    topic = daemon.topics.admin_reply(command.reply_to or "test-admin", command.request_id)
    for item in reversed(link.published):
        if item.topic == topic:
            body = open_envelope(item.payload, topic, trusted(daemon))
            return protocol.decode(body, protocol.AdminResult)
    raise AssertionError(f"no reply to {command.request_id}")


def unlock_command(key: str, request_id: str, ts: int | None = None) -> protocol.AdminUnlock:
    return protocol.AdminUnlock(
        request_id=request_id, name=NAME, organization=ORG, key=key, ts=ts or protocol.now_ms()
    )


def states(daemon: Daemon, link: MemoryLink) -> list[protocol.State]:
    """Every state the daemon published, in order, verified."""
    found = []
    for item in link.published:
        if item.topic == daemon.topics.state:
            body = open_envelope(item.payload, item.topic, trusted(daemon))
            found.append(protocol.decode(body, protocol.State))
    return found
