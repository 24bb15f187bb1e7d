"""The console's Seat usage page: the period asked for, the chart's data, the table.

The figures are the daemon's answer to ``admin.usage`` (docs/USAGE.md), as floatkeyctl
shows them; this module only shapes them for the page: a server-rendered table (the page
works without scripts) and the series ``static/usage.js`` draws with the vendored uPlot.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

from floatkeyd._ctl_text import usage_sentence

if TYPE_CHECKING:
    from floatkey.protocol import UsageReport

__all__ = ["PERIODS", "Period", "period_of", "usage_context"]


@dataclass(frozen=True, slots=True)
class Period:
    """A choice of the page's period: how far back, in which buckets."""

    key: str
    label: str
    hours: int
    bucket: Literal["hour", "day", "week", "month"]

    def since(self, now_ms: int) -> int:
        """The period's start (Unix ms), ``now_ms`` being its end."""
        return max(0, now_ms - self.hours * 3_600_000)


PERIODS: Final = (
    Period("24h", "Last 24 hours, by hour", 24, "hour"),
    Period("7d", "Last 7 days, by hour", 7 * 24, "hour"),
    Period("30d", "Last 30 days, by day", 30 * 24, "day"),
    Period("90d", "Last 90 days, by day", 90 * 24, "day"),
    Period("1y", "Last year, by week", 365 * 24, "week"),
)
_DEFAULT: Final = PERIODS[1]


def period_of(key: str) -> Period:
    """The period a query parameter names; the default (7 days by hour) for anything else."""
    return next((p for p in PERIODS if p.key == key), _DEFAULT)


def _label(ms: int, bucket: str) -> str:
    moment = dt.datetime.fromtimestamp(ms / 1000, dt.UTC)
    return moment.strftime("%Y-%m-%d %H:%M" if bucket == "hour" else "%Y-%m-%d")


def usage_context(period: Period, report: UsageReport | None, error: str) -> dict[str, Any]:
    """The template's context: the sentence, the table's rows and the chart's series."""
    context: dict[str, Any] = {
        "periods": PERIODS,
        "period": period,
        "error": error,
        "sentence": "",
        "rows": [],
        "chart": None,
    }
    if report is None:
        return context
    totals = [b for b in report.buckets if b.group is None]
    context["sentence"] = usage_sentence(report.summary, report.bucket)
    context["rows"] = [
        {
            "when": _label(b.start, report.bucket),
            "peak": b.peak,
            "seats": b.peak_seats,
            "average": f"{b.average:.1f}",
            "users": "-" if b.users is None else b.users,
            "grants": b.grants,
            "denied": sum(b.denials.values()),
            "at_limit_min": round(b.at_limit_ms / 60_000),
            "would_serve": b.demand_peak,
        }
        for b in totals
    ]
    if totals:
        last = totals[-1]
        # uPlot's time axis is in seconds. Each bucket's value holds until the next one
        # starts; one more point at the end of the period closes the last step.
        context["chart"] = {
            "from": report.since // 1000,
            "to": report.until // 1000,
            "t": [b.start // 1000 for b in totals] + [report.until // 1000],
            "peak": [b.peak for b in totals] + [last.peak],
            "average": [b.average for b in totals] + [last.average],
            "seats": [b.seats for b in totals] + [last.seats],
            "demand": [b.demand_peak for b in totals] + [last.demand_peak],
            "denied": [sum(b.denials.values()) for b in totals] + [0],
        }
    return context
