"""The queue and idle reclaim in the daemon, in-process (an in-memory link, a settable clock).

With the daemon's loops not running (``serve=False``), a grant that shows up right after
the release was handled came on the release itself: nothing polls.
"""

from __future__ import annotations

import pytest

from floatkey import protocol
from floatkey.envelope import open_envelope
from inprocess import MemoryLink, Wall, ask, product_key, running, trusted, unlock_command
from inprocess import write_config as base_config
from servers import eventually


@pytest.fixture
def link():
    return MemoryLink()


@pytest.fixture
def wall():
    return Wall()


def write_config(tmp_path, extra=""):
    return base_config(tmp_path, f"queue_max = 3\n{extra}")


async def send(daemon, client, body, action):
    await daemon.handle(daemon.topics.seat(client, action), protocol.encode(body))


async def request(daemon, client, *, wait=False, idle_ms=None):
    body = protocol.SeatRequest(
        client=client, nonce="n-" + client, app="app", pid=1, wait=wait, idle_ms=idle_ms
    )
    await send(daemon, client, body, "request")


def replies(daemon, link, client):
    topic = daemon.topics.client(client)
    return [
        protocol.decode_to_client(open_envelope(payload, topic, trusted(daemon)))
        for to, payload in link.sent
        if to == topic
    ]


def last(daemon, link, client):
    return replies(daemon, link, client)[-1]


async def two_seats_four_waiting(daemon, link):
    assert (await ask(daemon, link, unlock_command(product_key(seats=2), "u1"))).ok
    for client in ("a", "b", "c", "d"):
        await request(daemon, client, wait=True)


async def test_two_run_two_wait_in_order_and_a_release_lets_the_first_in_at_once(
    tmp_path, link, wall
):
    async with running(write_config(tmp_path), link, wall, serve=False) as daemon:
        await two_seats_four_waiting(daemon, link)
        a = last(daemon, link, "a")
        assert isinstance(a, protocol.SeatGranted)
        c, d = last(daemon, link, "c"), last(daemon, link, "d")
        assert isinstance(c, protocol.SeatQueued)
        assert isinstance(d, protocol.SeatQueued)
        assert (c.position, c.ahead, c.seats, c.in_use) == (1, 0, 2, 2)
        assert (d.position, d.ahead) == (2, 1)
        sent = len(link.sent)
        await send(daemon, "a", protocol.SeatRelease(client="a", lease=a.lease), "release")
        # The very next message the daemon sent is c's grant, for c's request.
        grant = protocol.decode_to_client(
            open_envelope(link.sent[sent][1], daemon.topics.client("c"), trusted(daemon))
        )
        assert isinstance(grant, protocol.SeatGranted)
        assert grant.nonce == "n-c"
        assert grant.features == ["dataflow"]
        # d is told its new place (by the rate-bounded queue loop).
        await daemon.seats.queue_step()
        moved = last(daemon, link, "d")
        assert isinstance(moved, protocol.SeatQueued)
        assert (moved.position, moved.ahead) == (1, 0)
        clients = await ask(daemon, link, protocol.AdminClients(request_id="c1"))
        assert [(row.position, row.client, row.app) for row in clients.queue] == [(1, "d", "app")]


async def test_a_waiters_will_keeps_its_place_for_the_grace_then_the_next_moves_up(
    tmp_path, link, wall
):
    async with running(write_config(tmp_path), link, wall, serve=False) as daemon:
        await two_seats_four_waiting(daemon, link)
        d = last(daemon, link, "d")
        # A broker restart sends every will: both keep their places for the grace (5 s).
        for client in ("c", "d"):
            await send(daemon, client, protocol.SeatRelease(client=client), "release")
        assert list(daemon.seats.ledger.queue) == ["c", "d"]
        wall.ms += 3000
        await send(daemon, "d", protocol.SeatRenew(client="d", lease=d.lease), "renew")
        assert last(daemon, link, "d").position == 2  # back: still behind c
        wall.ms += 2001  # c never came back
        await daemon.seats.expire_step()
        assert list(daemon.seats.ledger.queue) == ["d"]
        assert daemon.seats.ledger.queue["d"].seq == 2  # its place, not a new one
        await daemon.seats.queue_step()
        assert last(daemon, link, "d").position == 1


async def test_a_waiter_may_cancel_and_renew_its_place(tmp_path, link, wall):
    async with running(write_config(tmp_path), link, wall, serve=False) as daemon:
        await two_seats_four_waiting(daemon, link)
        c = last(daemon, link, "c")
        wall.ms += 10_000
        await send(daemon, "c", protocol.SeatRenew(client="c", lease=c.lease), "renew")
        renewed = last(daemon, link, "c")
        assert isinstance(renewed, protocol.SeatQueued)
        assert renewed.expires_at == wall.ms + 30_000
        await send(daemon, "c", protocol.SeatCancel(client="c", lease="wrong"), "cancel")
        assert "c" in daemon.seats.ledger.queue
        await send(daemon, "c", protocol.SeatCancel(client="c", lease=c.lease), "cancel")
        assert list(daemon.seats.ledger.queue) == ["d"]


async def test_a_cancel_that_crossed_its_grant_frees_the_seat_for_the_next(tmp_path, link, wall):
    async with running(write_config(tmp_path), link, wall, serve=False) as daemon:
        await two_seats_four_waiting(daemon, link)
        a, c = last(daemon, link, "a"), last(daemon, link, "c")
        await send(daemon, "a", protocol.SeatRelease(client="a", lease=a.lease), "release")
        assert "c" in daemon.seats.ledger.leases  # granted; the agent gave up meanwhile
        await send(daemon, "c", protocol.SeatCancel(client="c", lease=c.lease), "cancel")
        assert "c" not in daemon.seats.ledger.leases
        assert isinstance(last(daemon, link, "d"), protocol.SeatGranted)
        # Once the agent renewed its grant, an old cancel frees nothing.
        d = last(daemon, link, "d")
        await send(daemon, "d", protocol.SeatRenew(client="d", lease=d.lease), "renew")
        told = replies(daemon, link, "d")
        queued = next(r for r in told if isinstance(r, protocol.SeatQueued))
        cancel = protocol.SeatCancel(client="d", lease=queued.lease)
        await send(daemon, "d", cancel, "cancel")
        assert "d" in daemon.seats.ledger.leases


async def test_the_queue_survives_a_restart(tmp_path, link, wall):
    config = write_config(tmp_path)
    async with running(config, link, wall, serve=False) as daemon:
        await two_seats_four_waiting(daemon, link)
        await daemon.seats.flush_step()
    async with running(config, link, wall, serve=False) as daemon:
        assert list(daemon.seats.ledger.queue) == ["c", "d"]
        a = next(r for r in replies(daemon, link, "a") if isinstance(r, protocol.SeatGranted))
        await send(daemon, "a", protocol.SeatRelease(client="a", lease=a.lease), "release")
        grant = last(daemon, link, "c")
        assert isinstance(grant, protocol.SeatGranted)
        assert grant.nonce == "n-c"


async def test_a_seat_freed_while_the_daemon_was_down_goes_to_the_first_waiter_at_start(
    tmp_path, link, wall
):
    import contextlib  # noqa: PLC0415
    import sqlite3  # noqa: PLC0415

    config = write_config(tmp_path)
    async with running(config, link, wall, serve=False) as daemon:
        await two_seats_four_waiting(daemon, link)
        await daemon.seats.flush_step()
    with contextlib.closing(sqlite3.connect(tmp_path / "state" / "floatkeyd.db")) as db, db:
        assert db.execute("DELETE FROM leases WHERE client = 'a'").rowcount == 1
    async with running(config, link, wall, serve=False) as daemon:
        # Restored, nothing granted yet: a grant sent before the broker is there is lost.
        assert list(daemon.seats.ledger.queue) == ["c", "d"]
        await daemon.connected()
        assert list(daemon.seats.ledger.queue) == ["d"]
        assert set(daemon.seats.ledger.leases) == {"b", "c"}
        grant = last(daemon, link, "c")
        assert isinstance(grant, protocol.SeatGranted)
        assert grant.nonce == "n-c"


def test_a_stored_waiter_that_also_holds_a_seat_is_not_put_back_in_the_queue():
    from floatkeyd.ledger import SeatLedger  # noqa: PLC0415

    book = SeatLedger("licensed", 1, 1, 30_000, queue_max=3)
    book.request("a", 0)
    queued = book.request("b", 0, wait=True)
    restored = SeatLedger("licensed", 1, 1, 30_000, queue_max=3)
    restored.restore(book.leases["a"])
    restored.restore_waiter(queued.waiter)
    restored.restore_waiter(copied(queued.waiter, client="a"))
    assert list(restored.queue) == ["b"]


def copied(waiter, **changes):
    import dataclasses  # noqa: PLC0415

    return dataclasses.replace(waiter, **changes)


async def test_a_new_license_clears_the_queue_and_tells_each_waiter(tmp_path, link, wall):
    async with running(write_config(tmp_path), link, wall, serve=False) as daemon:
        await two_seats_four_waiting(daemon, link)
        assert (await ask(daemon, link, unlock_command(product_key(seats=5), "u2"))).ok
        assert daemon.seats.ledger.queue == {}
        for client in ("c", "d"):
            told = last(daemon, link, client)
            assert isinstance(told, protocol.SeatDenied)
            assert told.reason == "license_changed"
            assert "asking again" in told.message


async def test_a_queue_cleared_by_the_license_expiring_says_so(tmp_path, link, wall):
    async with running(write_config(tmp_path), link, wall, serve=False) as daemon:
        await two_seats_four_waiting(daemon, link)
        daemon.seats.ledger.change_license("expired", 0, daemon.seats.ledger.generation + 1)
        daemon.seats._license_changed()
        told = last(daemon, link, "c")
        assert told.reason == "license_changed"
        assert told.message == "The license on this server expired while you waited; asking again."


def test_durations_read_as_a_customer_reads_them():
    from floatkeyd.seats import _duration  # noqa: PLC0415

    assert [_duration(s) for s in (1, 45, 60, 90, 120, 300)] == [
        "1 second", "45 seconds", "1 minute", "90 seconds", "2 minutes", "5 minutes",
    ]  # fmt: skip


async def test_a_full_queue_and_a_long_wait_are_denied_with_sentences(tmp_path, link, wall):
    config = write_config(tmp_path, "queue_max_wait_seconds = 60")
    async with running(config, link, wall, serve=False) as daemon:
        await two_seats_four_waiting(daemon, link)
        await request(daemon, "e", wait=True)
        await request(daemon, "f", wait=True)
        full = last(daemon, link, "f")
        assert isinstance(full, protocol.SeatDenied)
        assert full.reason == "queue_full"
        assert full.message.startswith("All 2 seats are in use and 3 clients already wait")
        for _ in range(2):  # renewed, so only the maximum wait ends them
            wall.ms += 20_000
            for client in ("c", "d", "e"):
                lease = last(daemon, link, client).lease
                renew = protocol.SeatRenew(client=client, lease=lease)
                await send(daemon, client, renew, "renew")
        wall.ms += 20_001
        await daemon.seats.expire_step()
        timed_out = last(daemon, link, "c")
        assert isinstance(timed_out, protocol.SeatDenied)
        assert timed_out.reason == "queue_timeout"
        assert timed_out.message.startswith("You waited 1 minute for a seat,")


async def test_old_agents_that_never_ask_to_wait_see_no_change(tmp_path, link, wall):
    config = write_config(tmp_path, "idle_timeout = 60\nidle_warning = 30\n")
    async with running(config, link, wall, serve=False) as d:
        assert (await ask(d, link, unlock_command(product_key(seats=1), "u1"))).ok
        # Encoded as an old agent does: no wait, no idle_ms fields at all.
        old = b'{"type":"seat.request","client":"old","nonce":"n1","app":"x","pid":1}'
        await d.handle(d.topics.seat("old", "request"), old)
        await d.handle(d.topics.seat("old2", "request"), old.replace(b'"old"', b'"old2"'))
        denied = last(d, link, "old2")
        assert isinstance(denied, protocol.SeatDenied)
        assert denied.reason == "seats_exhausted"
        assert d.seats.ledger.queue == {}
        # Never idle: it does not report activity.
        wall.ms += 3_600_000
        assert d.seats.ledger.idle(wall.ms) == ([], [])
        assert [type(r) for r in replies(d, link, "old")] == [protocol.SeatGranted]


async def test_an_idle_seat_is_warned_then_revoked_and_goes_to_a_waiter(tmp_path, link, wall):
    config = write_config(tmp_path, "idle_timeout = 600\nidle_warning = 300\n")
    async with running(config, link, wall, serve=False) as daemon:
        assert (await ask(daemon, link, unlock_command(product_key(seats=1), "u1"))).ok
        await request(daemon, "idle", idle_ms=0)
        await request(daemon, "next", wait=True)
        wall.ms += 300_000
        await daemon.seats.idle_step()
        warning = last(daemon, link, "idle")
        assert isinstance(warning, protocol.SeatIdleWarning)
        assert warning.reclaim_at == wall.ms + 300_000
        assert warning.message == (
            "Your seat will be released in 5 minutes unless you continue working."
        )
        wall.ms += 300_000
        await daemon.seats.idle_step()
        revoked = last(daemon, link, "idle")
        assert isinstance(revoked, protocol.SeatRevoked)
        assert revoked.reason == "idle"
        grant = last(daemon, link, "next")
        assert isinstance(grant, protocol.SeatGranted)


async def test_activity_after_the_warning_keeps_the_seat(tmp_path, link, wall):
    config = write_config(tmp_path, "idle_timeout = 600\nidle_warning = 100\n")
    async with running(config, link, wall, serve=False) as daemon:
        assert (await ask(daemon, link, unlock_command(product_key(seats=1), "u1"))).ok
        await request(daemon, "busy", idle_ms=0)
        grant = last(daemon, link, "busy")
        wall.ms += 500_000
        await daemon.seats.idle_step()
        warning = last(daemon, link, "busy")
        assert isinstance(warning, protocol.SeatIdleWarning)
        assert "100 seconds" in warning.message
        renew = protocol.SeatRenew(client="busy", lease=grant.lease, idle_ms=1000)
        await send(daemon, "busy", renew, "renew")
        # Past the bound on unwritten renewals committed at start: answered after the
        # next commit (floatkeyd.seats).
        await daemon.seats.flush_step()
        assert daemon.seats.ledger.leases["busy"].warned_at is None
        wall.ms += 150_000  # past the warning's reclaim time: kept, and not warned again
        assert daemon.seats.ledger.idle(wall.ms) == ([], [])
        assert isinstance(last(daemon, link, "busy"), protocol.SeatRenewed)
        assert "busy" in daemon.seats.ledger.leases


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ("queue_max = -1", "queue_max must be between 0"),
        ("idle_timeout = 60\nidle_warning = 60", "idle_warning must be at least 0 and less"),
        ("idle_timeout = 19\nidle_warning = 10", r"idle_timeout \(19 s\) must be at least two"),
        ("idle_timeout = 60\nidle_warning = 9", r"idle_warning \(9 s\) must be at least one"),
    ],
)
def test_config_mistakes_are_named(tmp_path, extra, words):
    from floatkey.errors import ConfigError  # noqa: PLC0415
    from floatkeyd.config import load_config  # noqa: PLC0415

    with pytest.raises(ConfigError, match=words):
        load_config(base_config(tmp_path, extra))


# --- the agent's side, with its connection faked (what it sends is recorded) ----------


def bare_agent(tmp_path, sent):
    """An Agent that waits for seats, not connected: ``_send`` appends to ``sent``."""
    import asyncio  # noqa: PLC0415

    from floatkey.agent import Agent  # noqa: PLC0415
    from floatkey.config import load_agent_config  # noqa: PLC0415

    path = tmp_path / "agent.toml"
    path.write_text('server = "s"\nconnect_timeout = 0.2\n')
    agent = Agent(load_agent_config(path), app="app", client_id="me", wait_for_seat=True)

    async def fake_send(body, action):
        sent.append((action, body))

    agent._send = fake_send
    agent._client = object()  # "connected": replies may lead to requests
    agent._connected.set()
    agent._seat_changed = asyncio.Event()
    return agent


def a_grant(nonce, lease="L1", ms=100):
    now = protocol.now_ms()
    return protocol.SeatGranted(
        nonce=nonce,
        lease=lease,
        generation=1,
        licensed=True,
        features=[],
        expires_at=now + ms,
        renew_after_s=ms / 3000,
        ts=now,
    )


async def test_a_waiting_agent_that_loses_its_seat_stops_when_none_is_free(tmp_path):
    import asyncio  # noqa: PLC0415

    sent = []
    agent = bare_agent(tmp_path, sent)
    async with asyncio.TaskGroup() as tasks:
        agent._tasks = tasks
        agent._take_reply(a_grant(agent._nonce))
        assert agent.has_seat
        keeper = tasks.create_task(agent._keep_seat())
        agent._take_reply(protocol.SeatLost(lease="L1", message="forgotten"))
        await eventually(lambda: any(action == "request" for action, _ in sent))
        again = next(body for action, body in sent if action == "request")
        assert not again.wait  # a seat held once is not waited for: none free, it stops
        agent._take_reply(
            protocol.SeatDenied(
                nonce=again.nonce,
                reason="seats_exhausted",
                message="All 1 seats are in use.",
                seats=1,
                in_use=1,
            )
        )
        reason = await asyncio.wait_for(agent.shutdown_requested.wait(), 10)
        assert reason.code == "seat.lost"
        agent._closing = True
        keeper.cancel()


async def test_an_agent_whose_queue_entry_was_dropped_asks_again(tmp_path):
    import asyncio  # noqa: PLC0415

    sent = []
    agent = bare_agent(tmp_path, sent)
    async with asyncio.TaskGroup() as tasks:
        agent._tasks = tasks
        await agent._request_seat()
        first = sent[-1][1]
        assert first.wait
        agent._take_reply(
            protocol.SeatQueued(
                nonce=first.nonce,
                lease="Q1",
                position=1,
                ahead=0,
                seats=1,
                in_use=1,
                expires_at=protocol.now_ms() + 30_000,
                renew_after_s=10,
            )
        )
        assert agent.queued is not None
        waiting = asyncio.create_task(agent.wait_for_grant())  # as `run --wait` does
        await asyncio.sleep(0)
        agent._take_reply(protocol.SeatLost(lease="Q1", message="no such entry"))
        assert agent.queued is None
        assert agent.drops["stale_reply"] == 0
        await eventually(lambda: len(sent) == 2)
        assert sent[-1][0] == "request"
        assert sent[-1][1].wait  # never held a seat: it may wait again
        # The lost entry is no end of the wait: `run --wait` must not exit "No seat".
        assert not waiting.done()
        waiting.cancel()


async def test_the_activity_file_is_read_just_before_each_renewal(tmp_path):
    import time  # noqa: PLC0415

    from floatkey._supervisor import _follow_activity  # noqa: PLC0415

    sent = []
    agent = bare_agent(tmp_path, sent)
    agent.track_activity = True
    agent._last_active = time.monotonic() - 100  # idle for 100 s, as far as it knows
    activity = tmp_path / "app.activity"
    _follow_activity(agent, activity)
    activity.touch()  # the program was used just now
    renewal = agent._renewal(a_grant(agent._nonce))
    assert renewal.idle_ms is not None
    assert renewal.idle_ms < 50_000  # the file's time, read for this renewal


async def test_a_touch_while_warned_reaches_the_server_within_about_a_second(tmp_path):
    import asyncio  # noqa: PLC0415
    import time  # noqa: PLC0415

    from floatkey._supervisor import _follow_activity  # noqa: PLC0415

    sent = []
    agent = bare_agent(tmp_path, sent)
    agent.track_activity = True
    activity = tmp_path / "app.activity"
    _follow_activity(agent, activity)
    async with asyncio.TaskGroup() as tasks:
        agent._tasks = tasks
        grant = a_grant(agent._nonce, ms=60_000)
        agent._take_reply(grant)
        agent._last_active = agent._reported_active = time.monotonic() - 100
        warning = protocol.SeatIdleWarning(
            lease=grant.lease, reclaim_at=protocol.now_ms() + 5000, message="Your seat will go."
        )
        agent._take_reply(warning)
        assert agent.idle_warned
        activity.touch()  # the user came back; no renewal is due for a long time
        await eventually(lambda: any(action == "renew" for action, _ in sent), within=5)
        assert not agent.idle_warned
        agent._closing = True


def test_requests_and_renewals_at_their_defaults_carry_no_new_fields():
    # Daemons from before the queue refuse unknown fields.
    request = protocol.encode(protocol.SeatRequest(client="a", nonce="n1", app="x", pid=1))
    renew = protocol.encode(protocol.SeatRenew(client="a", lease="l1"))
    for body in (request, renew):
        assert b'"wait"' not in body
        assert b'"idle_ms"' not in body
        assert b'"ts"' in body
    assert protocol.decode(request, protocol.SeatRequest).pid == 1
    waiting = protocol.SeatRequest(client="a", nonce="n1", wait=True, idle_ms=0)
    assert b'"wait":true,"idle_ms":0' in protocol.encode(waiting)
