"""``floatkeyctl``: the administrator's tool — unlock, status, clients, release, audit, admin keys.

``--config`` takes the daemon's own config file: the broker, the server name, the server's
public key (from its state directory, when readable) and, in the development config,
the admin key file all come from it.

Exit status:

== =====================================================================
0  done
1  other errors (configuration, key files, an unknown client, an audit log that is not intact)
2  bad arguments
3  the product key was refused (mistyped, not issued by the vendor, old version, ...)
4  not authorized (admin key not trusted, clock too far off, replayed command)
5  daemon unreachable (no broker, the broker failed or cut the connection, no answer in time)
6  timed out waiting for the clients of the old license to shut down
== =====================================================================
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from floatkey import protocol
from floatkey.errors import ConfigError, FloatkeyError, ProductKeyError
from floatkey.logs import configure_logging
from floatkey.productkey import parse_product_key
from floatkey.signing import create_private_key_file, load_private_key, public_key_text
from floatkey.version import version_line
from floatkeyd.admin_client import AdminSession, DaemonUnreachable, find_server_key
from floatkeyd.config import load_config
from floatkeyd.console.cli import add_console_user_parser, run_console_user

if TYPE_CHECKING:
    from collections.abc import Callable

    from floatkey.protocol import AdminResult, LicenseInfo

DEFAULT_CONFIG = Path("/etc/floatkey/floatkeyd.toml")
EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
EXIT_BAD_KEY, EXIT_NOT_AUTHORIZED, EXIT_UNREACHABLE, EXIT_TIMEOUT = 3, 4, 5, 6


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        type=Path,
        default=DEFAULT_CONFIG,
        help=f"the daemon's config file (default {DEFAULT_CONFIG})",
    )
    common.add_argument(
        "--admin-key", type=Path, help="admin private key (default: admin_key_file from the config)"
    )
    common.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        help="seconds to wait for the daemon's answer (default 10)",
    )
    parser = argparse.ArgumentParser(
        prog="floatkeyctl", description="Administer a floatkey license server."
    )
    parser.add_argument("--version", action="version", version=version_line())
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    unlock = commands.add_parser("unlock", parents=[common], help="activate a product key")
    unlock.add_argument("--name", required=True, help="licensee name, as on the license")
    unlock.add_argument("--organization", required=True, help="organization, as on the license")
    unlock.add_argument(
        "--key",
        default="-",
        help="the product key; '-' (the default) reads it from standard input, which keeps "
        "it out of the process list and the shell history",
    )
    unlock.add_argument(
        "--wait",
        type=float,
        default=60.0,
        help="seconds to wait for old clients to shut down (default 60; 0: don't)",
    )
    unlock.add_argument("--json", action="store_true", help="print JSON")
    for name, text in [
        ("status", "show the license and seat usage"),
        ("clients", "list connected clients"),
    ]:
        sub = commands.add_parser(name, parents=[common], help=text)
        sub.add_argument("--json", action="store_true", help="print JSON")
    audit = commands.add_parser(
        "audit", parents=[common], help="list the audit log, or verify its hash chain"
    )
    audit.add_argument(
        "what", nargs="?", choices=["list", "verify"], default="list", help="(default: list)"
    )
    audit.add_argument("--since", type=dt.date.fromisoformat, help="from this day on (UTC)")
    audit.add_argument("--action", help="only this action (admin.unlock, license.expired, ...)")
    audit.add_argument("--json", action="store_true", help="print JSON")
    release = commands.add_parser("release", parents=[common], help="free a client's seat")
    release.add_argument("client_id")
    release.add_argument("--json", action="store_true", help="print JSON")
    admin = commands.add_parser("admin-key", help="admin keys")
    admin_commands = admin.add_subparsers(dest="admin_command", required=True, metavar="ACTION")
    create = admin_commands.add_parser("create", help="create an admin key pair (0600)")
    create.add_argument("--out", type=Path, required=True, help="private key file to create")
    add_console_user_parser(commands, DEFAULT_CONFIG)
    return parser


_AUDIT_PAGE = 200
_KEY_REASONS = frozenset(cls.reason for cls in ProductKeyError.__subclasses__())
_AUTH_REASONS = frozenset({"not_authorized", "clock_skew", "replayed"})


def _exit_code(reason: str) -> int:
    if reason in _KEY_REASONS:
        return EXIT_BAD_KEY
    return EXIT_NOT_AUTHORIZED if reason in _AUTH_REASONS else EXIT_ERROR


def _describe_license(
    info: LicenseInfo, feature_names: dict[str, str] | None = None
) -> list[tuple[str, str]]:
    names = feature_names or {}
    return [
        ("Licensee", info.licensee),
        ("Organization", info.organization),
        ("Seats", str(info.seats)),
        ("Features", ", ".join(names.get(f, f) for f in info.features) or "(none)"),
        ("Product version", str(info.product_version)),
        ("Serial", info.serial),
        ("Issued", info.issued),
        ("Expires", info.expires or "never"),
    ]


def _table(rows: list[tuple[str, str]]) -> str:
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)


def _when(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _print_json(result: AdminResult) -> None:
    print(json.dumps(msgspec.to_builtins(result), indent=2))


async def _session(args: argparse.Namespace) -> AdminSession:
    loaded = load_config(args.config)
    key_path = args.admin_key or loaded.admin_key_file
    if key_path is None:
        raise ConfigError(
            "No admin key: pass --admin-key FILE (create one with `floatkeyctl admin-key "
            "create`), or set admin_key_file in the config.",
        )
    broker = loaded.admin_broker
    if loaded.config.broker is None and broker.password_file is not None:
        secret = Path(broker.password_file)
        if not secret.exists():  # noqa: ASYNC240 - once, before connecting
            # The embedded broker's logins are made when floatkeyd first starts.
            raise DaemonUnreachable(
                "Cannot reach the MQTT broker: the embedded broker of this config has never "
                f"run (no {secret}). Start floatkeyd with this config first."
            )
    return AdminSession(
        broker,
        loaded.topics,
        load_private_key(key_path),
        base=loaded.base,
        server_key=find_server_key(loaded.state_dir),
        timeout=args.timeout,
    )


async def _wait_for_release(session: AdminSession, told: int, wait: float) -> bool:
    """Poll until the old generation's clients released their seats; live count on a tty."""
    deadline = time.monotonic() + wait
    live = sys.stdout.isatty()
    left = told
    while time.monotonic() < deadline:
        result = await session.send(protocol.AdminStatus(request_id=session.request_id()))
        left = result.status.awaiting_release if result.status else left
        if live:
            print(
                f"\rWaiting for clients to shut down: {told - left}/{told} done ",
                end="",
                flush=True,
            )
        if left == 0:
            break
        await asyncio.sleep(0.25)
    if live:
        print()
    if left == 0:
        print(
            f"All {told} client{'s have' if told != 1 else ' has'} shut down; they can "
            "restart under the new license."
        )
        return True
    print(
        f"{left} of {told} clients have not shut down after {wait:g} s. Their seats expire "
        "on their own; `floatkeyctl clients` lists them."
    )
    return False


def _product_key(given: str) -> str:
    """The key from ``--key``, or from standard input for ``-``.

    On a terminal it prompts and reads lines until they make a whole key (a key pasted
    from an e-mail may be broken over lines) or an empty line; from a pipe, everything.
    """
    if given != "-":
        return given
    if not sys.stdin.isatty():
        return sys.stdin.read()
    print("Product key (paste it, then press Enter):", file=sys.stderr, flush=True)
    lines: list[str] = []
    while True:
        try:
            line = input()
        except EOFError:
            break
        if not line.strip():
            if lines:
                break
            continue
        lines.append(line)
        with contextlib.suppress(ProductKeyError):
            parse_product_key(" ".join(lines))
            break  # a whole key; the daemon checks the rest
    return " ".join(lines)


async def _unlock(args: argparse.Namespace) -> int:
    key = _product_key(args.key)
    if not key.strip():
        print(
            "floatkeyctl: no product key given (--key KEY, or on standard input)", file=sys.stderr
        )
        return EXIT_USAGE
    async with await _session(args) as session:
        result = await session.send(
            protocol.AdminUnlock(
                request_id=session.request_id(),
                name=args.name,
                organization=args.organization,
                key=key,
            )
        )
        if args.json:
            _print_json(result)
        if not result.ok:
            if not args.json:
                print(f"Refused ({result.reason}): {result.message}", file=sys.stderr)
            return _exit_code(result.reason)
        report = result.unlock
        if args.json or report is None:
            return EXIT_OK
        print(result.message)
        print(_table(_describe_license(report.license)))
        if not report.changed:
            return EXIT_OK
        print(f"Clients told to shut down: {report.clients_told}")
        if report.clients_told == 0 or args.wait <= 0:
            return EXIT_OK
        done = await _wait_for_release(session, report.clients_told, args.wait)
        return EXIT_OK if done else EXIT_TIMEOUT


async def _query(
    args: argparse.Namespace,
    make: Callable[[str], protocol.AdminCommand],
) -> AdminResult:
    """Send one command; print the JSON if asked, and the refusal if refused."""
    async with await _session(args) as session:
        result = await session.send(make(session.request_id()))
    if args.json:
        _print_json(result)
    if not result.ok:
        print(f"Refused ({result.reason}): {result.message}", file=sys.stderr)
    return result


async def _status(args: argparse.Namespace) -> int:
    result = await _query(args, lambda rid: protocol.AdminStatus(request_id=rid))
    if not result.ok or result.status is None:
        return _exit_code(result.reason)
    if args.json:
        return EXIT_OK
    status = result.status
    seats = str(status.license.seats) if status.license else "-"
    rows = [("Server", status.server), ("Status", status.status)]
    if status.license:
        rows += _describe_license(status.license, status.feature_names)
    rows += [
        ("Seats in use", f"{status.seats_in_use}/{seats}"),
        ("Unlicensed sessions", str(status.unlicensed_sessions)),
        ("Awaiting shutdown", str(status.awaiting_release)),
        ("Generation", str(status.generation)),
        ("Revision", str(status.revision)),
        ("Server fingerprint", status.fingerprint),
        ("Broker", status.broker),
        (
            "Dropped messages",
            ", ".join(f"{k} {v}" for k, v in sorted(status.dropped.items())) or "none",
        ),
    ]
    print(_table(rows))
    return EXIT_OK


async def _clients(args: argparse.Namespace) -> int:
    result = await _query(args, lambda rid: protocol.AdminClients(request_id=rid))
    if not result.ok or result.clients is None:
        return _exit_code(result.reason)
    if args.json:
        return EXIT_OK
    if not result.clients:
        print("No clients are connected.")
    else:
        _columns(
            (
                "CLIENT",
                "LOGIN",
                "APP",
                "USER",
                "HOST",
                "SEAT",
                "SINCE (UTC)",
                "LEASE EXPIRES (UTC)",
            ),
            [
                (
                    c.client,
                    c.login,
                    c.app,
                    c.user,
                    c.host,
                    "revoked" if c.revoked else ("licensed" if c.licensed else "unlicensed"),
                    _when(c.since),
                    _when(c.expires_at),
                )
                for c in result.clients
            ],
        )
    if result.denials:
        print("\nRecently denied a seat:")
        _columns(
            ("WHEN (UTC)", "CLIENT", "LOGIN", "APP", "USER", "HOST", "REASON"),
            [
                (_when(d.at), d.client, d.login, d.app, d.user, d.host, d.reason)
                for d in result.denials
            ],
        )
    return EXIT_OK


def _columns(header: tuple[str, ...], body: list[tuple[str, ...]]) -> None:
    """Print rows in columns as wide as their widest cell."""
    rows = [header, *body]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


async def _audit(args: argparse.Namespace) -> int:
    """``audit``: the whole log, a page at a time; ``audit verify``: the chain's verdict."""
    async with await _session(args) as session:
        if args.what == "verify":
            result = await session.send(
                protocol.AdminAudit(request_id=session.request_id(), verify=True)
            )
            if args.json:
                _print_json(result)
            if not result.ok or result.verdict is None:
                print(f"Refused ({result.reason}): {result.message}", file=sys.stderr)
                return _exit_code(result.reason)
            if not args.json:
                print(result.verdict.message)
            return EXIT_OK if result.verdict.intact else EXIT_ERROR
        since = (
            int(dt.datetime.combine(args.since, dt.time(), dt.UTC).timestamp() * 1000)
            if args.since
            else 0
        )
        rows: list[protocol.AuditRow] = []
        while True:
            result = await session.send(
                protocol.AdminAudit(
                    request_id=session.request_id(),
                    after_seq=rows[-1].seq if rows else 0,
                    since=since,
                    action=args.action,
                    limit=_AUDIT_PAGE,
                )
            )
            if not result.ok or result.audit is None:
                print(f"Refused ({result.reason}): {result.message}", file=sys.stderr)
                return _exit_code(result.reason)
            rows += result.audit
            if len(result.audit) < _AUDIT_PAGE:
                break
    if args.json:
        print(json.dumps({"audit": [msgspec.to_builtins(row) for row in rows]}, indent=2))
    elif not rows:
        print("The audit log has no such rows.")
    else:
        _columns(
            ("SEQ", "WHEN (UTC)", "ACTOR", "ACTION", "OUTCOME", "REASON", "DETAIL"),
            [
                (str(r.seq), _when(r.ts), r.actor, r.action, r.outcome, r.reason, r.detail)
                for r in rows
            ],
        )
    return EXIT_OK


async def _release(args: argparse.Namespace) -> int:
    result = await _query(
        args,
        lambda rid: protocol.AdminRelease(request_id=rid, client=args.client_id),
    )
    if result.ok and not args.json:
        print(result.message)
    return EXIT_OK if result.ok else _exit_code(result.reason)


def _create_admin_key(args: argparse.Namespace) -> int:
    key = create_private_key_file(args.out)
    print(
        f"Wrote the admin private key to {args.out} (mode 0600). Authorize it on the "
        "server with: floatkeyd admin-key add PUBLIC_KEY",
        file=sys.stderr,
    )
    print(public_key_text(key.public_key()))
    return EXIT_OK


def _embedded_hint(args: argparse.Namespace) -> str:
    """On a config with the embedded broker, the daemon *is* the broker: say so."""
    try:
        loaded = load_config(args.config)
    except FloatkeyError:
        return ""
    if loaded.config.broker is not None:
        return ""
    embedded = loaded.config.embedded_broker
    return (
        f" With this configuration floatkeyd serves the broker itself, on "
        f"{embedded.host}:{embedded.port}: is floatkeyd running (scripts/run, or systemctl "
        "status floatkeyd)?"
    )


def main(argv: list[str] | None = None) -> int:  # noqa: PLR0911 - one exit status per outcome
    """Run ``floatkeyctl``; return the exit status."""
    args = _parser().parse_args(argv)
    # Warnings (an unverifiable answer ignored) go to stderr: stdout is for the answer.
    configure_logging("warning", "console")
    # paho logs a lost connection as an error of its own; floatkeyctl reports every
    # broker failure itself, in one sentence that says what to check.
    logging.getLogger("mqtt").setLevel(logging.CRITICAL)
    runners = {
        "unlock": _unlock,
        "status": _status,
        "clients": _clients,
        "release": _release,
        "audit": _audit,
    }
    try:
        if args.command == "admin-key":
            return _create_admin_key(args)
        if args.command == "console-user":
            return run_console_user(args)
        return asyncio.run(runners[args.command](args))
    except BrokenPipeError:
        # The reader of our output went away (`| head -1`): what was asked was done, so
        # exit as it went, quietly, like other Unix tools (nothing more can be written).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except DaemonUnreachable as exc:
        print(f"floatkeyctl: {exc.message}{_embedded_hint(args)}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except ProductKeyError as exc:  # pragma: no cover - the daemon checks keys, not ctl
        print(f"floatkeyctl: {exc.message}", file=sys.stderr)
        return EXIT_BAD_KEY
    except FloatkeyError as exc:
        print(f"floatkeyctl: {exc.message}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
