#!/usr/bin/env python3
r"""Flow Designer: an example client application licensed by floatkey.

Start it through the agent, which holds the seat and hands over the license:

    floatkey-agent run --config config/agent.dev.toml --app flowdesigner -- \\
        python3 clients/examples/flowdesigner.py

It shows its File menu with each catalogue feature enabled or disabled by the license
(``FLOATKEY_FEATURES``), "edits" a document, and when the agent asks it to stop
(SIGTERM: a new license was activated) it saves the document first. It uses only the
standard library: any program, in any language, can be licensed this way.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

# The product's feature catalogue: the license names which of these are enabled.
CATALOGUE = {
    "dataflow": "Dataflow",
    "workflow": "Workflow",
    "subflow": "Subflow",
    "reporting": "Reporting",
    "scheduler": "Scheduler",
}
DOCUMENT = Path(os.environ.get("FLOWDESIGNER_DOCUMENT", "flowdesigner-document.json"))


def file_menu(features: set[str]) -> str:
    """The File menu, one line per catalogue feature."""
    lines = ["File", "  New", "  Open..."]
    for key, label in CATALOGUE.items():
        state = "enabled " if key in features else "disabled"
        lines.append(f"  New {label:<10} [{state}]")
    lines += ["  Save", "  Quit"]
    return "\n".join(lines)


def main() -> int:
    """Run until SIGTERM; save the document on the way out."""
    features = {f for f in os.environ.get("FLOATKEY_FEATURES", "").split(",") if f}
    status = os.environ.get("FLOATKEY_STATUS", "unlicensed")
    licensee = os.environ.get("FLOATKEY_LICENSEE") or "nobody yet"
    print(f"Flow Designer — license: {status}, licensed to {licensee}")
    print(file_menu(features), flush=True)

    edits = 0
    stopping = False

    def save_and_stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, save_and_stop)
    signal.signal(signal.SIGINT, save_and_stop)
    while not stopping:
        edits += 1
        time.sleep(0.2)
    DOCUMENT.write_text(json.dumps({"edits": edits, "features": sorted(features)}))
    print(f"Saved {edits} edits to {DOCUMENT}; closing.", flush=True)
    license_file = os.environ.get("FLOATKEY_LICENSE_FILE")
    if license_file and Path(license_file).exists():
        reason = json.loads(Path(license_file).read_text()).get("shutdown_requested")
        if reason:
            print(f"Closing because: {reason['message']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
