"""Usage figures (floatkeyd.usage): exact against a brute force, and the same once folded."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass, field

import hypothesis.strategies as st
from hypothesis import given, settings

from floatkeyd import usage
from floatkeyd.ledger import Denied, Granted, SeatLedger
from floatkeyd.usage import (
    DIMS,
    HOUR_MS,
    OUTSTANDING_MS,
    Checkpoint,
    HourRow,
    Question,
    Replay,
    UsageEvent,
    UsageState,
    Who,
)

T0 = 1_795_000_000_000 - 1_795_000_000_000 % HOUR_MS  # an hour's start
APPS, USERS, HOSTS = ("cad", "cam", "sim"), ("ada", "bob", "cy", "di"), ("h1", "h2", "h3")


def who(client: int) -> Who:
    return Who(APPS[client % 3], USERS[client % 4], HOSTS[client % 3 - 1])


@dataclass
class Run:
    """A ledger driven by random operations, its events, and the truth after each step."""

    ledger: SeatLedger = field(default_factory=lambda: SeatLedger("licensed", 3, 1, 10**12))
    events: list[UsageEvent] = field(default_factory=list)
    # After each step: when, seats held and denials outstanding per (dim, name), the seats.
    truth: list[tuple[int, Counter[tuple[str, str]], Counter[tuple[str, str]], int]] = field(
        default_factory=list
    )
    denials: dict[str, tuple[int, Who]] = field(default_factory=dict)

    def step(self, at: int, op: str, client: int, seats: int) -> None:
        name, ledger = f"c{client}", self.ledger
        if op == "request":
            decision = ledger.request(name, at, **who(client)._asdict())
            if isinstance(decision, Granted) and decision.fresh:
                self.events.append(usage.granted(decision.lease, at))
                self.denials.pop(name, None)
            elif isinstance(decision, Denied):
                self.events.append(
                    usage.denied(
                        name,
                        at,
                        login="",
                        who=who(client),
                        reason=decision.reason,
                        generation=ledger.generation,
                    )
                )
                if decision.reason == "seats_exhausted":
                    self.denials[name] = (at, self.denials.get(name, (0, who(client)))[1])
        elif op == "release":
            lease = ledger.leases.get(name)
            if lease is not None and ledger.release(name) is not None:
                self.events.append(usage.released(lease, at, "agent"))
        else:
            for lease in list(ledger.leases.values()):
                self.events.append(usage.revoked(lease, at, "unlock"))
            ledger.change_license("licensed", seats, ledger.generation + 1)
            self.events.append(
                usage.license_changed(
                    at, generation=ledger.generation, seats=seats, status="licensed"
                )
            )
        self.truth.append((at, self.counts(), self.waiting(at), ledger.seats))

    def counts(self) -> Counter[tuple[str, str]]:
        counts: Counter[tuple[str, str]] = Counter()
        for lease in self.ledger.leases.values():
            for dim in DIMS:
                counts[(dim, Who(lease.app, lease.user, lease.host).name(dim))] += 1
        return counts

    def waiting(self, at: int) -> Counter[tuple[str, str]]:
        counts: Counter[tuple[str, str]] = Counter()
        for since, whose in self.denials.values():
            if at < since + OUTSTANDING_MS:
                for dim in DIMS:
                    counts[(dim, whose.name(dim))] += 1
        return counts


OPS = st.lists(
    st.tuples(
        st.integers(0, 40 * 60_000),
        st.sampled_from(["request", "request", "release", "license"]),
        st.integers(0, 7),
        st.integers(1, 4),
    ),
    max_size=60,
)


def drive(ops: list[tuple[int, str, int, int]]) -> Run:
    run, at = Run(), T0
    run.events.append(usage.license_changed(T0, generation=1, seats=3, status="licensed"))
    for gap, op, client, seats in ops:
        at += gap
        run.step(at, op, client, seats)
    return run


def brute(run: Run, key: tuple[str, str], start: int, end: int) -> dict[str, int]:
    """Peak, seat-ms, time at the limit and peak demand of ``key`` in ``[start, end)``."""
    held, seats = 0, 3
    for at, counts, _, after in run.truth:
        if at >= start:
            break
        held, seats = counts[key], after
    peak, demand = held, held + waiting_at(run, start, key)
    seat_ms = limit_ms = 0
    cursor = start
    for at, counts, outstanding, after in run.truth:
        if not start <= at < end:
            continue
        seat_ms += held * (at - cursor)
        limit_ms += (at - cursor) if seats > 0 and held >= seats else 0
        held, seats, cursor = counts[key], after, at
        peak = max(peak, held)
        demand = max(demand, held + outstanding[key])
    seat_ms += held * (end - cursor)
    limit_ms += (end - cursor) if seats > 0 and held >= seats else 0
    return {"peak": peak, "seat_ms": seat_ms, "limit_ms": limit_ms, "demand": demand}


def waiting_at(run: Run, at: int, key: tuple[str, str]) -> int:
    """Denials outstanding at ``at``: a client's latest, not yet granted, still in time."""
    latest: dict[str, tuple[int, Who]] = {}
    for event in run.events:
        if event.at >= at:
            break
        if event.kind == "denied" and event.reason == "seats_exhausted":
            latest[event.client] = (event.at, event.who)
        elif event.kind == "granted":
            latest.pop(event.client, None)
    dim, name = key
    return sum(
        1
        for since, whose in latest.values()
        if at < since + OUTSTANDING_MS and whose.name(dim) == name  # type: ignore[arg-type]
    )


def question(run: Run, bucket: str = "hour", group: str = "") -> Question:
    end = (run.truth[-1][0] if run.truth else T0) + HOUR_MS
    return Question(since=T0, until=end, bucket=bucket, group_by=group, now=end)  # type: ignore[arg-type]


def raw_answer(run: Run, bucket: str = "hour", group: str = "") -> usage.Answer:
    checkpoint = Checkpoint(until=0, kept_from=T0, state=UsageState())
    return usage.answer(question(run, bucket, group), checkpoint, [], run.events)


@settings(max_examples=150, deadline=None)
@given(OPS)
def test_peaks_averages_and_demand_are_exact(ops):
    run = drive(ops)
    answer = raw_answer(run, "hour", "app")
    for row in answer.rows:
        key = ("", "") if row.group is None else ("app", row.group)
        truth = brute(run, key, row.fig.start, row.fig.end)
        assert row.fig.peak == truth["peak"], (key, row.start)
        assert row.fig.seat_ms == truth["seat_ms"], (key, row.start)
        if row.group is None:
            assert row.fig.limit_ms == truth["limit_ms"], row.start
            assert row.fig.demand_peak == truth["demand"], row.start


def fold(run: Run, hours: int) -> tuple[Checkpoint, list[HourRow], list[UsageEvent]]:
    """What the fold loop does: hourly rows of the first ``hours`` hours, a checkpoint."""
    until = T0 + hours * HOUR_MS
    replay = Replay(UsageState(), DIMS, users=False)
    rows = []
    boundaries = [T0 + h * HOUR_MS for h in range(hours + 1)]
    for figures in replay.run(run.events, boundaries):
        rows += [HourRow(d, n, f) for (d, n), f in figures.items() if f.touched]
    rest = [e for e in run.events if e.at >= until]
    return Checkpoint(until=until, kept_from=T0, state=replay.state), rows, rest


def comparable(answer: usage.Answer) -> list[tuple[object, ...]]:
    return [
        (
            r.start,
            r.group,
            r.fig.peak,
            r.fig.peak_at,
            r.fig.seat_ms,
            r.fig.limit_ms,
            r.fig.limit_hits,
            r.fig.grants,
            sorted(r.fig.denials.items()),
            r.fig.waiting_peak,
            r.fig.demand_peak,
            (r.fig.waits, r.fig.wait_ms, r.fig.wait_longest_ms),
        )
        for r in answer.rows
    ]


@settings(max_examples=150, deadline=None)
@given(OPS, st.integers(1, 30), st.sampled_from(["hour", "day", "week"]), st.sampled_from(DIMS))
def test_folded_hours_answer_as_the_raw_events_did(ops, hours, bucket, group):
    run = drive(ops)
    raw = raw_answer(run, bucket, group)
    # The fold only ever folds hours that are over.
    hours = min(hours, (question(run).now - T0) // HOUR_MS)
    checkpoint, rows, rest = fold(run, hours)
    folded = usage.answer(question(run, bucket, group), checkpoint, rows, rest)
    assert comparable(folded) == comparable(raw)
    assert folded.summary.peak == raw.summary.peak
    assert folded.summary.demand_peak == raw.summary.demand_peak


def test_the_summary_counts_the_demand_that_went_unserved():
    # 2 seats; a and b hold them; c and d are turned away; b leaves and c gets b's seat.
    run = Run(ledger=SeatLedger("licensed", 2, 1, 10**12))
    run.events.append(usage.license_changed(T0, generation=1, seats=2, status="licensed"))
    for minute, op, client in [
        (1, "request", 0),
        (2, "request", 1),
        (3, "request", 2),  # denied: outstanding
        (4, "request", 3),  # denied: outstanding
        (5, "release", 1),
        (5, "request", 2),  # granted: c no longer outstanding
    ]:
        run.step(T0 + minute * 60_000, op, client, 0)
    answer = raw_answer(run)
    summary = answer.summary
    assert (summary.peak, summary.peak_seats, summary.limit_hits) == (2, 2, 2)
    assert summary.denials == {"seats_exhausted": 2}
    assert summary.grants == 3
    assert summary.demand_peak == 4  # 2 held + 2 outstanding at 00:04
    assert summary.users == 3
    # d stopped asking: two minutes after its denial it no longer counts.
    assert answer.rows[0].fig.waiting_peak == 2


def test_time_queued_is_counted_where_each_wait_ends():
    # Three waits end in the first hour (2 min, 30 s, 5 min), one in the second (10 min).
    def wait(minute: int, client: int, ms: int, reason: str = "granted") -> UsageEvent:
        return UsageEvent(
            at=T0 + minute * 60_000,
            kind="unqueued",
            client=f"c{client}",
            reason=reason,
            generation=1,
            n=ms,
            **who(client)._asdict(),
        )

    run = Run()
    run.events += [
        usage.license_changed(T0, generation=1, seats=3, status="licensed"),
        wait(10, 0, 120_000),
        wait(20, 1, 30_000, "cancel"),
        wait(30, 3, 300_000, "will"),
        wait(70, 2, 600_000),
    ]
    run.truth.append((T0 + 70 * 60_000, Counter(), Counter(), 3))
    answer = raw_answer(run, "hour", "app")
    whole = [
        (r.fig.waits, r.fig.wait_ms, r.fig.wait_longest_ms) for r in answer.rows if r.group is None
    ]
    assert whole == [(3, 450_000, 300_000), (1, 600_000, 600_000), (0, 0, 0)]
    # Clients 0 and 3 are both "cad": two waits, in the first hour.
    cad = [(r.start, r.fig.waits, r.fig.wait_ms) for r in answer.rows if r.group == "cad"]
    assert cad == [(T0, 2, 420_000)]
    summary = answer.summary
    assert (summary.waits, summary.wait_ms, summary.wait_longest_ms) == (4, 1_050_000, 600_000)
    # The hourly aggregates keep them.
    checkpoint, rows, rest = fold(run, 2)
    folded = usage.answer(question(run, "day"), checkpoint, rows, rest)
    assert (folded.summary.waits, folded.summary.wait_ms) == (4, 1_050_000)
    assert folded.summary.wait_longest_ms == 600_000


def test_buckets_follow_the_utc_calendar():
    day = dt.datetime(2026, 11, 18, 15, 30, tzinfo=dt.UTC)  # a Wednesday
    ms = int(day.timestamp() * 1000)
    monday = int(dt.datetime(2026, 11, 16, tzinfo=dt.UTC).timestamp() * 1000)
    first = int(dt.datetime(2026, 11, 1, tzinfo=dt.UTC).timestamp() * 1000)
    assert usage.floor_bucket(ms, "week") == monday
    assert usage.floor_bucket(ms, "month") == first
    starts = usage.bucket_starts(first, ms, "month")
    assert starts == [first]
    december = usage.bucket_starts(first, first + 40 * 86_400_000, "month")
    assert [dt.datetime.fromtimestamp(s / 1000, dt.UTC).day for s in december] == [1, 1]


def test_repeated_denials_are_one_and_a_flood_is_capped():
    gate = usage.DenialFilter()
    assert gate.admit("a", "seats_exhausted", T0)
    assert not gate.admit("a", "seats_exhausted", T0 + 59_000)
    assert gate.admit("a", "limit_reached", T0 + 59_000)
    assert gate.admit("a", "seats_exhausted", T0 + 60_000)
    admitted = sum(gate.admit(f"x{i}", "seats_exhausted", T0 + 61_000) for i in range(7000))
    assert admitted == usage.DENIAL_ROWS_PER_MINUTE - 1
    assert gate.unrecorded == 7000 - admitted


def test_the_largest_answer_fits_one_mqtt_message():
    from floatkey import protocol  # noqa: PLC0415
    from floatkeyd.admin import _usage_report  # noqa: PLC0415

    # 500 hours; 300 hosts with the longest names an agent may give, each busy every hour.
    events = [usage.license_changed(T0, generation=1, seats=10**6, status="licensed")]
    for hour in range(usage.MAX_BUCKETS):
        for host in range(300):
            at = T0 + hour * HOUR_MS + host
            client = f"client-{host}"
            fields = {"at": at, "client": client, "app": "a" * 128, "user": "u" * 128}
            events.append(UsageEvent(kind="granted", host=f"{host:03}" + "h" * 253, **fields))
            events.append(
                UsageEvent(kind="denied", reason="limit_reached", host=f"{host:03}", **fields)
            )
            events.append(UsageEvent(kind="released", reason="agent", host="", **fields))
    end = T0 + usage.MAX_BUCKETS * HOUR_MS
    asked = Question(since=T0, until=end, bucket="hour", group_by="host", now=end)
    checkpoint = Checkpoint(until=0, kept_from=T0, state=UsageState())
    answer = usage.answer(asked, checkpoint, [], events)
    assert answer.groups_omitted > 0
    command = protocol.AdminUsage(request_id="r", bucket="hour", group_by="host")
    body = protocol.encode(
        protocol.AdminResult(request_id="r", ok=True, usage=_usage_report(answer, command))
    )
    # The signed envelope carries the body in base64 (4/3), plus about 200 bytes.
    assert len(body) * 4 / 3 + 400 < 256 * 1024  # the shipped Mosquitto's max_packet_size


def test_floatkeyctl_says_how_long_clients_waited_for_a_seat():
    from floatkey.protocol import UsageSummary  # noqa: PLC0415
    from floatkeyd._ctl_text import queue_sentence  # noqa: PLC0415

    fields = {"peak": 1, "peak_at": T0, "peak_seats": 1, "seats": 1, "limit_hits": 1}
    fields |= {"at_limit_ms": 0, "grants": 3, "denials": {}, "would_serve": 1, "users": 2}
    assert queue_sentence(UsageSummary(**fields)) == ""
    summary = UsageSummary(**fields, waits=2, queued_ms=95_200, queued_longest_ms=50_000)
    assert queue_sentence(summary) == (
        "Clients waited for a seat 2 times: 2m in all, the longest 50s."
    )
