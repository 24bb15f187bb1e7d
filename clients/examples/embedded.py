#!/usr/bin/env python3
"""A Python application that embeds ``floatkey.Agent`` instead of running under the supervisor.

From the top of a checkout, after the README's quick start (``scripts/run`` made ``.venv``
and runs the development daemon), with the project's Python:

    .venv/bin/python clients/examples/embedded.py config/agent.dev.toml

It holds a seat while it runs. When the license server asks it to stop (a new license,
an expired one) it saves its work and exits with 75, for the service manager to start
it again; a seat an administrator released ends it with 77, which a unit must not
restart (``RestartPreventExitStatus=77``, as floatkey-agent@.service has), or it would
take the seat straight back. When it is asked to stop itself (SIGTERM
from the service manager, Ctrl-C) it saves its work, gives the seat back at once (not
left to the broker's will and the daemon's grace after it), and exits with 0.

Other exit statuses: 69 no seat, 76 the license server did not answer, 78 a bad agent
config or a server key that is not the pinned one.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

from floatkey import (
    Agent,
    ConfigError,
    FeatureNotLicensed,
    NoAnswer,
    ServerKeyChanged,
    ShutdownReason,
    load_agent_config,
)

EXIT_NO_SEAT, EXIT_RESTART, EXIT_UNREACHABLE, EXIT_RELEASED, EXIT_CONFIG = 69, 75, 76, 77, 78


async def save_work(why: str) -> None:
    """Where a real application would write its documents."""
    print(f"Saving work before stopping ({why}).", flush=True)


async def run(agent: Agent, stop: asyncio.Event) -> int:
    """Use the licensed features until the server or a signal says to stop."""
    if not agent.has_seat:
        print(f"No seat: {agent.denial.message if agent.denial else '?'}")
        return EXIT_NO_SEAT
    print(f"License: {agent.license.status}; features: {sorted(agent.features) or 'none'}")
    print(f"Holding a seat as {agent.client_id}.", flush=True)
    try:
        agent.require("dataflow")
        print("Dataflow is licensed: opening the dataflow editor.")
    except FeatureNotLicensed as exc:
        print(exc.message)

    async def on_shutdown(reason: ShutdownReason) -> None:
        await save_work(reason.code)

    # Runs (bounded by hook_timeout) before the agent releases the seat.
    agent.on_shutdown(on_shutdown)
    told = asyncio.ensure_future(agent.shutdown_requested.wait())
    signalled = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({told, signalled}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        told.cancel()
        signalled.cancel()
    reason = agent.shutdown_requested.reason
    if reason is not None:
        print(f"Stopping: {reason.message}", flush=True)
        return EXIT_RELEASED if reason.code == "seat.revoked" else EXIT_RESTART
    await save_work("asked to stop")
    print("Stopping: releasing the seat.", flush=True)
    return 0  # leaving ``async with`` releases the seat


async def main(config: Path) -> int:
    """Hold a seat, use the licensed features, stop when told to."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Before the agent connects: a signal while it asks for a seat stops it as well.
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with Agent(load_agent_config(config), app="embedded-example") as agent:
            return await run(agent, stop)
    except (ConfigError, ServerKeyChanged) as exc:
        print(f"embedded: {exc.message}", file=sys.stderr)
        return EXIT_CONFIG
    except NoAnswer as exc:
        print(f"embedded: {exc.message}", file=sys.stderr)
        return EXIT_UNREACHABLE
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(Path(sys.argv[1] if len(sys.argv) > 1 else "config/agent.dev.toml"))))
