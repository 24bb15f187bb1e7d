#!/usr/bin/env python3
r"""Flow Designer: an example client application licensed by floatkey (terminal version).

Start it through the agent, which holds the seat and hands over the license:

    floatkey-agent run --config config/agent.dev.toml --app flowdesigner -- \\
        python3 clients/examples/flowdesigner.py

It shows its File menu with each catalogue feature enabled or disabled by the license,
"edits" a document, and when the agent asks it to stop (SIGTERM: a new license was
activated) it saves the document first. Started with ``floatkey-agent run
--activity-file FILE``, it prints the server's warning that an idle seat will be
reclaimed (``Flow Designer notice: Your seat will be released in ...``).
``flowdesigner_tk.py`` beside it is the same application in a window; this one is for
machines without a display.

The document is the user's, kept across restarts: ``--document PATH`` (or
``FLOWDESIGNER_DOCUMENT``), otherwise ``document-N.json`` in the user's data directory
(``$XDG_DATA_HOME/flowdesigner``, by default ``~/.local/share/flowdesigner``). Every
running instance holds a lock on its own N, so two instances never write the same file;
a restarted instance takes the document it had (the one saved under the same
``FLOATKEY_CLIENT_ID``, for an agent given a stable ``--client-id``), or else the first
document no running instance holds — after an unlock that restarts every instance,
each one finds a document and its work in it again.

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

Exit status: 0 when it stopped as asked (SIGTERM, SIGINT) and saved, 1 when it could not
save, 78 when its document is open in another instance (``floatkey-agent@.service``
does not restart it then).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from types import FrameType

# The product's feature catalogue: the license names which of these are enabled.
CATALOGUE = {
    "dataflow": "Dataflow",
    "workflow": "Workflow",
    "subflow": "Subflow",
    "reporting": "Reporting",
    "scheduler": "Scheduler",
}
# Where floatkey-agent@.service reads its config: root's to write, not the user's.
AGENT_CONFIG = Path("/etc/floatkey/agent.toml")
#: The exit status when it cannot run as started: its document is open in another
#: instance, or (the window) there is no display or no Tk. sysexits' EX_CONFIG, which
#: floatkey-agent@.service does not restart.
EXIT_CONFIG = 78
#: The exit status when the work could not be saved.
EXIT_UNSAVED = 1
#: How often the example "edits" its document.
EDIT_INTERVAL_S = 0.2
#: Every this many edits (a second), it looks for an idle warning in the license file.
IDLE_CHECK_EVERY = 5
_MAX_SLOTS = 1000
UNLICENSED_SESSION = "verified, an unlicensed session"


# --- the license ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class License:
    """The license Flow Designer runs under, as far as it can tell."""

    status: str
    licensee: str
    organization: str
    seats: str
    features: frozenset[str]
    #: How the features were checked: a sentence.
    check: str


def verified_features(agent_config: Path) -> tuple[set[str] | None, str]:
    """The features the license file proves (``None``: it proves nothing), and why.

    A genuine unlicensed session proves that there are none (an empty set). Every
    failure (no file, a forged or stale one, no usable agent config) is a sentence,
    never a traceback.
    """
    try:
        # Imported here: without an agent config the example needs only the standard library.
        from floatkey import (  # noqa: PLC0415
            FloatkeyError,
            LicenseFileInvalid,
            load_agent_config,
            verify_license_file,
        )
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
        # Checked after the signature: the license server itself says it has no license.
        unlicensed = isinstance(exc, LicenseFileInvalid) and exc.problem == "unlicensed"
        return (set(), UNLICENSED_SESSION) if unlicensed else (None, exc.message)
    return set(verified.features), f"verified, seat of {verified.client_id}"


def read_license(agent_config: Path | None) -> License:
    """The license from the environment the agent gives, checked against ``agent_config``."""
    features = frozenset(f for f in os.environ.get("FLOATKEY_FEATURES", "").split(",") if f)
    status = os.environ.get("FLOATKEY_STATUS", "unlicensed")
    licensee = os.environ.get("FLOATKEY_LICENSEE") or "nobody yet"
    organization = os.environ.get("FLOATKEY_ORGANIZATION", "")
    seats = os.environ.get("FLOATKEY_SEATS", "")
    if agent_config is None:
        check = "not verified (no agent config with the license server's key)"
    else:
        proven, check = verified_features(agent_config)
        # Only what the daemon signed; without proof, run as if unlicensed.
        features = frozenset(proven or ())
        if proven is None:
            status, licensee, organization, seats = "not verified", "nobody", "", ""
        elif check == UNLICENSED_SESSION:
            status, licensee, organization, seats = "unlicensed", "nobody yet", "", ""
    return License(status, licensee, organization, seats, features, check)


def stop_reason() -> tuple[str, str] | None:
    """Why the agent stopped the application: ``(code, message)``, or ``None``.

    The agent writes it into the license file before it sends SIGTERM; a plain SIGTERM
    (the user, the service manager) leaves none.
    """
    license_file = os.environ.get("FLOATKEY_LICENSE_FILE")
    if not license_file:
        return None
    try:
        reason = json.loads(Path(license_file).read_text()).get("shutdown_requested")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(reason, dict):
        return None
    return str(reason.get("reason", "")), str(reason.get("message", ""))


def idle_warning() -> str | None:
    """The license server's warning that the idle seat will be reclaimed, or ``None``.

    The agent writes it into the license file while it stands (``--activity-file``).
    """
    license_file = os.environ.get("FLOATKEY_LICENSE_FILE")
    if not license_file:
        return None
    try:
        warning = json.loads(Path(license_file).read_text()).get("idle_warning")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(warning, dict):
        return None
    return str(warning.get("message", "")) or None


# --- the document -----------------------------------------------------------------------


class DocumentBusy(Exception):
    """The document is open in another running instance."""

    def __init__(self, path: Path) -> None:
        super().__init__(
            f"The document {path} is open in another Flow Designer; close that one, or give "
            "this one another file with --document PATH."
        )
        self.path = path


def data_directory() -> Path:
    """The user's Flow Designer data directory (XDG base directories)."""
    base = os.environ.get("XDG_DATA_HOME", "")
    # The specification: a relative path in XDG_DATA_HOME is invalid and ignored.
    root = Path(base) if base and Path(base).is_absolute() else Path.home() / ".local" / "share"
    return root / "flowdesigner"


def _lock(path: Path) -> int | None:
    """Hold ``path``'s lock file for as long as this process runs; ``None`` if taken."""
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd  # closed (and so unlocked) by the process's exit


def _saved_client(path: Path) -> str | None:
    with contextlib.suppress(OSError, ValueError, AttributeError):
        client = json.loads(path.read_text()).get("client")
        return client if isinstance(client, str) else None
    return None


@dataclass(frozen=True, slots=True)
class Document:
    """One instance's document: a file no other running instance writes."""

    path: Path
    #: The edits saved in it so far (0 for a new document).
    edits: int

    @classmethod
    def open(cls, explicit: Path | None, client_id: str) -> Document:
        """``explicit``, or this instance's document in :func:`data_directory`.

        Raises ``DocumentBusy`` when ``explicit`` is open in another instance, ``OSError``
        when the directory cannot be made.
        """
        if explicit is not None:
            explicit.parent.mkdir(parents=True, exist_ok=True)
            if _lock(explicit) is None:
                raise DocumentBusy(explicit)
            return cls(explicit, cls._edits(explicit))
        directory = data_directory()
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        slots = [directory / f"document-{n}.json" for n in range(1, _MAX_SLOTS + 1)]
        # The one this client id saved first (a restart with a stable client id).
        mine = [p for p in slots if p.exists() and client_id and _saved_client(p) == client_id]
        for path in [*mine, *slots]:
            if _lock(path) is not None:
                return cls(path, cls._edits(path))
        raise DocumentBusy(directory / "document-N.json")

    @staticmethod
    def _edits(path: Path) -> int:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            edits = json.loads(path.read_text()).get("edits", 0)
            return edits if isinstance(edits, int) and edits >= 0 else 0
        return 0

    def save(self, edits: int, features: frozenset[str], client_id: str) -> None:
        """Write the document whole (a crash leaves the previous version, never half).

        Raises ``OSError`` when it cannot be written.
        """
        content = {"edits": edits, "features": sorted(features), "client": client_id}
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(content) + "\n")
        tmp.replace(self.path)


class StopSignals:
    """SIGTERM and SIGINT, noted (:attr:`received`) for the main loop to act on.

    Installed first thing: the agent may stop the application right after starting it,
    and a signal before the handlers are in place would end it without saving.
    """

    def __init__(self) -> None:
        self.received = False
        signal.signal(signal.SIGTERM, self._note)
        signal.signal(signal.SIGINT, self._note)

    def _note(self, _signum: int, _frame: FrameType | None) -> None:
        self.received = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options both versions of Flow Designer take."""
    parser.add_argument(
        "--agent-config",
        type=Path,
        default=AGENT_CONFIG if AGENT_CONFIG.exists() else None,
        help="the floatkey agent config whose server key the license file must be signed by",
    )
    document = os.environ.get("FLOWDESIGNER_DOCUMENT")
    parser.add_argument(
        "--document",
        type=Path,
        default=Path(document) if document else None,
        help="the document to work on (default: one of the user's own in "
        "$XDG_DATA_HOME/flowdesigner, kept across restarts)",
    )


# --- the terminal version ---------------------------------------------------------------


def file_menu(features: frozenset[str]) -> str:
    """The File menu, one line per catalogue feature."""
    lines = ["File", "  New", "  Open..."]
    for key, label in CATALOGUE.items():
        state = "enabled " if key in features else "disabled"
        lines.append(f"  New {label:<10} [{state}]")
    lines += ["  Save", "  Quit"]
    return "\n".join(lines)


def open_document(path: Path | None, client_id: str) -> Document | None:
    """This instance's document; ``None`` after saying why it cannot be opened."""
    try:
        return Document.open(path, client_id)
    except DocumentBusy as exc:
        print(f"flowdesigner: {exc}", file=sys.stderr)
    except OSError as exc:
        print(f"flowdesigner: cannot open the document: {exc}", file=sys.stderr)
    return None


def main() -> int:
    """Run until SIGTERM; save the document on the way out."""
    parser = argparse.ArgumentParser(description="An example floatkey-licensed application.")
    add_arguments(parser)
    args = parser.parse_args()
    stop = StopSignals()
    client_id = os.environ.get("FLOATKEY_CLIENT_ID", "")
    document = open_document(args.document, client_id)
    if document is None:
        return EXIT_CONFIG
    license_ = read_license(args.agent_config)
    print(f"Flow Designer — license: {license_.status}, licensed to {license_.licensee}")
    print(f"License check: {license_.check}")
    print(f"Document: {document.path} ({document.edits} edits so far)")
    print(file_menu(license_.features), flush=True)

    edits = document.edits
    shown: str | None = None
    while not stop.received:
        edits += 1
        time.sleep(EDIT_INTERVAL_S)
        if edits % IDLE_CHECK_EVERY == 0 and (warning := idle_warning()) != shown:
            shown = warning
            if warning is not None:
                print(f"Flow Designer notice: {warning}", flush=True)
    reason = stop_reason()
    try:
        document.save(edits, license_.features, client_id)
    except OSError as exc:
        print(f"flowdesigner: cannot save {document.path}: {exc}", file=sys.stderr)
        return EXIT_UNSAVED
    print(f"Saved {edits} edits to {document.path}; closing.", flush=True)
    if reason is not None:
        print(f"Closing because: {reason[1]}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
