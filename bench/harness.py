"""The benchmark environment: a broker, a real floatkeyd, worker processes, the table.

Brokers and daemons come from the testbed (``bench/testbed.py``), which the integration
tests use too: Mosquitto from the shipped config, a RabbitMQ node from
``config/rabbitmq/``, or the daemon's embedded amqtt.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.testbed import (
    REPO,
    Mosquitto,
    RabbitCluster,
    Server,
    free_port,
    write_agent_config,
    write_daemon_config,
)
from floatkey import protocol
from floatkey.protocol import Topics
from floatkey.signing import load_private_key
from floatkeyd.admin_client import AdminSession

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

DEV_ADMIN_KEY = REPO / "config" / "dev-admin.key"
NAME, ORG = "Bench Customer", "Benchmarks Ltd"


def percentile(values: list[float], fraction: float) -> float:
    """The value below which ``fraction`` of ``values`` lie (nearest rank)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
    return ordered[index]


@dataclass
class Row:
    """One line of the results table."""

    scenario: str
    metric: str
    floatkey: float
    baseline: float | None
    unit: str
    target: str = ""
    passed: bool | None = None
    #: The target as a rule on (floatkey, baseline), to judge medians of repeated runs.
    rule: Callable[[float, float | None], bool] | None = None

    @property
    def ratio(self) -> float | None:
        """floatkey / baseline."""
        if not self.baseline:
            return None
        return self.floatkey / self.baseline


@dataclass
class Results:
    """Every row and every exactness check of a run."""

    broker: str
    rows: list[Row] = field(default_factory=list)
    checks: dict[str, bool] = field(default_factory=dict)

    @classmethod
    def median_of(cls, runs: list[Results]) -> Results:
        """One table from repeated runs: the median of each figure and each baseline."""
        merged = cls(runs[0].broker)
        for index, row in enumerate(runs[0].rows):
            same = [run.rows[index] for run in runs if len(run.rows) > index]
            value = statistics.median(r.floatkey for r in same)
            bases = [r.baseline for r in same if r.baseline is not None]
            base = statistics.median(bases) if bases else None
            passed = row.rule(value, base) if row.rule else row.passed
            merged.rows.append(
                Row(row.scenario, row.metric, value, base, row.unit, row.target, passed, row.rule)
            )
        for run in runs:
            for name, ok in run.checks.items():
                merged.checks[name] = merged.checks.get(name, True) and ok
        return merged

    def table(self) -> str:
        """A Markdown table, as docs/PERFORMANCE.md shows it."""
        lines = [
            "| scenario | metric | floatkey | raw MQTT | ratio | target | met |",
            "|---|---|---:|---:|---:|---|---|",
        ]
        for row in self.rows:
            base = "" if row.baseline is None else f"{row.baseline:.3g} {row.unit}"
            ratio = "" if row.ratio is None else f"{row.ratio:.2f}×"
            met = "" if row.passed is None else ("yes" if row.passed else "**no**")
            lines.append(
                f"| {row.scenario} | {row.metric} | {row.floatkey:.3g} {row.unit} | "
                f"{base} | {ratio} | {row.target} | {met} |"
            )
        for name, ok in self.checks.items():
            lines.append(
                f"| check | {name} | {'exact' if ok else '**WRONG**'} | | | | "
                f"{'yes' if ok else '**no**'} |"
            )
        return "\n".join(lines)


class Worker:
    """A load-generating process (``bench/worker.py``) driven over its stdin/stdout."""

    def __init__(self, role: str, spec: dict[str, Any]) -> None:
        self.role = role
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.worker", role, json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )

    async def expect(self, key: str, timeout: float = 300) -> dict[str, Any]:
        """Read lines until one carries ``key``."""
        assert self.process.stdout is not None
        async with asyncio.timeout(timeout):
            while True:
                line = await asyncio.to_thread(self.process.stdout.readline)
                if not line:
                    msg = f"worker {self.role} exited with {self.process.wait()}"
                    raise RuntimeError(msg)
                data = json.loads(line)
                if key in data:
                    return data

    def go(self) -> None:
        """Let the worker start."""
        assert self.process.stdin is not None
        self.process.stdin.write("go\n")
        self.process.stdin.flush()

    async def result(self, timeout: float = 300) -> dict[str, Any]:
        """The worker's final report."""
        data = await self.expect("result", timeout)
        await asyncio.to_thread(self.process.wait, 30)
        self._close_pipes()
        return data["result"]  # type: ignore[no-any-return]

    def stop(self) -> None:
        """Kill it if it is still running."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._close_pipes()

    def _close_pipes(self) -> None:
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None and not pipe.closed:
                pipe.close()


class Environment:
    """One broker and one daemon for a scenario; torn down by :meth:`close`."""

    def __init__(
        self,
        broker: str,
        *,
        lease_seconds: int = 3600,
        extra_config: str = "",
        max_requests_per_client: int | None = 1000,
    ) -> None:
        """``max_requests_per_client``: high, so that load is not refused; None: the
        daemon's default, for a scenario that measures the rate limit at work."""
        self.broker_kind = broker
        self.workdir = Path(tempfile.mkdtemp(prefix="floatkey-bench-"))
        self.mosquitto = Mosquitto() if broker == "mosquitto" else None
        if self.mosquitto is not None:
            self.mosquitto.start()
        self.rabbitmq = RabbitCluster(1) if broker == "rabbitmq" else None
        if self.rabbitmq is not None:
            self.rabbitmq.start()
        rabbit = self.rabbitmq.nodes[0] if self.rabbitmq else None
        port = self.mosquitto.port if self.mosquitto else rabbit.port if rabbit else free_port()
        name = f"bench{os.getpid()}"
        config = self.workdir / "floatkeyd.toml"
        write_daemon_config(
            config,
            server=name,
            state_dir=self.workdir / "state",
            port=port,
            mosquitto=self.mosquitto,
            rabbit=rabbit,
            extra=(
                f"max_requests_per_client = {max_requests_per_client}\n{extra_config}"
                if max_requests_per_client is not None
                else extra_config
            ),
        )
        text = config.read_text().replace("lease_seconds = 30", f"lease_seconds = {lease_seconds}")
        config.write_text(text.replace('log_level = "debug"', 'log_level = "warning"'))
        self.server = Server(
            kind=broker,
            config_path=config,
            state_dir=self.workdir / "state",
            topics=Topics("floatkey", name),
            port=port,
            mosquitto=self.mosquitto,
            rabbit=rabbit,
        )
        self.workers: list[Worker] = []

    def start_daemon(self) -> None:
        """Start floatkeyd and wait for READY=1."""
        self.server.start_daemon()

    @property
    def daemon_pid(self) -> int:
        """The running daemon's pid."""
        process = self.server.processes[-1].process
        assert process is not None
        return process.pid

    def agent_config(self) -> Path:
        """An agent config for this server (the server key pinned)."""
        return write_agent_config(
            self.server,
            self.workdir / "agent.toml",
            connect_timeout=120,
            shutdown_grace=2,
            hook_timeout=5,
        )

    def broker_spec(self, user: str = "floatkeyd") -> dict[str, Any]:
        """Broker options for raw clients (the daemon's user: the ACL lets it use floatkey/#)."""
        options = self.server.broker(user)
        return {
            "host": options.host,
            "port": options.port,
            "username": options.username,
            "password": options.password_for(Path("/")),
            "keepalive": 60,
        }

    def worker(self, role: str, spec: dict[str, Any]) -> Worker:
        """Start a worker process."""
        worker = Worker(role, spec)
        self.workers.append(worker)
        return worker

    def session(self) -> AdminSession:
        """An admin session with the development admin key (``async with``)."""
        return AdminSession(
            self.server.broker("floatkey-admin"),
            self.server.topics,
            load_private_key(DEV_ADMIN_KEY),
            base=REPO,
            server_key=self.server.server_key(),
            timeout=60,
        )

    async def admin(self, command: protocol.AdminCommand) -> protocol.AdminResult:
        """Send one admin command with the development admin key."""
        async with self.session() as session:
            return await session.send(command)

    async def unlock(self, key: str) -> protocol.AdminResult:
        """Activate ``key``."""
        return await self.admin(
            protocol.AdminUnlock(
                request_id=AdminSession.request_id(), name=NAME, organization=ORG, key=key
            )
        )

    async def status(self) -> protocol.StatusReport:
        """The daemon's status report."""
        result = await self.admin(protocol.AdminStatus(request_id=AdminSession.request_id()))
        assert result.status is not None
        return result.status

    def close(self) -> None:
        """Stop every worker, the daemon and the broker."""
        for worker in self.workers:
            worker.stop()
        for process in self.server.processes:
            if process.process and process.process.poll() is None:
                process.stop(10)
        if self.mosquitto is not None:
            self.mosquitto.cleanup()
        if self.rabbitmq is not None:
            self.rabbitmq.cleanup()
        shutil.rmtree(self.workdir, ignore_errors=True)


def rss_bytes(pid: int) -> int:
    """Resident set size of a process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    msg = f"no VmRSS for {pid}"
    raise RuntimeError(msg)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def sampled(pid: int, name: str) -> Iterator[None]:
    """py-spy samples of process ``pid`` while the block runs, when FLOATKEY_BENCH_PROFILE
    names a directory (``NAME.txt``: collapsed stacks; ``py-spy`` must be installed).

    A sampler from outside, because the daemon is a real process the benchmark does not
    change; ``bench.worker``'s cProfile covers the load generators.
    """
    directory = os.environ.get("FLOATKEY_BENCH_PROFILE")
    spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if not directory or spy is None:
        yield
        return
    out = Path(directory) / f"{name}.txt"
    sampler = subprocess.Popen(
        [spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "250", "-o", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.5)  # attached before the load starts
    try:
        yield
    finally:
        sampler.send_signal(signal.SIGINT)
        sampler.wait(30)


def issue_key(seats: int, features: str = "dataflow,workflow,subflow") -> str:
    """A development key for the benchmark licensee."""
    from floatkey.productkey import issue_product_key  # noqa: PLC0415

    return issue_product_key(
        load_private_key(REPO / "config" / "dev-vendor.key"),
        name=NAME,
        organization=ORG,
        seats=seats,
        features=features.split(","),
    )


def split(total: int, parts: int) -> list[int]:
    """``total`` spread over ``parts`` as evenly as possible."""
    return [
        total // parts + (1 if i < total % parts else 0)
        for i in range(parts)
        if total // parts + (1 if i < total % parts else 0)
    ]
