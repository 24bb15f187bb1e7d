#!/usr/bin/env python3
"""A Python application that embeds ``floatkey.Agent`` instead of running under the supervisor.

python3 clients/examples/embedded.py config/agent.dev.toml
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from floatkey import Agent, FeatureNotLicensed, load_agent_config

if TYPE_CHECKING:
    from floatkey.agent import ShutdownReason


async def main(config: Path) -> int:
    """Hold a seat, use the licensed features, stop when told to."""
    async with Agent(load_agent_config(config), app="embedded-example") as agent:
        if not agent.has_seat:
            print(f"No seat: {agent.denial.message if agent.denial else '?'}")
            return 69
        print(f"License: {agent.license.status}; features: {sorted(agent.features) or 'none'}")
        try:
            agent.require("dataflow")
            print("Dataflow is licensed: opening the dataflow editor.")
        except FeatureNotLicensed as exc:
            print(exc.message)

        async def save_work(reason: ShutdownReason) -> None:
            print(f"Saving work before stopping ({reason.code}).")

        agent.on_shutdown(save_work)
        reason = await agent.shutdown_requested
        print(f"Stopping: {reason.message}")
    return 75


if __name__ == "__main__":
    sys.exit(asyncio.run(main(Path(sys.argv[1] if len(sys.argv) > 1 else "config/agent.dev.toml"))))
