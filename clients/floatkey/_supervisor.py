"""``floatkey-agent run``: run any program as a licensed client.

::

    floatkey-agent run [--config FILE] [--app NAME] -- COMMAND [ARGS...]
    floatkey-agent borrow --days N [--app NAME] [--config FILE]
    floatkey-agent borrow --status [--config FILE]
    floatkey-agent return [--config FILE]

The agent asks for a seat, then starts COMMAND with the license in its environment
(``FLOATKEY_FEATURES=dataflow,subflow,workflow``, ``FLOATKEY_LICENSEE``, ...) and in a
JSON file (``FLOATKEY_LICENSE_FILE``) it keeps current: rewritten at every license
change and every renewal of the seat, with the daemon's signed grant and renewal in it,
which the application can verify (:func:`floatkey.verify_license_file`), and the
server's warning that the license expires soon (``expiring``; also logged), and, with
``--activity-file``, its warning that the idle seat will be reclaimed
(``idle_warning``). When the application must stop (a new license, expiry, revocation, a
seat lost with none free, the server silent past the offline grace) it sends COMMAND
SIGTERM, then SIGKILL after the shutdown grace, releases the seat and exits with
:data:`EXIT_RESTART`, which ``systemd/floatkey-agent@.service`` restarts. If the agent
itself is killed (even with SIGKILL), Linux sends COMMAND SIGTERM (through util-linux
``setpriv --pdeathsig``): an application never outlives the agent that holds its seat.
Off a terminal COMMAND runs in its own process group, which the agent ends when it
exits, so the application's own children do not outlive it either.

Exit status: COMMAND's own when it exits by itself (128+N when killed by signal N);
75 restart requested (a new license, expiry, a lost seat, the server silent too long);
77 an administrator released the seat (not restarted by the shipped unit); 69 no seat
(all in use, or the license expired); 76 license server unreachable (after
``connect_timeout``; the unit starts it again, so an agent started before its server
finds it once it is up); 78 bad configuration; 2 bad arguments.

``borrow`` takes a seat off the network for ``--days`` (``floatkey.borrow``): while the
token is held, ``run`` starts COMMAND without the server and stops it (75) when the
borrow ends. ``return`` gives it back early. Exit status: 0 done; 69 refused (the
sentence names the limit); 76 license server unreachable; 78 bad configuration;
``borrow --status`` 1 when nothing is borrowed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import structlog

from floatkey import borrow as borrowing
from floatkey.agent import Agent, ExpiryWarning, LicenseView, ShutdownReason
from floatkey.config import LoadedAgentConfig, load_agent_config
from floatkey.errors import BorrowError, ConfigError, NoAnswer, ServerKeyChanged
from floatkey.logs import configure_logging
from floatkey.protocol import (
    BORROW_MAX_DAYS,
    SeatIdleWarning,
)
from floatkey.version import version_line

EXIT_NO_SEAT = 69
EXIT_RESTART = 75
#: An administrator released the seat: systemd must not start the application again
#: (it would take the seat back at once); start it by hand when wanted.
EXIT_RELEASED = 77
EXIT_UNREACHABLE = 76
EXIT_CONFIG = 78
DEFAULT_CONFIG = Path("/etc/floatkey/agent.toml")
_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
# After SIGKILL: how long to wait for the application to be gone (a process stuck in
# uninterruptible I/O dies only when that returns). The wait is bounded whatever happens.
_KILL_WAIT_S = 5.0
_WARNED_POLL_S = 1.0  # the activity file, while an idle warning stands

log = structlog.get_logger("floatkey-agent")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="floatkey-agent", description="Run a program as a licensed floatkey client."
    )
    parser.add_argument("--version", action="version", version=version_line())
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser(
        "run",
        help="hold a seat while running a program",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="exit status: COMMAND's own when it exits by itself (128+N if killed by signal "
        "N);\n  75  stopped for a new license, expiry, a lost seat, or the server silent past "
        "the offline grace\n      (systemd restarts it)\n  77  an administrator released "
        "the seat (not restarted)\n  69  no seat free, or the license expired\n  76  the "
        "broker or the license server did not answer within connect_timeout (agent.toml,\n"
        "      10 s by default); the shipped unit (floatkey-agent@.service) starts it again "
        "after\n      1 s, so an agent started before its license server finds it once it "
        "is up\n  78  bad configuration\n   2  bad arguments",
    )
    run.add_argument(
        "--config",
        type=Path,
        default=DEFAULT_CONFIG,
        help="agent config file (default: %(default)s)",
    )
    run.add_argument("--app", help="application name shown to administrators")
    run.add_argument("--client-id", help="MQTT client id (default: app-host-pid-random)")
    run.add_argument(
        "--wait",
        action="store_true",
        help="when every seat is taken, wait in the server's queue and start the program "
        "once a seat is granted (agent.toml: wait_for_seat)",
    )
    run.add_argument(
        "--activity-file",
        type=Path,
        help="a file the program touches on user input: its modification time is the "
        "program's last activity, so the server may reclaim an idle seat after warning",
    )
    run.add_argument("program", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    borrow = commands.add_parser(
        "borrow",
        help="borrow a seat to run offline (on a laptop away from the network) for days",
        epilog="exit status: 0 borrowed (or, --status, a borrow is held); 1 (--status) "
        "nothing borrowed; 69 refused by the server (the message names the limit); 76 "
        "the license server did not answer; 78 bad configuration",
    )
    borrow.add_argument(
        "--config",
        type=Path,
        default=DEFAULT_CONFIG,
        help="agent config file (default: %(default)s)",
    )
    borrow.add_argument("--app", help="application name shown to administrators")
    what = borrow.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--days",
        type=_days,
        help="how long to borrow the seat, in days (fractions allowed: 0.5 is 12 hours)",
    )
    what.add_argument("--status", action="store_true", help="show what is borrowed and until when")
    give_back = commands.add_parser(
        "return",
        help="give a borrowed seat back early (needs the license server)",
        epilog="exit status: 0 returned (or nothing to return any more); 69 nothing "
        "borrowed; 76 the license server did not answer; 78 bad configuration",
    )
    give_back.add_argument(
        "--config",
        type=Path,
        default=DEFAULT_CONFIG,
        help="agent config file (default: %(default)s)",
    )
    return parser


def _days(text: str) -> float:
    try:
        days = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of days") from None
    if not 0 < days <= BORROW_MAX_DAYS:
        raise argparse.ArgumentTypeError(
            f"give a number of days above 0 and at most {BORROW_MAX_DAYS}"
        )
    return days


def license_environment(agent: Agent, license_file: Path) -> dict[str, str]:
    """The variables COMMAND is started with."""
    view = agent.license
    return {
        "FLOATKEY_STATUS": view.status if agent.licensed else "unlicensed",
        "FLOATKEY_FEATURES": ",".join(sorted(agent.features)),
        "FLOATKEY_LICENSEE": view.licensee or "",
        "FLOATKEY_ORGANIZATION": view.organization or "",
        "FLOATKEY_SEATS": str(view.seats or ""),
        "FLOATKEY_GENERATION": str(agent.generation or 0),
        "FLOATKEY_CLIENT_ID": agent.client_id,
        "FLOATKEY_LICENSE_FILE": str(license_file),
    }


def _license_document(
    agent: Agent, view: LicenseView, idle: SeatIdleWarning | None = None
) -> dict[str, object]:
    reason = agent.shutdown_requested.reason
    seat = agent.signed_seat
    return {
        "status": view.status if agent.licensed else "unlicensed",
        "licensee": view.licensee,
        "organization": view.organization,
        "seats": view.seats,
        "features": sorted(agent.features),
        "generation": agent.generation,
        "server_generation": view.generation,
        "expires": view.expires,
        # The license server's latest warning that the license expires soon, or null.
        "expiring": None
        if agent.expiring is None
        else {
            "days_left": agent.expiring.days_left,
            "expires": agent.expiring.expires,
            "message": agent.expiring.message,
        },
        # The server's warning that the idle seat is reclaimed at reclaim_at (Unix ms)
        # unless the user works on, or null (again null once the activity is reported).
        "idle_warning": None
        if idle is None or not agent.idle_warned
        else {"reclaim_at": idle.reclaim_at, "message": idle.message},
        "shutdown_requested": None
        if reason is None
        else {
            "reason": reason.code,
            "message": reason.message,
        },
        # Everything above is a convenience copy anyone can edit; this is what proves it.
        "signed": seat.section() if seat is not None else None,
        # Running on a borrowed seat: until when (Unix ms), and its signed token.
        "borrowed": None
        if agent.borrowed is None
        else {
            "until": agent.borrowed.ends_at,
            "token": agent.borrowed.envelope,
            "topic": agent.topics.borrow_token(agent.borrowed.token.client),
        },
    }


def _write_license_file(path: Path, document: dict[str, object]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    # 0600: the signed grant holds the seat's lease token (only the application's own
    # user, who could speak as the agent anyway, reads it).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(json.dumps(document, indent=2) + "\n")
    tmp.replace(path)  # atomic: the application never reads half a file


def _keep_license_file(agent: Agent, path: Path) -> None:
    """Write the license file now, and again at every license change and every renewal.

    At every renewal because a verifier refuses a file whose lease has ended. Raises
    ``OSError`` when the first write fails; later failures are logged by the agent.
    """
    idle: list[SeatIdleWarning | None] = [None]

    def rewrite(_change: object) -> None:
        _write_license_file(path, _license_document(agent, agent.license, idle[0]))

    def warn_idle(warning: SeatIdleWarning) -> None:
        idle[0] = warning
        rewrite(warning)

    def warn(warning: ExpiryWarning) -> None:
        log.warning(
            "license expires soon",
            days_left=warning.days_left,
            expires=warning.expires,
            message=warning.message,
        )
        rewrite(warning)

    rewrite(None)
    agent.on_license_change(rewrite)
    agent.on_lease_change(rewrite)
    agent.on_license_expiring(warn)
    agent.on_idle_warning(warn_idle)


def _parent_death_signal() -> list[str]:
    """The command prefix that has Linux send the application SIGTERM when the agent dies.

    Without it, ``kill -9`` of the agent would leave the application running with the
    features of a seat that the will then frees. util-linux ``setpriv`` (Debian's
    essential package) sets the parent-death signal in the child and executes COMMAND;
    ``preexec_fn`` could do the same in Python but is unsafe once the process has threads
    (aiomqtt connects through an executor thread). The signal comes when the *thread*
    that started the child ends: the event loop's, which lives as long as the agent. The
    gap: an agent killed between the fork and setpriv's ``prctl`` leaves the application
    running; under systemd the unit's control group still ends it. Without setpriv (or
    off Linux) there is no such signal: logged, and left to the service manager.
    """
    setpriv = shutil.which("setpriv") if sys.platform.startswith("linux") else None
    if setpriv is None:
        log.warning(
            "setpriv (util-linux) not found: the application will not be stopped if the "
            "agent is killed; run it under systemd (floatkey-agent@.service)"
        )
        return []
    return [setpriv, "--pdeathsig", "SIGTERM", "--"]


def _own_process_group() -> bool:
    """Whether to start the application in a process group of its own.

    So that the agent can end whatever the application leaves behind. Not on a
    terminal: there the application must stay in the terminal's foreground group to
    read from it (a background group is stopped by SIGTTIN), and the shell's job control
    ends the group.
    """
    with contextlib.suppress(OSError, ValueError):
        return not os.isatty(0)
    return True


def _kill(child: asyncio.subprocess.Process, own_group: bool) -> None:
    """SIGKILL the application, and its whole process group when it has its own."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if own_group:
            os.killpg(child.pid, signal.SIGKILL)
        elif child.returncode is None:
            child.kill()


async def _exited_within(child: asyncio.subprocess.Process, seconds: float) -> bool:
    try:
        async with asyncio.timeout(seconds):
            await child.wait()
    except TimeoutError:
        return False
    return True


async def _leave_nothing_behind(child: asyncio.subprocess.Process, own_group: bool) -> None:
    """Nothing of the application outlives the agent.

    Not the application itself, if the agent leaves for another reason (an error, a
    cancellation), nor what it left behind in its own process group.
    """
    running = child.returncode is None
    if running or own_group:
        _kill(child, own_group)
    if running:
        await _exited_within(child, _KILL_WAIT_S)


async def _stop_child(child: asyncio.subprocess.Process, grace: float, own_group: bool) -> None:
    """SIGTERM; after ``grace`` seconds SIGKILL; then wait at most ``_KILL_WAIT_S``."""
    if child.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        child.send_signal(signal.SIGTERM)
    if await _exited_within(child, grace):
        return
    log.warning("application ignored SIGTERM; killing it", pid=child.pid, grace_s=grace)
    _kill(child, own_group)
    if not await _exited_within(child, _KILL_WAIT_S):
        log.error("application still running after SIGKILL; giving up on it", pid=child.pid)


def _status(code: int) -> int:
    return 128 - code if code < 0 else code


async def supervise(agent: Agent, program: list[str], workdir: Path) -> int:
    """Run ``program`` under ``agent``'s seat; return the exit status.

    Raises ``FileNotFoundError`` when ``program`` cannot be found.
    """
    if shutil.which(program[0]) is None:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), program[0])
    license_file = workdir / "license.json"
    _keep_license_file(agent, license_file)
    own_group = _own_process_group()
    child = await asyncio.create_subprocess_exec(
        *_parent_death_signal(),
        *program,
        env={**os.environ, **license_environment(agent, license_file)},
        process_group=0 if own_group else None,
    )
    log.info(
        "application started",
        pid=child.pid,
        client=agent.client_id,
        features=sorted(agent.features),
        licensed=agent.licensed,
    )
    grace = agent.config.shutdown_grace
    stopping: asyncio.Task[None] | None = None

    def stop_child() -> asyncio.Task[None]:
        """The one stop of the application: the hook starts it, or supervise does."""
        nonlocal stopping
        if stopping is None:
            stopping = asyncio.create_task(
                _stop_child(child, grace, own_group), name="floatkey-agent-stop-application"
            )
        return stopping

    async def stop_application(reason: ShutdownReason) -> None:
        try:
            _write_license_file(license_file, _license_document(agent, agent.license))
        except OSError as exc:  # the application is stopped all the same
            log.error("cannot update the license file", error=exc.strerror or str(exc))
        log.warning("stopping the application", reason=reason.code, message=reason.message)
        # Shielded: if hook_timeout cuts this hook short, the stop goes on, and
        # supervise waits for it.
        await asyncio.shield(stop_child())

    agent.on_shutdown(stop_application)
    loop = asyncio.get_running_loop()
    for signum in _FORWARDED:
        loop.add_signal_handler(signum, _forward, child, signum)
    exited = asyncio.ensure_future(child.wait())
    stop = asyncio.ensure_future(agent.shutdown_requested.wait())
    try:
        await asyncio.wait({exited, stop}, return_when=asyncio.FIRST_COMPLETED)
        if agent.shutdown_requested.is_set():
            await stop_child()  # bounded: the grace, then SIGKILL and a bounded wait
            reason = agent.shutdown_requested.reason
            print(f"floatkey-agent: {reason.message if reason else 'stopping'}", file=sys.stderr)
            if reason is not None and reason.code == "seat.revoked":
                return EXIT_RELEASED
            return EXIT_RESTART
        return _status(exited.result())
    finally:
        stop.cancel()
        exited.cancel()
        for signum in _FORWARDED:
            loop.remove_signal_handler(signum)
        await _leave_nothing_behind(child, own_group)


def _forward(child: asyncio.subprocess.Process, signum: int) -> None:
    if child.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signum)


async def _run(args: argparse.Namespace, program: list[str]) -> int:
    loaded = load_agent_config(args.config)
    agent = Agent(
        loaded,
        app=args.app,
        client_id=args.client_id,
        wait_for_seat=True if args.wait else None,
        track_activity=True if args.activity_file else None,
    )
    try:
        async with agent:
            _say_borrow(agent)
            if agent.queued is not None:
                print(
                    f"floatkey-agent: all {agent.queued.seats} seats are in use; waiting in "
                    f"line, position {agent.queued.position}.",
                    file=sys.stderr,
                )
                await agent.wait_for_grant()
            if not agent.has_seat:
                denial = agent.denial
                print(
                    f"floatkey-agent: {denial.message if denial else 'No seat.'}", file=sys.stderr
                )
                return EXIT_NO_SEAT
            if not agent.licensed:
                print(
                    "floatkey-agent: the license server is not licensed yet; running "
                    "without features until a product key is entered.",
                    file=sys.stderr,
                )
            if args.activity_file is not None:
                _follow_activity(agent, args.activity_file)
            with tempfile.TemporaryDirectory(prefix="floatkey-agent-") as workdir:
                return await supervise(agent, program, Path(workdir))
    except NoAnswer as exc:
        _say_borrow(agent)
        print(f"floatkey-agent: {exc.message}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except ServerKeyChanged as exc:
        print(f"floatkey-agent: {exc.message}", file=sys.stderr)
        return EXIT_CONFIG


def _say_borrow(agent: Agent) -> None:
    """Say on standard error that the agent runs on a borrowed seat, or why not."""
    if agent.borrow_problem is not None:
        print(f"floatkey-agent: {agent.borrow_problem.message}", file=sys.stderr)
    held = agent.borrowed
    if held is not None:
        print(
            f"floatkey-agent: running on the seat borrowed from {agent.config.server!r} until "
            f"{borrowing.when(held.ends_at)}, without the license server.",
            file=sys.stderr,
        )


async def _borrow(loaded: LoadedAgentConfig, args: argparse.Namespace) -> int:
    if args.status:
        return _borrow_status(loaded)
    held = await borrowing.borrow_seat(loaded, days=args.days, app=args.app or loaded.config.app)
    token = held.token
    print(
        f"Borrowed a seat from {loaded.config.server!r} until {borrowing.when(held.ends_at)} "
        f"(features: {', '.join(sorted(token.features)) or 'none'}). floatkey-agent run "
        "works without the license server until then; floatkey-agent return gives it back "
        "early."
    )
    return 0


def _borrow_status(loaded: LoadedAgentConfig) -> int:
    held = borrowing.held_borrow(loaded)
    if held is None:
        print(f"Nothing is borrowed from {loaded.config.server!r}.")
        return 1
    token = held.token
    print(
        f"Borrowed from {loaded.config.server!r} until {borrowing.when(held.ends_at)}: "
        f"features {', '.join(sorted(token.features)) or 'none'}, licensee "
        f"{token.licensee!r} ({token.organization}), host {token.host!r}, user "
        f"{token.user!r}, client {token.client}."
    )
    return 0


async def _return(loaded: LoadedAgentConfig) -> int:
    print(await borrowing.return_seat(loaded))
    return 0


def _borrowing_command(args: argparse.Namespace) -> int:
    """``floatkey-agent borrow`` and ``floatkey-agent return``."""
    try:
        loaded = load_agent_config(args.config)
        if args.command == "return":
            return asyncio.run(_return(loaded))
        return asyncio.run(_borrow(loaded, args))
    except ConfigError as exc:
        print(f"floatkey-agent: {exc.message}", file=sys.stderr)
        return EXIT_CONFIG
    except NoAnswer as exc:
        print(f"floatkey-agent: {exc.message}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except BorrowError as exc:
        print(f"floatkey-agent: {exc.message}", file=sys.stderr)
        return EXIT_NO_SEAT


def _follow_activity(agent: Agent, path: Path) -> None:
    """The program's activity is the modification time of ``path`` (it touches the file).

    Read just before every renewal is sent (so the renewal carries it), and about every
    second while an idle warning stands, so that a touch before ``reclaim_at`` reaches
    the server in time. The warning is printed to standard error, where a supervised
    program's user may see it.
    """
    touched = [0.0]
    watching: set[asyncio.Task[None]] = set()

    def check() -> None:
        try:
            mtime = path.stat().st_mtime
        except OSError:
            return
        if mtime > touched[0]:
            touched[0] = mtime
            agent.touch(ago=time.time() - mtime)

    async def watch_while_warned() -> None:
        while agent.idle_warned and agent.has_seat:
            await asyncio.sleep(_WARNED_POLL_S)
            check()

    def warn(warning: SeatIdleWarning) -> None:
        check()
        if agent.idle_warned:
            print(f"floatkey-agent: {warning.message}", file=sys.stderr)
            if not watching:
                task = asyncio.get_running_loop().create_task(watch_while_warned())
                watching.add(task)
                task.add_done_callback(watching.discard)

    agent.on_activity_report(check)
    agent.on_idle_warning(warn)


def main(argv: list[str] | None = None) -> int:
    """Run ``floatkey-agent``; return the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command in {"borrow", "return"}:
        configure_logging(os.environ.get("FLOATKEY_LOG_LEVEL", "warning"))
        return _borrowing_command(args)
    program = list(args.program)
    if program[:1] == ["--"]:
        program = program[1:]
    if not program:
        parser.error("give the program to run after --, e.g. floatkey-agent run -- myapp --flag")
    configure_logging(os.environ.get("FLOATKEY_LOG_LEVEL", "info"))
    try:
        return asyncio.run(_run(args, program))
    except ConfigError as exc:
        print(f"floatkey-agent: {exc.message}", file=sys.stderr)
        return EXIT_CONFIG
    except FileNotFoundError as exc:
        print(f"floatkey-agent: cannot start {program[0]!r}: {exc.strerror}", file=sys.stderr)
        return 127


if __name__ == "__main__":
    sys.exit(main())
