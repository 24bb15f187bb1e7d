#!/usr/bin/env python3
r"""Flow Designer: an example client application licensed by floatkey.

Start it through the agent, which holds the seat and hands over the license:

    floatkey-agent run --config config/agent.dev.toml --app flowdesigner -- \\
        python3 clients/examples/flowdesigner.py

It shows its File menu with each catalogue feature enabled or disabled by the license,
"edits" a document, and when the agent asks it to stop (SIGTERM: a new license was
activated) it saves the document first.

The features come from ``FLOATKEY_FEATURES``, which anyone can set. Given the agent
config it is deployed with (``--agent-config``, default ``/etc/floatkey/agent.toml``
when that exists), it trusts them only as far as the license file proves them: it
verifies the daemon's signed grant in ``FLOATKEY_LICENSE_FILE`` against the server key
of that config (:func:`floatkey.verify_license_file`), and runs with every feature
disabled, saying why, when that fails. Without an agent config it has no key to check
against and believes the environment, as any program in any language may (see "The
license file" in docs/PROTOCOL.md for what the check can and cannot stop). A real
application would not take the key's location from its command line, where whoever
starts it can name their own server's; the option is for the development setup and the
tests. Apart from that check it uses only the standard library.
"""

from __future__ import annotations

import argparse
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
# Where floatkey-agent@.service reads its config: root's to write, not the user's.
AGENT_CONFIG = Path("/etc/floatkey/agent.toml")


def file_menu(features: set[str]) -> str:
    """The File menu, one line per catalogue feature."""
    lines = ["File", "  New", "  Open..."]
    for key, label in CATALOGUE.items():
        state = "enabled " if key in features else "disabled"
        lines.append(f"  New {label:<10} [{state}]")
    lines += ["  Save", "  Quit"]
    return "\n".join(lines)


def verified_features(agent_config: Path) -> tuple[set[str] | None, str]:
    """The features the license file proves (``None``: it proves nothing), and why.

    Every failure (no file, a forged or stale one, no usable agent config) is a sentence,
    never a traceback.
    """
    try:
        # Imported here: without an agent config the example needs only the standard library.
        from floatkey import FloatkeyError, load_agent_config, verify_license_file  # noqa: PLC0415
        from floatkey.licensefile import trusted_server_key  # noqa: PLC0415
    except ImportError:
        return None, "cannot verify the license: the floatkey package is not installed"
    try:
        server_key = trusted_server_key(load_agent_config(agent_config))
        if server_key is None:
            return None, f"cannot verify the license: {agent_config} names no server key"
        license_file = os.environ.get("FLOATKEY_LICENSE_FILE")
        if not license_file:
            return None, "no license file: Flow Designer was not started by floatkey-agent"
        verified = verify_license_file(license_file, server_key)
    except FloatkeyError as exc:
        return None, exc.message
    return set(verified.features), f"verified, seat of {verified.client_id}"


def main() -> int:
    """Run until SIGTERM; save the document on the way out."""
    parser = argparse.ArgumentParser(description="An example floatkey-licensed application.")
    parser.add_argument(
        "--agent-config",
        type=Path,
        default=AGENT_CONFIG if AGENT_CONFIG.exists() else None,
        help="the floatkey agent config whose server key the license file must be signed by",
    )
    args = parser.parse_args()
    features = {f for f in os.environ.get("FLOATKEY_FEATURES", "").split(",") if f}
    status = os.environ.get("FLOATKEY_STATUS", "unlicensed")
    licensee = os.environ.get("FLOATKEY_LICENSEE") or "nobody yet"
    if args.agent_config is None:
        check = "not verified (no agent config with the license server's key)"
    else:
        proven, check = verified_features(args.agent_config)
        # Only what the daemon signed; without proof, run as if unlicensed.
        features = proven or set()
        if proven is None:
            status, licensee = "not verified", "nobody"
    print(f"Flow Designer — license: {status}, licensed to {licensee}")
    print(f"License check: {check}")
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
