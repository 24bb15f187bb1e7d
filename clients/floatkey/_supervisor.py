"""``floatkey-agent run``: run any program as a licensed client.

::

    floatkey-agent run [--config FILE] [--app NAME] -- COMMAND [ARGS...]

The agent asks for a seat, then starts COMMAND with the license in its environment
(``FLOATKEY_FEATURES=dataflow,subflow,workflow``, ``FLOATKEY_LICENSEE``, ...) and in a JSON
file (``FLOATKEY_LICENSE_FILE``) it keeps current. When the application must stop (a new
license, expiry, revocation, the server silent past the offline grace) it sends COMMAND
SIGTERM, then SIGKILL after the shutdown grace, releases the seat and exits with
:data:`EXIT_RESTART`, which ``systemd/floatkey-agent@.service`` restarts. If the agent
itself is killed (even with SIGKILL), Linux sends COMMAND SIGTERM: an application never
outlives the agent that holds its seat.

Exit status: COMMAND's own when it exits by itself (128+N when killed by signal N);
75 restart requested; 69 no seat (all in use, or the license expired); 76 license server
unreachable; 78 bad configuration; 2 bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

if TYPE_CHECKING:
    from collections.abc import Callable

from floatkey.agent import Agent, LicenseView, ShutdownReason
from floatkey.config import load_agent_config
from floatkey.errors import ConfigError, NoAnswer, ServerKeyChanged
from floatkey.logs import configure_logging

EXIT_NO_SEAT = 69
EXIT_RESTART = 75
EXIT_UNREACHABLE = 76
EXIT_CONFIG = 78
DEFAULT_CONFIG = Path("/etc/floatkey/agent.toml")
_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)

log = structlog.get_logger("floatkey-agent")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="floatkey-agent", description="Run a program as a licensed floatkey client."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser("run", help="hold a seat while running a program")
    run.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="agent config file")
    run.add_argument("--app", help="application name shown to administrators")
    run.add_argument("--client-id", help="MQTT client id (default: app-host-pid-random)")
    run.add_argument("program", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    return parser


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


def _license_document(agent: Agent, view: LicenseView) -> dict[str, object]:
    reason = agent.shutdown_requested.reason
    return {
        "status": view.status if agent.licensed else "unlicensed",
        "licensee": view.licensee,
        "organization": view.organization,
        "seats": view.seats,
        "features": sorted(agent.features),
        "generation": agent.generation,
        "server_generation": view.generation,
        "expires": view.expires,
        "shutdown_requested": None
        if reason is None
        else {
            "reason": reason.code,
            "message": reason.message,
        },
    }


def _write_license_file(path: Path, document: dict[str, object]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(document, indent=2) + "\n")
    tmp.replace(path)  # atomic: the application never reads half a file


_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _terminate_with_supervisor() -> Callable[[], None] | None:
    """In the child, before exec: have Linux send SIGTERM when this supervisor dies.

    Without it, ``kill -9`` of the agent would leave the application running with the
    features of a seat that the will then frees. Run between fork and exec, so it only
    calls ``prctl`` (looked up here, before the fork) and checks the parent is still
    the supervisor (it may have died before ``prctl``). Outside Linux: nothing.
    """
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    supervisor = os.getpid()

    def arm() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != supervisor:
            os.kill(os.getpid(), signal.SIGTERM)

    return arm


async def _stop_child(child: asyncio.subprocess.Process, grace: float) -> None:
    if child.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        child.send_signal(signal.SIGTERM)
    try:
        async with asyncio.timeout(grace):
            await child.wait()
    except TimeoutError:
        log.warning("application ignored SIGTERM; killing it", pid=child.pid, grace_s=grace)
        with contextlib.suppress(ProcessLookupError):
            child.kill()
        await child.wait()


def _status(code: int) -> int:
    return 128 - code if code < 0 else code


async def supervise(agent: Agent, program: list[str], workdir: Path) -> int:
    """Run ``program`` under ``agent``'s seat; return the exit status."""
    license_file = workdir / "license.json"
    _write_license_file(license_file, _license_document(agent, agent.license))

    def update_license_file(view: LicenseView) -> None:
        _write_license_file(license_file, _license_document(agent, view))

    agent.on_license_change(update_license_file)  # a failure is logged by the agent
    child = await asyncio.create_subprocess_exec(
        *program,
        env={**os.environ, **license_environment(agent, license_file)},
        preexec_fn=_terminate_with_supervisor(),
    )
    log.info(
        "application started",
        pid=child.pid,
        client=agent.client_id,
        features=sorted(agent.features),
        licensed=agent.licensed,
    )

    async def stop_application(reason: ShutdownReason) -> None:
        _write_license_file(license_file, _license_document(agent, agent.license))
        log.warning("stopping the application", reason=reason.code, message=reason.message)
        await _stop_child(child, agent.config.shutdown_grace)

    agent.on_shutdown(stop_application)
    loop = asyncio.get_running_loop()
    for signum in _FORWARDED:
        loop.add_signal_handler(signum, _forward, child, signum)
    try:
        exited = asyncio.ensure_future(child.wait())
        stop = asyncio.ensure_future(agent.shutdown_requested.wait())
        await asyncio.wait({exited, stop}, return_when=asyncio.FIRST_COMPLETED)
        if agent.shutdown_requested.is_set():
            stop.cancel()
            await exited  # the shutdown hook stops it, within the grace
            reason = agent.shutdown_requested.reason
            print(f"floatkey-agent: {reason.message if reason else 'stopping'}", file=sys.stderr)
            return EXIT_RESTART
        stop.cancel()
        return _status(exited.result())
    finally:
        for signum in _FORWARDED:
            loop.remove_signal_handler(signum)


def _forward(child: asyncio.subprocess.Process, signum: int) -> None:
    if child.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signum)


async def _run(args: argparse.Namespace, program: list[str]) -> int:
    loaded = load_agent_config(args.config)
    agent = Agent(loaded, app=args.app, client_id=args.client_id)
    try:
        async with agent:
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
            with tempfile.TemporaryDirectory(prefix="floatkey-agent-") as workdir:
                return await supervise(agent, program, Path(workdir))
    except NoAnswer as exc:
        print(f"floatkey-agent: {exc.message}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except ServerKeyChanged as exc:
        print(f"floatkey-agent: {exc.message}", file=sys.stderr)
        return EXIT_CONFIG


def main(argv: list[str] | None = None) -> int:
    """Run ``floatkey-agent``; return the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
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
