"""The console's commands: ``floatkeyd console`` and ``floatkeyctl console-user``.

``floatkeyd console [--config FILE]`` serves the console with uvicorn until SIGTERM or
Ctrl-C. ``floatkeyctl console-user add NAME --role admin|viewer`` (the password from
the terminal, or one line of standard input with ``--password-stdin``), ``list`` and
``remove NAME`` edit the accounts file named by ``[console] users_file``.

Both need the ``console`` extra and say so (``ConsoleUnavailable``) without it; this
module itself imports none of its packages, since floatkeyctl's parser is built from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from floatkey.logs import configure_logging
from floatkeyd.config import load_config
from floatkeyd.console import require_packages
from floatkeyd.console.settings import ConsoleSettings, session_secret
from floatkeyd.console.users import MIN_PASSWORD_LENGTH, ROLES, UserStore
from floatkeyd.errors import ConsoleUserError

if TYPE_CHECKING:
    import argparse
    from collections.abc import Iterator

__all__ = ["add_console_user_parser", "run_console_user", "serve"]

log = structlog.get_logger("floatkey-console")


async def serve(config: Path) -> int:
    """Serve the console for the daemon ``config``; return the exit status.

    Raises ``FloatkeyError`` (config, key files, ``ConsoleUnavailable`` without the
    console extra) before listening.
    """
    require_packages()
    # The web stack is imported here only: floatkeyctl console-user does without it.
    import uvicorn  # noqa: PLC0415

    from floatkeyd.console.app import create_app  # noqa: PLC0415

    loaded = load_config(config)
    configure_logging(loaded.config.log_level, loaded.config.log_format)
    settings = ConsoleSettings.from_config(loaded)
    settings.admin_key()  # an unreadable key: refuse now, not at the first page
    secret = session_secret(settings.session_secret_file)
    app = create_app(settings, secret=secret)
    console = settings.console

    class Server(uvicorn.Server):
        # uvicorn would re-raise SIGTERM after its graceful shutdown (the process then
        # dies by the signal); the console stops on it and exits 0, as floatkeyd does.
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    server = Server(
        uvicorn.Config(
            app,
            host=console.host,
            port=console.listen_port,
            ssl_certfile=settings.tls_cert,
            ssl_keyfile=settings.tls_key,
            # Our own log lines (structlog, JSON under systemd), not uvicorn's formats.
            log_config=None,
            access_log=False,
            # The client address is the peer's: a forged X-Forwarded-For must not pass
            # the per-address log-in limit.
            proxy_headers=False,
            server_header=False,
            # Live streams never end on their own: give them 3 s, then close them.
            timeout_graceful_shutdown=3,
        )
    )
    scheme = "https" if settings.https else "http"
    log.info(
        "console starting",
        url=f"{scheme}://{console.host}:{console.listen_port}/",
        users_file=str(settings.users_file),
        accounts=len(UserStore(settings.users_file).users()),
    )
    loop = asyncio.get_running_loop()

    def on_stop(signum: int) -> None:
        if server.should_exit:  # a second signal: close the live streams now
            server.force_exit = True
        log.info("signal received; stopping", signal=signal.Signals(signum).name)
        server.should_exit = True

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_stop, signum)
    await server.serve()
    return 0 if server.started else 1


# --- floatkeyctl console-user ---------------------------------------------------------


def add_console_user_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], default_config: Path
) -> None:
    """Add ``console-user add|list|remove`` to floatkeyctl's commands."""
    parser = commands.add_parser("console-user", help="accounts of the browser console")
    actions = parser.add_subparsers(dest="user_command", required=True, metavar="ACTION")
    add = actions.add_parser("add", help="add an account, or set its role and password")
    add.add_argument("name")
    add.add_argument("--role", choices=ROLES, required=True, help="admin: unlock and release")
    add.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of standard input",
    )
    listing = actions.add_parser("list", help="list the accounts")
    remove = actions.add_parser("remove", help="remove an account (its sessions end)")
    remove.add_argument("name")
    for sub in (add, listing, remove):
        sub.add_argument(
            "--config",
            type=Path,
            default=default_config,
            help=f"the daemon's config file, [console] users_file (default {default_config})",
        )


def run_console_user(args: argparse.Namespace) -> int:
    """Carry out ``floatkeyctl console-user``. Raises ``FloatkeyError``."""
    loaded = load_config(args.config)
    store = UserStore(loaded.path_setting(loaded.config.console.users_file))
    if args.user_command == "list":
        users = store.users()
        if not users:
            print("No console accounts yet: add one with `floatkeyctl console-user add`.")
        for user in users.values():
            print(f"{user.name:<20} {user.role:<8} since {user.created}")
        return 0
    if args.user_command == "remove":
        if not store.remove(args.name):
            raise ConsoleUserError(f"There is no console account {args.name[:40]!r}.")
        print(f"Removed {args.name}; their sessions end at their next request.")
        return 0
    password = _password(read_stdin=args.password_stdin)
    existed = store.add(args.name, args.role, password)
    verb = "Updated" if existed else "Added"
    print(f"{verb} {args.name} ({args.role}) in {store.path}.")
    return 0


def _password(*, read_stdin: bool) -> str:
    if read_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if not sys.stdin.isatty():
        raise ConsoleUserError(
            "No terminal to ask for the password on: pass --password-stdin and give it on "
            "standard input."
        )
    first = getpass.getpass(f"Password (at least {MIN_PASSWORD_LENGTH} characters): ")
    if getpass.getpass("The same password again: ") != first:
        raise ConsoleUserError("The two passwords differ; nothing was changed.")
    return first
