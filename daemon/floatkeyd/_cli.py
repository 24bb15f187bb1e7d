"""``floatkeyd``: run the license daemon, and authorize admin keys on the server.

Exit status: 0 stopped cleanly; 1 could not start (config, state, broker port); 2 usage.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import signal
import sys
from pathlib import Path

import structlog

from floatkey.envelope import Signer
from floatkey.errors import FloatkeyError
from floatkey.logs import configure_logging
from floatkey.protocol import now_ms
from floatkey.signing import key_id, parse_public_key, public_key_text
from floatkey.version import version_line
from floatkeyd.config import load_config
from floatkeyd.service import open_daemon
from floatkeyd.statedir import DB_FILE, load_or_create_identity
from floatkeyd.store import Store

DEFAULT_CONFIG = Path("/etc/floatkey/floatkeyd.toml")
log = structlog.get_logger("floatkeyd")
_CONFIG_HELP = f"the daemon's config file (default {DEFAULT_CONFIG})"
#: Collections of the middle generation between two full ones (Python: 10); see _serve.
_GC_FULL_AFTER = 1_000


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="floatkeyd", description="The floatkey license server.")
    parser.add_argument("--version", action="version", version=version_line())
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser("run", help="run the daemon in the foreground (what systemd starts)")
    run.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help=_CONFIG_HELP)
    run.add_argument(
        "--state-dir", type=Path, help="use this state directory instead of the config's"
    )
    run.add_argument(
        "--embedded-port",
        type=int,
        metavar="PORT",
        help="run the embedded broker on this port instead of the config's",
    )
    console = commands.add_parser(
        "console", help="serve the browser console (License Management; docs/CONSOLE.md)"
    )
    console.add_argument(
        "--config",
        type=Path,
        default=DEFAULT_CONFIG,
        help=f"the daemon's config file, whose [console] table it reads (default {DEFAULT_CONFIG})",
    )
    admin = commands.add_parser("admin-key", help="manage the admin keys this server trusts")
    admin_commands = admin.add_subparsers(dest="admin_command", required=True, metavar="ACTION")
    add = admin_commands.add_parser("add", help="authorize an admin public key")
    add.add_argument("public_key", help="ed25519:... as printed by `floatkeyctl admin-key create`")
    add.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help=_CONFIG_HELP)
    remove = admin_commands.add_parser(
        "remove", help="take an admin key back (a running daemon refuses it from then on)"
    )
    remove.add_argument("kid", help="the key id (16 hex digits) as `admin-key list` shows it")
    remove.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help=_CONFIG_HELP)
    listing = admin_commands.add_parser("list", help="list the authorized admin keys")
    listing.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help=_CONFIG_HELP)
    return parser


async def _serve(args: argparse.Namespace) -> int:
    loaded = load_config(args.config, state_dir=args.state_dir, embedded_port=args.embedded_port)
    configure_logging(loaded.config.log_level, loaded.config.log_format)
    # Each message leaves objects alive for a while (replies in flight); promoted by the
    # young collections, they made Python run a full collection, a scan of every lease,
    # every two seconds under load: at 50,000 leases a sixth of the CPU per renewal, and
    # a 70-150 ms pause each (docs/PERFORMANCE.md). The young collections stay as they
    # are (their pauses are short); a full one waits for 1,000 middle ones, not 10.
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, _GC_FULL_AFTER)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_stop(signum: int) -> None:
        if stop.is_set():
            # A second signal: the operator wants out now.
            log.warning("second signal; exiting at once", signal=signal.Signals(signum).name)
            os._exit(1)
        log.info("signal received; stopping", signal=signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_stop, signum)
    async with open_daemon(loaded) as daemon:
        # The reload runs in the daemon's own admin-reload task, which logs its errors.
        loop.add_signal_handler(signal.SIGHUP, daemon.reload)
        await daemon.serve(stop)
    return 0


async def _admin_key(args: argparse.Namespace) -> int:
    loaded = load_config(args.config)
    signer = None
    if args.admin_command in {"add", "remove"}:
        # The server key signs the audit chain's head with the row this adds (made here if
        # the daemon never ran: the daemon then finds and uses it).
        loaded.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        signer = Signer(load_or_create_identity(loaded.state_dir)[0])
    async with await Store.open(loaded.state_dir / DB_FILE, signer) as store:
        if args.admin_command == "list":
            for text in [*loaded.config.admin_keys, *await store.admin_keys()]:
                try:
                    print(f"{key_id(parse_public_key(text))}  {text}")
                except ValueError as exc:  # the daemon skips it too
                    print(f"(damaged, skipped: {exc})  {text[:40]}")
            return 0
        if args.admin_command == "remove":
            if await store.remove_admin_key(args.kid, now_ms()):
                print(f"Removed admin key {args.kid}; the daemon refuses it from its next command.")
                return 0
            configured = {key_id(parse_public_key(t)) for t in loaded.config.admin_keys}
            where = (
                "it is in the config's admin_keys: remove it there and reload the daemon"
                if args.kid in configured
                else "no admin key with that id was added (see `floatkeyd admin-key list`)"
            )
            print(f"floatkeyd: not removed: {where}.", file=sys.stderr)
            return 1
        try:
            key = parse_public_key(args.public_key)
        except ValueError as exc:
            print(f"floatkeyd: {exc}", file=sys.stderr)
            return 2
        text = public_key_text(key)
        added = await store.add_admin_key(key_id(key), text, now_ms())
    print(
        f"{'Authorized' if added else 'Already authorized:'} admin key {key_id(key)}."
        " A running daemon accepts it from its next admin command."
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run ``floatkeyd``; return the exit status."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return asyncio.run(_serve(args))
        if args.command == "console":
            from floatkeyd.console.cli import serve  # noqa: PLC0415 - the web stack, only here

            return asyncio.run(serve(args.config))
        return asyncio.run(_admin_key(args))
    except FloatkeyError as exc:
        print(f"floatkeyd: {exc.message}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"floatkeyd: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
