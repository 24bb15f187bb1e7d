"""A small-N run of every benchmark scenario: they run, and their counts are exact.

Timings are not asserted here (the machines are noisy); ``python -m bench`` measures.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from bench import scenarios

from conftest import REPO
from servers import mosquitto_binary, rabbitmq_binary

pytestmark = pytest.mark.broker


@pytest.fixture(autouse=True)
def _mosquitto_installed() -> None:
    # The scenarios start their own Mosquitto: skip (or fail in CI) without one.
    mosquitto_binary()


def test_the_benchmarks_import_nothing_from_the_tests():
    # `python -m bench` runs from a checkout without tests/ on its path; an import from
    # tests/ would only work by accident (the old sys.path insert).
    probe = (
        "import sys, bench.__main__, bench.worker; "
        f"print([n for n, m in sys.modules.items() if (getattr(m, '__file__', None) or '')"
        f".startswith({str(REPO / 'tests')!r})])"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def assert_passed(results) -> None:
    """Every check of a scenario passed, and it made some (``all([])`` is true)."""
    assert results.checks, results.table()
    assert all(results.checks.values()), results.table()


async def test_checkout_smoke():
    results = await scenarios.checkout("mosquitto", agents=6, rounds=3, procs=2)
    assert_passed(results)
    assert {row.metric for row in results.rows} >= {"grant latency p50", "grant latency p99"}
    assert all(row.baseline for row in results.rows)


async def test_storm_smoke():
    results = await scenarios.storm("mosquitto", agents=12, procs=2, seat_counts=(12, 5))
    assert len(results.checks) == 3  # each round's counts, and the usage history's
    assert_passed(results)


async def test_unlock_smoke():
    results = await scenarios.unlock("mosquitto", agents=10, procs=2)
    assert_passed(results)
    assert all(row.baseline for row in results.rows if row.target)


async def test_scale_smoke():
    results = await scenarios.scale("mosquitto", leases=300)
    # The daemon's leases, their exact ends after a restart, and the baseline's answers.
    assert len(results.checks) == 3
    assert_passed(results)
    metrics = {row.metric: row for row in results.rows}
    assert any(metric.startswith("start to READY") for metric in metrics)
    assert any(metric.startswith("one core's share") for metric in metrics)
    # The renewal-cost baseline: a bare signing responder measured in the same run.
    cpu = next(row for metric, row in metrics.items() if metric.startswith("CPU per renewal"))
    assert cpu.baseline is not None
    assert cpu.baseline > 0
    assert cpu.ratio is not None


async def test_storm_smoke_on_the_embedded_broker():
    results = await scenarios.storm("embedded", agents=8, procs=1, seat_counts=(5,))
    assert_passed(results)


async def test_flood_smoke():
    results = await scenarios.flood("mosquitto", agents=8)
    assert_passed(results)
    assert all(row.baseline for row in results.rows if row.target)


async def test_queue_wake_smoke():
    results = await scenarios.queue_wake("mosquitto", seats=3)
    assert_passed(results)
    assert all(row.baseline for row in results.rows)


async def test_checkout_and_unlock_smoke_on_rabbitmq():
    rabbitmq_binary()
    results = await scenarios.checkout("rabbitmq", agents=6, rounds=3, procs=2)
    assert_passed(results)
    assert all(row.baseline for row in results.rows)
    results = await scenarios.unlock("rabbitmq", agents=10, procs=2)
    assert_passed(results)
