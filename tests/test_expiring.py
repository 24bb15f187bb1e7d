"""``license.expiring``: once per threshold, remembered across restarts (in-process)."""

from __future__ import annotations

import datetime as dt

from floatkey import protocol
from floatkey.agent import Agent
from floatkey.config import load_agent_config
from floatkey.envelope import open_envelope
from floatkeyd.clock import day_of
from floatkeyd.expiring import days_left
from inprocess import MemoryLink, Wall, ask, product_key, running, trusted, unlock_command
from inprocess import write_config as _write_config
from servers import eventually


def write_config(tmp_path, warn: str = ""):
    return _write_config(tmp_path, f"[license]\nwarn_days = [{warn}]\n" if warn else "")


def warnings(daemon, link: MemoryLink) -> list[protocol.Event]:
    """Every license.expiring event the daemon published, verified, in order."""
    found = []
    for item in link.published:
        if item.topic == daemon.topics.events:
            body = open_envelope(item.payload, item.topic, trusted(daemon))
            event = protocol.decode(body, protocol.Event)
            if event.name == "license.expiring":
                assert not item.retain
                found.append(event)
    return found


def today(wall: Wall) -> dt.date:
    return day_of(wall())


async def test_each_threshold_is_sent_once_with_the_days_left(tmp_path):
    link, wall = MemoryLink(), Wall()
    expires = today(wall) + dt.timedelta(days=40)
    async with running(write_config(tmp_path), link, wall) as daemon:
        unlock = unlock_command(product_key(expires=expires), "u1", ts=wall())
        assert (await ask(daemon, link, unlock)).ok
        status = (await ask(daemon, link, protocol.AdminStatus(request_id="s1", ts=wall()))).status
        assert (status.days_left, status.expiring) == (40, False)

        wall.jump(10)  # 30 days left: the first threshold
        daemon.expiring.recheck()
        await eventually(lambda: len(warnings(daemon, link)) == 1)
        [first] = warnings(daemon, link)
        assert (first.days_left, first.expires) == (30, expires.isoformat())
        assert (first.generation, first.revision) == (1, daemon.authority.revision)

        wall.jump(1)  # 29 days left: nothing new
        daemon.expiring.recheck()
        status = (await ask(daemon, link, protocol.AdminStatus(request_id="s2", ts=wall()))).status
        assert (status.days_left, status.expiring) == (29, True)

        wall.jump(24)  # 5 days left: past the 7-day threshold
        daemon.expiring.recheck()
        await eventually(lambda: len(warnings(daemon, link)) == 2)
        assert warnings(daemon, link)[1].days_left == 5
        assert daemon.authority.generation == 1  # a warning changes nothing

    # A restart inside the same window sends nothing again...
    link = MemoryLink()
    async with running(write_config(tmp_path), link, wall) as daemon:
        await ask(daemon, link, protocol.AdminStatus(request_id="s3", ts=wall()))
        assert await daemon.expiring._send_due()  # what its loop does, done here to be sure
        assert warnings(daemon, link) == []
    # ...but one that starts inside a threshold it never sent sends it at once.
    wall.jump(4)  # 1 day left
    link = MemoryLink()
    async with running(write_config(tmp_path), link, wall) as daemon:
        await eventually(lambda: len(warnings(daemon, link)) == 1)
        assert warnings(daemon, link)[0].days_left == 1


async def test_starting_past_several_thresholds_sends_one_event(tmp_path):
    link, wall = MemoryLink(), Wall()
    expires = today(wall) + dt.timedelta(days=3)
    async with running(write_config(tmp_path), link, wall) as daemon:
        unlock = unlock_command(product_key(expires=expires), "u1", ts=wall())
        assert (await ask(daemon, link, unlock)).ok
        await eventually(lambda: len(warnings(daemon, link)) == 1)
        assert warnings(daemon, link)[0].days_left == 3
        # A new key (another serial) is warned of afresh.
        again = unlock_command(product_key(expires=expires), "u2", ts=wall())
        assert (await ask(daemon, link, again)).ok
        await eventually(lambda: len(warnings(daemon, link)) == 2)
        assert warnings(daemon, link)[1].generation == 2


async def test_a_warning_without_a_broker_goes_out_when_it_is_back(tmp_path):
    link, wall = MemoryLink(), Wall()
    expires = today(wall) + dt.timedelta(days=10)
    async with running(write_config(tmp_path, "7"), link, wall) as daemon:
        unlock = unlock_command(product_key(expires=expires), "u1", ts=wall())
        assert (await ask(daemon, link, unlock)).ok
        assert await daemon.expiring._send_due()  # 10 days left: nothing due
        assert warnings(daemon, link) == []
        link.online = False
        wall.jump(4)  # 6 days left
        assert not await daemon.expiring._send_due()  # no broker: not sent, not recorded
        link.online = True
        await daemon.connected()
        await eventually(lambda: len(warnings(daemon, link)) == 1)
        assert warnings(daemon, link)[0].days_left == 6


async def test_no_warning_for_a_license_without_expiry_or_an_expired_one(tmp_path):
    link, wall = MemoryLink(), Wall()
    async with running(write_config(tmp_path), link, wall) as daemon:
        assert (await ask(daemon, link, unlock_command(product_key(), "u1", ts=wall()))).ok
        assert await daemon.expiring._send_due()
        status = (await ask(daemon, link, protocol.AdminStatus(request_id="s1", ts=wall()))).status
        assert (status.days_left, status.expiring) == (None, False)
        unlock = unlock_command(product_key(expires=today(wall)), "u2", ts=wall())
        assert (await ask(daemon, link, unlock)).ok
        await eventually(lambda: len(warnings(daemon, link)) == 1)
        assert warnings(daemon, link)[0].days_left == 0  # its last day
        wall.jump(2)
        daemon.authority.changed.set()
        await eventually(lambda: daemon.authority.status == "expired")
        assert daemon.expiring.days_left() is None
        assert len(warnings(daemon, link)) == 1


def test_days_are_counted_in_utc_calendar_days():
    noon = int(dt.datetime(2026, 12, 24, 12, tzinfo=dt.UTC).timestamp() * 1000)
    assert days_left(dt.date(2026, 12, 31), noon) == 7
    assert days_left(dt.date(2026, 12, 24), noon) == 0
    assert days_left(dt.date(2026, 12, 23), noon) == -1


def test_an_agent_tells_its_listeners_once_and_ignores_stale_warnings(tmp_path):
    config = tmp_path / "agent.toml"
    config.write_text(
        f'server = "dev"\nstate_file = "{tmp_path / "known.json"}"\n'
        '[broker]\nhost = "127.0.0.1"\nport = 1883\n'
    )
    agent = Agent(load_agent_config(config), client_id="c1")
    heard, failing = [], []

    def broken(warning):
        failing.append(warning)
        raise RuntimeError("the application's own bug")

    agent.on_license_expiring(broken)
    agent.on_license_expiring(heard.append)
    agent._state = protocol.State(
        server="dev", revision=3, generation=2, status="licensed", license=None
    )

    def expiring(generation: int, days: int) -> protocol.Event:
        return protocol.Event(
            name="license.expiring",
            generation=generation,
            revision=3,
            days_left=days,
            expires="2026-12-31",
        )

    agent._take_event(expiring(2, 7))
    agent._take_event(expiring(2, 7))  # delivered twice (QoS 1): told once
    agent._take_event(expiring(1, 1))  # about the license before this one
    assert [(w.days_left, w.expires, w.generation) for w in heard] == [(7, "2026-12-31", 2)]
    assert agent.expiring == heard[0]
    assert "expires in 7 days" in heard[0].message
    assert agent.drops["stale_event"] == 1
    assert len(failing) == 1
    assert sum(agent.listener_failures.values()) == 1  # logged and counted, not fatal
    assert not agent.shutdown_requested.is_set()
    agent._take_event(expiring(2, 1))
    assert [w.days_left for w in heard] == [7, 1]
    # A new license makes the warning about the old one void.
    agent._take_state(
        protocol.State(server="dev", revision=4, generation=3, status="licensed", license=None)
    )
    assert agent.expiring is None
