"""``python -m bench.usage_size [--agents 1000]``: what the usage history costs on disk.

A real daemon in-process (its database, seat desk and fold; no broker: the replies go
nowhere) lives one simulated working day of ``--agents`` agents at the default lease
(120 s, renewed every 40 s): one hour of every agent renewing at that interval, to show
renewals add no usage rows; each agent's application starts once between 08:00 and 09:00
and stops once between 17:00 and 18:00 (UTC), a fifth of them restart once at midday,
and 5 % more agents than seats are turned away once in the morning. Then the day is
folded into hourly aggregates. Sizes are SQLite's pages (``dbstat``), per agent per day.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from bench.harness import NAME, ORG, issue_key
from bench.testbed import REPO
from floatkey import protocol
from floatkeyd.config import load_config
from floatkeyd.service import open_daemon

if TYPE_CHECKING:
    from floatkeyd.link import Inbox
    from floatkeyd.service import Daemon

DAY_MS, HOUR_MS = 86_400_000, 3_600_000
RENEW_EVERY_MS = 40_000  # lease_seconds (120) / 3, as the daemon asks the agents


class NoLink:
    """A link that drops what the daemon sends (nothing here reads it)."""

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> bool:  # noqa: ARG002 - the Link protocol
        return True

    def send(self, topic: str, payload: bytes) -> None:  # noqa: ARG002 - the Link protocol
        return

    async def run(self, inbox: Inbox, stop: asyncio.Event) -> None:  # noqa: ARG002 - the Link protocol
        await stop.wait()


class Wall:
    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


def _config(workdir: Path) -> Path:
    vendor = (REPO / "config" / "dev-vendor.key.pub").read_text().strip()
    path = workdir / "floatkeyd.toml"
    path.write_text(
        f'server = "size"\nstate_dir = "{workdir / "state"}"\n'
        f'vendor_public_key = "{vendor}"\n\n[usage]\nkeep_events_days = 1\n'
    )
    return path


def _sizes(database: Path) -> dict[str, int]:
    with contextlib.closing(sqlite3.connect(database)) as db:
        rows = db.execute(
            "SELECT name, sum(pgsize) FROM dbstat WHERE name LIKE 'usage%' GROUP BY name"
        ).fetchall()
        counts = {
            table: db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            for table in ("usage_events", "usage_hours")
        }
    return {str(name): int(size) for name, size in rows} | {
        f"rows:{k}": v for k, v in counts.items()
    }


def _seat(daemon: Daemon, client: str, action: str, body: protocol.msgspec.Struct) -> None:
    daemon.seats.handle("agents", client, action, protocol.encode(body))


async def simulate(agents: int) -> dict[str, float]:
    """One day of ``agents`` agents; the usage tables' bytes per agent per day."""
    rng = random.Random(13)
    workdir = Path(tempfile.mkdtemp(prefix="floatkey-usage-size-"))
    today = time.time_ns() // 1_000_000
    midnight = today - today % DAY_MS
    wall = Wall(midnight)
    seats = agents - agents // 20
    leases: dict[str, str] = {}
    async with open_daemon(load_config(_config(workdir)), link=NoLink(), wall=wall) as daemon:
        await daemon.authority.activate(issue_key(seats), NAME, ORG, "bench")
        # Each agent's day: (when, what) in time order.
        plan: list[tuple[int, str, str]] = []
        for index in range(agents):
            client = f"agent-{index:05}"
            start = midnight + 8 * HOUR_MS + rng.randrange(HOUR_MS)
            stop = midnight + 17 * HOUR_MS + rng.randrange(HOUR_MS)
            plan += [(start, "request", client), (stop, "release", client)]
            if rng.random() < 0.2:
                noon = midnight + 12 * HOUR_MS + rng.randrange(HOUR_MS)
                plan += [(noon, "release", client), (noon + 30_000, "request", client)]
        plan.sort()
        renewals = added = 0
        renew_hour = midnight + 10 * HOUR_MS
        database = workdir / "state" / "floatkeyd.db"
        before = _sizes(database)
        for at, action, client in plan:
            if wall.ms < renew_hour <= at:
                await daemon.seats.flush_step()
                rows = _sizes(database)["rows:usage_events"]
                renewals = await _renew_for_an_hour(daemon, wall, leases)
                added = _sizes(database)["rows:usage_events"] - rows
            wall.ms = max(wall.ms, at)
            _act(daemon, action, client, leases)
        await daemon.seats.flush_step()
        raw = _sizes(database)
        wall.ms = midnight + 2 * DAY_MS + HOUR_MS  # the day is past keep_events_days
        while await daemon.usage.fold():
            pass
        folded = _sizes(database)
    events = raw.get("usage_events", 0) + raw.get("usage_events_at", 0)
    events_before = before.get("usage_events", 0) + before.get("usage_events_at", 0)
    return {
        "agents": agents,
        "seats": seats,
        "renewals in one hour": renewals,
        "usage rows they added": added,
        "event rows in the day": raw["rows:usage_events"],
        "raw event bytes per agent per day": (events - events_before) / agents,
        "hourly aggregate rows for the day": folded["rows:usage_hours"],
        "aggregate bytes per agent per day": folded.get("usage_hours", 0) / agents,
    }


def _act(daemon: Daemon, action: str, client: str, leases: dict[str, str]) -> None:
    if action == "request":
        body = protocol.SeatRequest(
            client=client, nonce="n", app="modeler", user=client, host=client + ".lan", pid=1
        )
        _seat(daemon, client, "request", body)
        lease = daemon.seats.ledger.leases.get(client)
        if lease is not None:
            leases[client] = lease.token
    elif client in leases:
        _seat(
            daemon, client, "release", protocol.SeatRelease(client=client, lease=leases.pop(client))
        )


async def _renew_for_an_hour(daemon: Daemon, wall: Wall, leases: dict[str, str]) -> int:
    """Every held seat renewed every 40 s for an hour; returns how many renewals."""
    count = 0
    end = wall.ms + HOUR_MS
    while wall.ms < end:
        for client, lease in leases.items():
            _seat(daemon, client, "renew", protocol.SeatRenew(client=client, lease=lease))
            count += 1
        await daemon.seats.flush_step()
        wall.ms += RENEW_EVERY_MS
    return count


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.usage_size", description=__doc__)
    parser.add_argument("--agents", type=int, default=1000)
    args = parser.parse_args()
    for name, value in asyncio.run(simulate(args.agents)).items():
        print(f"{name}: {value:g}")


if __name__ == "__main__":
    main()
