"""``floatkeyctl usage`` against a real daemon, after a storm of real agents.

The benchmark's storm scenario, small: 12 agents start at once against 12 seats, then
(after they all left) against 5. The agents count what they were granted and refused;
the usage history must say the same, through floatkeyctl, in every output form.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
from typing import TYPE_CHECKING

import pytest
from bench import scenarios

from conftest import run
from servers import mosquitto_binary

if TYPE_CHECKING:
    from bench.harness import Environment

pytestmark = pytest.mark.broker

USAGE = {"ok", "since", "until", "bucket", "group_by", "buckets", "summary", "groups_omitted"}
BUCKET = {
    "start",
    "group",
    "peak",
    "peak_at",
    "average",
    "users",
    "grants",
    "denials",
    "outstanding_peak",
    "demand_peak",
    "peak_seats",
    "seats",
    "at_limit_s",
    "limit_hits",
    "waits",
    "queued_s",
    "queued_longest_s",
}
SUMMARY = {
    "peak",
    "peak_at",
    "peak_seats",
    "seats",
    "limit_hits",
    "at_limit_s",
    "grants",
    "denials",
    "would_serve",
    "users",
    "waits",
    "queued_s",
    "queued_longest_s",
    "sentence",
}


async def test_floatkeyctl_usage_tells_the_true_peak_and_denials_of_a_storm():
    mosquitto_binary()  # skip (or fail in CI) without Mosquitto
    seen: dict[str, object] = {}

    async def ask(env: Environment, truth: dict[str, int]) -> None:
        def usage(*args: str) -> str:
            config = str(env.server.config_path)
            result = run("floatkeyctl", "usage", "--since", "2h", *args, "--config", config)
            assert result.returncode == 0, result.stdout + result.stderr
            return result.stdout

        seen["truth"] = dict(truth)
        seen["json"] = json.loads(await asyncio.to_thread(usage, "--by", "hour", "--json"))
        seen["text"] = await asyncio.to_thread(usage, "--by", "day")
        seen["csv"] = await asyncio.to_thread(usage, "--by", "hour", "--group", "host", "--csv")

    results = await scenarios.storm("mosquitto", agents=12, procs=2, seat_counts=(12, 5), after=ask)
    assert all(results.checks.values()), results.table()
    assert seen["truth"] == {"peak": 12, "denied": 7, "grants": 17, "demand": 12}

    report = seen["json"]
    assert isinstance(report, dict)
    assert set(report) == USAGE  # the shape docs/SCRIPTING.md documents
    assert all(set(bucket) == BUCKET for bucket in report["buckets"])
    assert set(report["summary"]) == SUMMARY
    assert report["ok"] is True
    summary = report["summary"]
    assert summary["peak"] == 12
    assert summary["peak_seats"] == 12
    assert summary["seats"] == 5
    assert summary["denials"] == {"seats_exhausted": 7}
    assert summary["grants"] == 17
    assert summary["limit_hits"] == 2  # 12 of 12, then 5 of 5
    assert summary["would_serve"] == 12  # 5 held and 7 waiting, at the second start
    assert summary["sentence"].startswith("Peak 12 of 12 seats on ")
    assert sum(b["grants"] for b in report["buckets"]) == 17

    text = seen["text"]
    assert isinstance(text, str)
    assert re.search(
        r"Peak 12 of 12 seats on \d{4}-\d\d-\d\d; the limit was hit 2 times; "
        r"12 seats would have served all demand\.",
        text,
    ), text

    rows = list(csv.DictReader(io.StringIO(str(seen["csv"]))))
    totals = [row for row in rows if row["group"] == ""]
    hosts = [row for row in rows if row["group"] != ""]
    assert sum(int(row["denied_seats_exhausted"]) for row in totals) == 7
    assert max(int(row["peak"]) for row in totals) == 12
    assert hosts  # the agents' host, one group
    assert sum(int(row["grants"]) for row in hosts) == 17


def test_a_time_floatkeyctl_cannot_read_is_a_bad_argument(tmp_path):
    result = run("floatkeyctl", "usage", "--since", "last tuesday", "--json", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert json.loads(result.stdout)["error"]["reason"] == "bad_time"
    assert "neither a time ago (30d, 12h, 2w) nor a UTC day" in result.stderr
    backwards = run("floatkeyctl", "usage", "--since", "2026-11-02", "--until", "2026-11-01")
    assert backwards.returncode == 2
    assert "must come after --since" in backwards.stderr
