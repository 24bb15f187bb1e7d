"""``floatkeyctl``: the administrator's tool — unlock, status, clients, release, audit, usage, keys.

``--config`` takes the daemon's own config file (on the license server: the broker
login of ``[admin_broker]``, the server name, the server's public key from its state
directory and ``admin_key_file``) or an ``admin.toml`` (on an administrator's own
machine; ``floatkeyd.adminconfig``). ``--json`` prints the shapes of
``floatkeyd.ctl_json`` (docs/SCRIPTING.md).

Exit status:

== =====================================================================
0  done
1  other errors (configuration, key files, an unknown client, an audit log that is not intact)
2  bad arguments
3  the product key was refused (mistyped, not issued by the vendor, old version, ...)
4  not authorized (admin key not trusted, clock too far off, replayed command)
5  daemon unreachable (no broker, the broker failed or cut the connection, no answer in time)
6  timed out waiting for the clients of the old license to shut down
7  not activated: the key reduces the license and that was not confirmed (answered no,
   or no terminal to ask on and no ``--yes``); nothing was sent
== =====================================================================
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from floatkey import protocol
from floatkey.cliexit import run_command
from floatkey.errors import PRODUCT_KEY_REASONS, ConfigError, FloatkeyError, ProductKeyError
from floatkey.logs import configure_logging
from floatkey.productkey import parse_product_key
from floatkey.signing import (
    create_private_key_file,
    key_id,
    load_private_key,
    public_key_text,
)
from floatkey.version import version_line
from floatkeyd import ctl_json
from floatkeyd._ctl_text import (
    audit_text,
    change_lines,
    clients_text,
    describe_license,
    shut_down_progress,
    shut_down_verdict,
    status_text,
    table,
    usage_csv,
    usage_sentence,
    usage_text,
)
from floatkeyd.admin_client import AdminSession, DaemonUnreachable
from floatkeyd.adminconfig import AdminTarget, load_admin_target
from floatkeyd.console.cli import add_console_user_parser, run_console_user
from floatkeyd.licensechange import LicenseChange, changes_to_confirm

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine
    from typing import Any, TypeAlias

    from floatkey.protocol import AdminResult

    #: A command that asks the daemon something.
    Runner: TypeAlias = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]

DEFAULT_CONFIG = Path("/etc/floatkey/floatkeyd.toml")
DEFAULT_ADMIN_CONFIG = Path("~/.config/floatkey/admin.toml")
EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
EXIT_BAD_KEY, EXIT_NOT_AUTHORIZED, EXIT_UNREACHABLE, EXIT_TIMEOUT = 3, 4, 5, 6
EXIT_NOT_CONFIRMED = 7

_USAGE_HELP = """\
Seat usage over a period, from the server's own history: per hour, day, week or month
(UTC), the peak of seats in use at once, the average, distinct users, grants, denials,
the time every seat was in use, and how many seats would have served all demand (seats
in use plus requests turned away and still waiting). docs/USAGE.md explains each figure.
"""

_RELEASE_HELP = """\
Free the seat of one connected client, now. The daemon tells its agent that an
administrator released the seat: the application is told to stop (as for a new
license, its shutdown hooks run first), the seat is free for another client at once,
and floatkey-agent exits with status 77, which the shipped floatkey-agent@.service does
not restart (an application restarted at once would take the seat straight back).
"""


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        type=Path,
        help=f"the daemon's config file (floatkeyd.toml) or an admin.toml (default "
        f"{DEFAULT_CONFIG}; where that does not exist, {DEFAULT_ADMIN_CONFIG})",
    )
    common.add_argument(
        "--admin-key",
        type=Path,
        help="admin private key (default: admin_key in admin.toml, admin_key_file in "
        "floatkeyd.toml)",
    )
    common.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        help="seconds to wait for the daemon's answer (default 10)",
    )
    common.add_argument(
        "--json", action="store_true", help="print JSON for scripts (docs/SCRIPTING.md)"
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
    unlock.add_argument(
        "--yes",
        "-y",
        action="store_true",
        help="activate a key that reduces the license (fewer seats, a feature removed, an "
        "earlier expiry, an older key) without asking; without it floatkeyctl asks on a "
        "terminal and refuses elsewhere (exit status 7)",
    )
    commands.add_parser("status", parents=[common], help="show the license and seat usage")
    commands.add_parser("clients", parents=[common], help="list connected clients")
    audit = commands.add_parser(
        "audit", parents=[common], help="list the audit log, or verify its hash chain"
    )
    audit.add_argument(
        "what", nargs="?", choices=["list", "verify"], default="list", help="(default: list)"
    )
    audit.add_argument("--since", type=dt.date.fromisoformat, help="from this day on (UTC)")
    audit.add_argument("--action", help="only this action (admin.unlock, license.expired, ...)")
    usage = commands.add_parser(
        "usage",
        parents=[common],
        help="seat usage over time: peaks, denials, how many seats would have served all",
        description=_USAGE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    usage.add_argument(
        "--since",
        default="30d",
        help="from DAYS ago (30d), HOURS ago (12h), weeks ago (2w), or a UTC day or time "
        "(2026-11-01, 2026-11-01T08:00) (default 30d)",
    )
    usage.add_argument("--until", help="up to this moment, in the same forms (default: now)")
    usage.add_argument(
        "--by",
        choices=["hour", "day", "week", "month"],
        default="day",
        help="bucket size (default day)",
    )
    usage.add_argument(
        "--group", choices=["app", "user", "host"], help="also per application, user or host"
    )
    usage.add_argument(
        "--csv", action="store_true", help="print CSV: one row per bucket (and group)"
    )
    release = commands.add_parser(
        "release",
        parents=[common],
        help="free a client's seat (its application is stopped)",
        description=_RELEASE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    release.add_argument(
        "client_id",
        metavar="CLIENT_ID",
        help="the client, as the CLIENT column of `floatkeyctl clients` shows it",
    )
    commands.add_parser(
        "server-key",
        parents=[common],
        help="print the server's public key and the agent.toml line that pins it",
    )
    admin = commands.add_parser("admin-key", help="admin keys")
    admin_commands = admin.add_subparsers(dest="admin_command", required=True, metavar="ACTION")
    create = admin_commands.add_parser("create", help="create an admin key pair (0600)")
    create.add_argument("--out", type=Path, required=True, help="private key file to create")
    create.add_argument("--json", action="store_true", help="print JSON for scripts")
    add_console_user_parser(commands, DEFAULT_CONFIG)
    return parser


_AUDIT_PAGE = 200
_AUTH_REASONS = frozenset({"not_authorized", "clock_skew", "replayed"})


def _exit_code(reason: str) -> int:
    if reason in PRODUCT_KEY_REASONS:
        return EXIT_BAD_KEY
    return EXIT_NOT_AUTHORIZED if reason in _AUTH_REASONS else EXIT_ERROR


def _config_path(args: argparse.Namespace) -> Path:
    """``--config``, or the default: the daemon's file on the server, else the admin's."""
    if args.config is not None:
        return Path(args.config)
    if DEFAULT_CONFIG.exists():
        return DEFAULT_CONFIG
    admin = DEFAULT_ADMIN_CONFIG.expanduser()
    if admin.exists():
        return admin
    raise ConfigError(
        f"No configuration: neither {DEFAULT_CONFIG} (the daemon's, on the license server) "
        f"nor {admin} (an administrator's admin.toml, see config/admin.toml) exists. "
        "Pass --config FILE."
    )


def _target(args: argparse.Namespace) -> AdminTarget:
    return load_admin_target(_config_path(args))


def _session(args: argparse.Namespace, target: AdminTarget) -> AdminSession:
    key_path = args.admin_key or target.admin_key_file
    if key_path is None:
        raise ConfigError(
            "No admin key: pass --admin-key FILE (create one with `floatkeyctl admin-key "
            "create`), or set admin_key_file in the config.",
        )
    broker = target.broker
    if target.embedded is not None and broker.password_file is not None:
        secret = Path(broker.password_file)
        if not secret.exists():
            # The embedded broker's logins are made when floatkeyd first starts.
            raise DaemonUnreachable(
                "Cannot reach the MQTT broker: the embedded broker of this config has never "
                f"run (no {secret}). Start floatkeyd with this config first."
            )
    return AdminSession(
        broker,
        target.topics,
        load_private_key(key_path),
        base=target.base,
        server_key=target.server_key,
        timeout=args.timeout,
    )


def _refused(args: argparse.Namespace, result: AdminResult) -> int:
    """Say why the daemon refused; return the exit status."""
    if args.json:
        print(ctl_json.dump(ctl_json.failure(result.reason, result.message)))
    print(f"Refused ({result.reason}): {result.message}", file=sys.stderr)
    return _exit_code(result.reason)


def _names(target: AdminTarget, report: protocol.StatusReport | None) -> dict[str, str]:
    """Feature display names: the server's, else the local catalogue's."""
    return target.feature_names | (report.feature_names if report else {})


# --- unlock -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Question:
    """An unlock held back: the key reduces the license, and that must be confirmed."""

    changes: list[LicenseChange]
    names: dict[str, str]


def _unlock(args: argparse.Namespace) -> int:
    """``unlock``: read the key, compare it with the active license, ask if it reduces it.

    The question is asked between two broker sessions, outside the event loop: Ctrl-C
    at the prompt then simply ends floatkeyctl, and no connection idles while a person
    reads.
    """
    key = _product_key(args.key)
    if not key.strip():
        return _failed(
            args, "no_key", "no product key given (--key KEY, or on standard input)", EXIT_USAGE
        )
    target = _target(args)
    outcome = asyncio.run(_unlock_session(args, target, key, confirmed=args.yes))
    if isinstance(outcome, int):
        return outcome
    if not _confirmed(args, outcome):
        return EXIT_NOT_CONFIRMED
    again = asyncio.run(_unlock_session(args, target, key, confirmed=True))
    assert isinstance(again, int)
    return again


def _confirmed(args: argparse.Namespace, question: _Question) -> bool:
    """Show what the key takes away; ask on a terminal, refuse elsewhere."""
    lines = [
        "This key takes something away from the active license:",
        *change_lines(question.changes, question.names),
    ]
    if not sys.stdin.isatty():
        message = (
            "Not activated: this key takes something away from the active license, and "
            "there is no terminal to ask on; nothing was sent. Check that it is the key you "
            "meant, then run the unlock again with --yes."
        )
        if args.json:
            changes = [ctl_json.change_of(c) for c in question.changes]
            refusal = ctl_json.Error(reason="not_confirmed", message=message)
            print(ctl_json.dump(ctl_json.NotConfirmed(error=refusal, changes=changes)))
        print("\n".join(lines), file=sys.stderr)
        print(f"floatkeyctl: {message}", file=sys.stderr)
        return False
    # The question goes to stderr, as the key prompt does: stdout may be a file or --json.
    print("\n".join(lines), file=sys.stderr)
    print("Activate it? [y/N] ", end="", file=sys.stderr, flush=True)
    try:
        answer = input()
    except EOFError:
        answer = ""
    if answer.strip().lower() in {"y", "yes"}:
        return True
    message = "Not activated; nothing was changed."
    if args.json:
        changes = [ctl_json.change_of(c) for c in question.changes]
        refusal = ctl_json.Error(reason="not_confirmed", message=message)
        print(ctl_json.dump(ctl_json.NotConfirmed(error=refusal, changes=changes)))
    print(message, file=sys.stderr)
    return False


async def _unlock_session(
    args: argparse.Namespace, target: AdminTarget, key: str, *, confirmed: bool
) -> int | _Question:
    async with _session(args, target) as session:
        before = await session.send(protocol.AdminStatus(request_id=session.request_id()))
        if not before.ok or before.status is None:
            return _refused(args, before)
        names = _names(target, before.status)
        changes = _changes(args, before.status, key)
        if not confirmed and any(change.reduces for change in changes):
            return _Question(changes, names)
        result = await session.send(
            protocol.AdminUnlock(
                request_id=session.request_id(),
                name=args.name,
                organization=args.organization,
                key=key,
            )
        )
        if not result.ok or result.unlock is None:
            return _refused(args, result)
        report = result.unlock
        if not args.json:
            print(result.message)
            print(table(describe_license(report.license, names)))
        told = report.clients_told if report.changed else 0
        left: int | None = 0
        lost = False  # the broker went away while the shutdowns were followed
        if told and args.wait > 0:
            left = await _wait_for_release(session, told, args.wait, quiet=args.json)
            lost = left is None
        elif told:
            left = None  # --wait 0: not followed, as asked
    if args.json:
        print(
            ctl_json.dump(
                ctl_json.Unlocked(
                    changed=report.changed,
                    message=result.message,
                    license=ctl_json.license_of(report.license, names),
                    changes=[ctl_json.change_of(c) for c in changes],
                    clients_told=told,
                    clients_still_running=left,
                )
            )
        )
    return EXIT_TIMEOUT if left or lost else EXIT_OK


def _changes(
    args: argparse.Namespace, status: protocol.StatusReport, key: str
) -> list[LicenseChange]:
    """What the key changes in the active license, read from the key locally.

    Nothing when there is no active license, or when the key cannot be read or will be
    refused anyway: the daemon then says why, as it always has.
    """
    today = dt.datetime.now(dt.UTC).date()
    return changes_to_confirm(
        status, key, name=args.name, organization=args.organization, today=today
    )


async def _wait_for_release(
    session: AdminSession, told: int, wait: float, *, quiet: bool
) -> int | None:
    """Poll until the old generation's clients released their seats; return how many did not.

    One progress line: rewritten in place on a terminal, printed once at the end
    elsewhere; then one closing line. ``quiet`` (``--json``) prints nothing. ``None``
    when the daemon could no longer be asked: the license *was* activated, which must
    not read as a failed unlock.
    """
    deadline = time.monotonic() + wait
    live = sys.stdout.isatty() and not quiet
    left, shown = told, 0
    while time.monotonic() < deadline:
        try:
            result = await session.send(protocol.AdminStatus(request_id=session.request_id()))
        except DaemonUnreachable as exc:
            if live:
                print()
            print(
                f"floatkeyctl: the license was activated, but the shutdown of the {told} "
                f"old client{'s' if told != 1 else ''} could not be followed ({exc.message}). "
                "`floatkeyctl status` shows how many still run.",
                file=sys.stderr,
            )
            return None
        left = result.status.awaiting_release if result.status else left
        if live:
            line = shut_down_progress(told - left, told)
            print(f"\r{line.ljust(shown)}", end="", flush=True)
            shown = len(line)
        if left == 0:
            break
        await asyncio.sleep(0.25)
    if not quiet:
        if live:
            print()
        else:
            print(shut_down_progress(told - left, told))
        print(shut_down_verdict(told, left, wait))
    return left


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


# --- the read-only commands ------------------------------------------------------------


async def _query(
    args: argparse.Namespace,
    target: AdminTarget,
    make: Callable[[str], protocol.AdminCommand],
) -> AdminResult:
    """Send one command and return the answer."""
    async with _session(args, target) as session:
        return await session.send(make(session.request_id()))


async def _status(args: argparse.Namespace) -> int:
    target = _target(args)
    result = await _query(args, target, lambda rid: protocol.AdminStatus(request_id=rid))
    if not result.ok or result.status is None:
        return _refused(args, result)
    status = result.status
    names = _names(target, status)
    if args.json:
        print(ctl_json.dump(ctl_json.status_of(status, names)))
        return EXIT_OK
    print(status_text(status, names))
    return EXIT_OK


async def _clients(args: argparse.Namespace) -> int:
    result = await _query(args, _target(args), lambda rid: protocol.AdminClients(request_id=rid))
    if not result.ok or result.clients is None:
        return _refused(args, result)
    if args.json:
        print(
            ctl_json.dump(
                ctl_json.clients_of(result.clients, result.denials or [], result.queue or [])
            )
        )
        return EXIT_OK
    print(clients_text(result.clients, result.denials or [], result.queue or []))
    return EXIT_OK


async def _audit(args: argparse.Namespace) -> int:
    """``audit``: the whole log, a page at a time; ``audit verify``: the chain's verdict."""
    async with _session(args, _target(args)) as session:
        if args.what == "verify":
            result = await session.send(
                protocol.AdminAudit(request_id=session.request_id(), verify=True)
            )
            if not result.ok or result.verdict is None:
                return _refused(args, result)
            verdict = result.verdict
            if args.json:
                print(ctl_json.dump(ctl_json.verdict_of(verdict)))
            else:
                print(verdict.message)
            return EXIT_OK if verdict.intact else EXIT_ERROR
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
                return _refused(args, result)
            rows += result.audit
            if len(result.audit) < _AUDIT_PAGE:
                break
    if args.json:
        print(ctl_json.dump(ctl_json.audit_of(rows)))
    else:
        print(audit_text(rows))
    return EXIT_OK


def _moment(text: str, now: dt.datetime, option: str) -> int:
    """``30d``, ``12h``, ``2w`` before ``now``, or a UTC day or time, as Unix ms.

    Raises ``ValueError`` with the sentence to print.
    """
    value = text.strip()
    units = {"h": dt.timedelta(hours=1), "d": dt.timedelta(days=1), "w": dt.timedelta(weeks=1)}
    if value[-1:].lower() in units and value[:-1].isdigit():
        moment = now - int(value[:-1]) * units[value[-1:].lower()]
    else:
        try:
            moment = dt.datetime.fromisoformat(value)
        except ValueError:
            msg = (
                f"{option} {text!r} is neither a time ago (30d, 12h, 2w) nor a UTC day or "
                "time (2026-11-01, 2026-11-01T08:00)."
            )
            raise ValueError(msg) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=dt.UTC)
    return max(0, int(moment.timestamp() * 1000))


async def _usage(args: argparse.Namespace) -> int:
    now = dt.datetime.now(dt.UTC)
    try:
        since = _moment(args.since, now, "--since")
        until = _moment(args.until, now, "--until") if args.until else 0
    except ValueError as exc:
        return _failed(args, "bad_time", str(exc), EXIT_USAGE)
    if until and until <= since:
        return _failed(
            args,
            "bad_range",
            f"--until ({args.until}) must come after --since ({args.since}).",
            EXIT_USAGE,
        )
    result = await _query(
        args,
        _target(args),
        lambda rid: protocol.AdminUsage(
            request_id=rid,
            since=since,
            until=until,
            bucket=args.by,
            group_by=args.group or "none",
        ),
    )
    if not result.ok or result.usage is None:
        return _refused(args, result)
    report = result.usage
    sentence = usage_sentence(report.summary, report.bucket)
    if args.json:
        print(ctl_json.dump(ctl_json.usage_of(report, sentence)))
    elif args.csv:
        print(usage_csv(report))
    else:
        print(usage_text(report, sentence))
    return EXIT_OK


async def _release(args: argparse.Namespace) -> int:
    result = await _query(
        args,
        _target(args),
        lambda rid: protocol.AdminRelease(request_id=rid, client=args.client_id),
    )
    if not result.ok:
        return _refused(args, result)
    if args.json:
        print(ctl_json.dump(ctl_json.Released(client=args.client_id, message=result.message)))
    else:
        print(result.message)
    return EXIT_OK


async def _server_key(args: argparse.Namespace) -> int:
    """The server's public key, as the answer to a signed status proves it to be."""
    target = _target(args)
    async with _session(args, target) as session:
        result = await session.send(protocol.AdminStatus(request_id=session.request_id()))
        key = session.server_key
    if not result.ok or result.status is None:
        return _refused(args, result)
    # The answer was verified with this key; the daemon's own fingerprint must agree.
    assert key is not None, "an answer is verified with the server key"
    fingerprint = key_id(key)
    if fingerprint != result.status.fingerprint:
        return _failed(
            args,
            "untrusted_server_key",
            f"The server says its fingerprint is {result.status.fingerprint}, but its answer "
            f"was signed by {fingerprint}: not printing a key that cannot be trusted.",
            EXIT_ERROR,
        )
    text = public_key_text(key)
    line = f'server_key = "{text}"'
    if args.json:
        print(
            ctl_json.dump(
                ctl_json.ServerKey(
                    server=target.topics.server,
                    public_key=text,
                    fingerprint=fingerprint,
                    agent_config=line,
                )
            )
        )
        return EXIT_OK
    print(
        table(
            [("Server", target.topics.server), ("Public key", text), ("Fingerprint", fingerprint)]
        )
    )
    print(f'Pin it in each agent\'s agent.toml (server = "{target.topics.server}") with:')
    print(line)
    return EXIT_OK


def _create_admin_key(args: argparse.Namespace) -> int:
    key = create_private_key_file(args.out)
    public = key.public_key()
    print(
        f"Wrote the admin private key to {args.out} (mode 0600). Authorize it on the "
        "server with: floatkeyd admin-key add PUBLIC_KEY",
        file=sys.stderr,
    )
    if args.json:
        print(
            ctl_json.dump(
                ctl_json.AdminKeyCreated(
                    public_key=public_key_text(public),
                    key_id=key_id(public),
                    private_key_file=str(args.out),
                )
            )
        )
    else:
        print(public_key_text(public))
    return EXIT_OK


# --- main --------------------------------------------------------------------------------


def _embedded_hint(args: argparse.Namespace) -> str:
    """On a config with the embedded broker, the daemon *is* the broker: say so."""
    try:
        target = _target(args)
    except FloatkeyError:
        return ""
    if target.embedded is None:
        return ""
    return (
        f" With this configuration floatkeyd serves the broker itself, on "
        f"{target.embedded.host}:{target.embedded.port}: is floatkeyd running (scripts/run, "
        "or systemctl status floatkeyd)?"
    )


def _failed(args: argparse.Namespace, reason: str, message: str, status: int) -> int:
    """An error on our side (not the daemon's refusal): a sentence, and JSON if asked."""
    if getattr(args, "json", False):
        print(ctl_json.dump(ctl_json.failure(reason, message)))
    print(f"floatkeyctl: {message}", file=sys.stderr)
    return status


def main(argv: list[str] | None = None) -> int:
    """Run ``floatkeyctl``; return the exit status."""
    args = _parser().parse_args(argv)
    # Warnings (an unverifiable answer ignored) go to stderr: stdout is for the answer.
    configure_logging("warning", "console")
    # paho logs a lost connection as an error of its own; floatkeyctl reports every
    # broker failure itself, in one sentence that says what to check.
    logging.getLogger("mqtt").setLevel(logging.CRITICAL)
    runners: dict[str, Runner] = {
        "status": _status,
        "clients": _clients,
        "release": _release,
        "audit": _audit,
        "usage": _usage,
        "server-key": _server_key,
    }
    return run_command(lambda: _dispatch(args, runners))


def _dispatch(args: argparse.Namespace, runners: dict[str, Runner]) -> int:  # noqa: PLR0911 - one return per outcome
    try:
        if args.command == "admin-key":
            return _create_admin_key(args)
        if args.command == "unlock":
            return _unlock(args)
        if args.command == "console-user":
            return run_console_user(args)
        return asyncio.run(runners[args.command](args))
    except DaemonUnreachable as exc:
        return _failed(args, exc.reason, exc.message + _embedded_hint(args), EXIT_UNREACHABLE)
    except ProductKeyError as exc:  # pragma: no cover - the daemon checks keys, not ctl
        return _failed(args, exc.reason, exc.message, EXIT_BAD_KEY)
    except FloatkeyError as exc:
        return _failed(args, exc.reason, exc.message, EXIT_ERROR)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
