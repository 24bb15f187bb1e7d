"""Seats per broker login (and per host and user): capped, shown, reloadable."""

from __future__ import annotations

import asyncio
import json
import signal

import pytest

from licensing import ctl, issue, unlock
from servers import eventually, make_agent

pytestmark = pytest.mark.broker


async def test_seats_per_login_are_capped_shown_and_reloaded(server_factory, tmp_path):
    server = server_factory("mosquitto", extra="[limits]\nseats_per_login = 2\n")
    daemon = server.start_daemon()
    assert (await asyncio.to_thread(unlock, server, issue(seats=10))).returncode == 0
    agents = [make_agent(server, tmp_path, f"a{n}") for n in range(3)]
    for agent in agents:
        await agent.__aenter__()
    try:
        # One login (the shared agent password): two seats, though eight more are free.
        assert [agent.licensed for agent in agents] == [True, True, False]
        denial = agents[2].denial
        assert denial is not None
        assert denial.reason == "limit_reached"
        assert "login 'floatkey-agent' already holds 2" in denial.message
        listing = json.loads((await asyncio.to_thread(ctl, server, "clients", "--json")).stdout)
        assert {row["login"] for row in listing["clients"]} == {"floatkey-agent"}
        assert [(d["client"], d["login"], d["reason"]) for d in listing["denials"]] == [
            (agents[2].client_id, "floatkey-agent", "limit_reached")
        ]
        table = (await asyncio.to_thread(ctl, server, "clients")).stdout
        assert "Recently denied a seat:" in table
        assert "limit_reached" in table

        # The administrator raises the cap and reloads (systemctl reload floatkeyd).
        text = server.config_path.read_text()
        server.config_path.write_text(text.replace("seats_per_login = 2", "seats_per_login = 3"))
        daemon.process.send_signal(signal.SIGHUP)
        await eventually(lambda: "seat limits" in daemon.log())
        assert await agents[2].request_seat()
        assert agents[2].licensed
    finally:
        for agent in agents:
            await agent.__aexit__(None, None, None)
