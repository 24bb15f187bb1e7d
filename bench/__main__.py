"""``python -m bench [SCENARIO ...] [--broker mosquitto|rabbitmq|embedded] [--agents N] ...``.

Prints one Markdown table per run (docs/PERFORMANCE.md keeps the latest); exits 1 when an
exactness check fails (never because of a timing: these machines are noisy).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import sys

from bench.harness import Results
from bench.scenarios import checkout, flood, queue_wake, scale, storm, unlock


async def run(args: argparse.Namespace) -> Results:
    runs = []
    for attempt in range(args.repeat):
        if args.repeat > 1:
            print(f"\n## run {attempt + 1} of {args.repeat}\n", flush=True)
        runs.append(await run_once(args))
    return Results.median_of(runs)


async def run_once(args: argparse.Namespace) -> Results:
    combined = Results(args.broker)
    for name in args.scenarios:
        if name == "checkout":
            part = await checkout(
                args.broker, agents=args.agents or 100, rounds=args.rounds, procs=args.procs
            )
        elif name == "storm":
            part = await storm(args.broker, agents=args.agents or 1000, procs=args.procs)
        elif name == "unlock":
            part = await unlock(args.broker, agents=args.agents or 1000, procs=args.procs)
        elif name == "flood":
            part = await flood(args.broker, agents=args.agents or 50)
        elif name == "queue_wake":
            part = await queue_wake(args.broker, seats=(args.agents or 100) // 2)
        else:
            part = await scale(args.broker, leases=args.leases)
        combined.rows += part.rows
        combined.checks |= part.checks
        print(part.table(), flush=True)
    return combined


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "scenarios",
        nargs="*",
        metavar="SCENARIO",
        help="checkout, storm, unlock, scale, flood, queue_wake (default: all six)",
    )
    parser.add_argument(
        "--broker", choices=["mosquitto", "rabbitmq", "embedded"], default="mosquitto"
    )
    parser.add_argument(
        "--agents",
        type=int,
        help="agents (default: 100 checkout and queue_wake, 50 flood, 1000 others)",
    )
    parser.add_argument("--rounds", type=int, default=20, help="checkout rounds per agent")
    parser.add_argument("--leases", type=int, default=50_000, help="scale: leases held")
    parser.add_argument("--procs", type=int, default=2, help="load-generating processes")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run everything N times; the final table shows medians",
    )
    args = parser.parse_args()
    every = ["checkout", "storm", "unlock", "scale", "flood", "queue_wake"]
    unknown = set(args.scenarios) - set(every)
    if unknown:
        parser.error(f"unknown scenario {sorted(unknown)}; choose from {', '.join(every)}")
    args.scenarios = args.scenarios or every
    print(
        f"# floatkey benchmarks — {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, "
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"broker {args.broker}\n",
        flush=True,
    )
    results = asyncio.run(run(args))
    print(
        f"\n## {'medians of ' + str(args.repeat) + ' runs' if args.repeat > 1 else 'result'}"
        f"\n\n{results.table()}"
    )
    return 0 if all(results.checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
