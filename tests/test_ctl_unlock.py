"""floatkeyctl unlock asks before a key that takes something away from the license."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import pty

import pytest

from conftest import CONFIG, command
from floatkey.productkey import parse_product_key
from floatkey.protocol import LicenseInfo, StatusReport
from floatkeyd.licensechange import changes_to_confirm, license_changes, refused_anyway
from licensing import NAME, ORG, issue, unlock
from servers import Terminal, read_state

CATALOGUE = f'catalogue = "{CONFIG / "product.toml"}"'


def active(**fields: object) -> LicenseInfo:
    values: dict[str, object] = {
        "licensee": NAME,
        "organization": ORG,
        "seats": 10,
        "features": ["dataflow", "subflow", "workflow"],
        "product_version": 8,
        "serial": "000000000001",
        "issued": "2026-05-01",
        "expires": None,
    }
    return LicenseInfo(**(values | fields))  # type: ignore[arg-type]


def decoded(*extra: str, seats: int = 10, features: str = "dataflow,workflow,subflow"):
    return parse_product_key(issue(*extra, seats=seats, features=features)).key


# --- what counts as a reduction (no broker) ------------------------------------------


def test_a_key_that_only_adds_reduces_nothing():
    changes = license_changes(
        active(issued="2020-01-01"),
        decoded(seats=20, features="dataflow,workflow,subflow,reporting"),
    )
    assert [c.what for c in changes] == ["seats", "features", "issued"]
    assert not any(c.reduces for c in changes)


@pytest.mark.parametrize(
    ("license_fields", "key", "what"),
    [
        ({}, lambda: decoded(seats=5), "seats"),
        ({}, lambda: decoded(features="dataflow,workflow"), "features"),
        ({}, lambda: decoded("--expires", "2099-12-31"), "expires"),
        ({"expires": "2099-12-31"}, lambda: decoded("--expires", "2099-01-31"), "expires"),
        ({"issued": "2099-01-01"}, decoded, "issued"),
    ],
)
def test_each_reduction_is_found(license_fields, key, what):
    changes = license_changes(active(**license_fields), key())
    assert [c.what for c in changes if c.reduces] == [what]


def test_the_same_key_changes_nothing():
    key = decoded(seats=5)
    assert license_changes(active(serial=key.serial), key) == []


def test_a_key_the_daemon_refuses_anyway_is_not_asked_about():
    today = dt.datetime.now(dt.UTC).date()
    license_ = active()
    ask = {"name": NAME, "organization": ORG, "today": today}
    assert not refused_anyway(decoded(seats=5), license_, **ask)
    assert refused_anyway(decoded("--product-version", "7", seats=5), license_, **ask)
    assert refused_anyway(decoded(seats=5), license_, **(ask | {"name": "Charles Babbage"}))
    expired = decoded("--issued", "2020-01-01", "--expires", "2020-12-31", seats=5)
    assert refused_anyway(expired, license_, **ask)


def test_only_a_license_in_force_is_guarded_and_only_by_a_readable_key():
    """The rule floatkeyctl and the console share: what to ask about, given the status."""
    today = dt.datetime.now(dt.UTC).date()
    smaller = issue(seats=5)
    ask = {"name": NAME, "organization": ORG, "today": today}

    def status(state: str, license_: LicenseInfo | None) -> StatusReport:
        return StatusReport(
            server="s", status=state, license=license_, generation=1, revision=1,
            seats_in_use=0, unlicensed_sessions=0, awaiting_release=0, fingerprint="f",
            broker="b",
        )  # fmt: skip

    changes = changes_to_confirm(status("licensed", active()), smaller, **ask)
    assert [c.what for c in changes if c.reduces] == ["seats"]
    # An expired license grants nothing: replacing it takes nothing away.
    assert changes_to_confirm(status("expired", active()), smaller, **ask) == []
    assert changes_to_confirm(status("unlicensed", None), smaller, **ask) == []
    # Unreadable, or for another licensee: the daemon's own refusal is the answer.
    assert changes_to_confirm(status("licensed", active()), "FK-NONSENSE", **ask) == []
    other = ask | {"organization": "Someone Else Ltd"}
    assert changes_to_confirm(status("licensed", active()), smaller, **other) == []


# --- against a real daemon ----------------------------------------------------------


def audited_unlocks(server) -> int:
    with contextlib.closing(server.db()) as db:
        return db.execute("SELECT COUNT(*) FROM audit WHERE action = 'admin.unlock'").fetchone()[0]


async def on_terminal(server, key: str, *extra: str) -> tuple[Terminal, asyncio.subprocess.Process]:
    primary, secondary = pty.openpty()
    process = await asyncio.create_subprocess_exec(
        command("floatkeyctl"),
        *("unlock", "--name", NAME, "--organization", ORG, "--key", key, *extra),
        *("--config", str(server.config_path)),
        stdin=secondary,
        stdout=secondary,
        stderr=secondary,
    )
    os.close(secondary)
    return Terminal(primary), process


async def test_on_a_terminal_a_reducing_key_is_shown_and_asked_about(server_factory):
    server = server_factory("mosquitto", extra=CATALOGUE)
    server.start_daemon()
    assert (await asyncio.to_thread(unlock, server, issue(seats=10))).returncode == 0
    smaller = issue(seats=5, features="dataflow,workflow,reporting")

    terminal, process = await on_terminal(server, smaller)
    screen = await terminal.wait_for("Activate it? [y/N]")
    assert "This key takes something away from the active license:" in screen
    assert "Seats     10 -> 5  (fewer)" in screen
    assert (
        "Features  Dataflow, Subflow, Workflow -> Dataflow, Reporting, Workflow  "
        "(Subflow removed; Reporting added)"
    ) in screen
    terminal.type("n\n")
    screen = await terminal.rest()
    assert await process.wait() == 7, screen
    assert "Not activated; nothing was changed." in screen
    state = await read_state(server)
    assert (state.generation, state.license.seats) == (1, 10)
    assert await asyncio.to_thread(audited_unlocks, server) == 1  # nothing was sent

    terminal, process = await on_terminal(server, smaller)
    await terminal.wait_for("Activate it? [y/N]")
    terminal.type("y\n")
    screen = await terminal.rest()
    assert await process.wait() == 0, screen
    assert "successfully activated: 5 seats, features Dataflow, Reporting, Workflow" in screen
    assert (await read_state(server)).license.seats == 5


async def test_without_a_terminal_a_reducing_key_needs_yes_and_nothing_is_sent(server_factory):
    server = server_factory("mosquitto")
    server.start_daemon()
    assert (await asyncio.to_thread(unlock, server, issue(seats=10))).returncode == 0
    before = await asyncio.to_thread(server.snapshot)
    earlier = issue("--expires", "2099-12-31", seats=10)

    refused = await asyncio.to_thread(unlock, server, earlier, yes=False)
    assert refused.returncode == 7, refused.stdout + refused.stderr
    assert refused.stdout == ""
    assert "Expires  never -> 2099-12-31  (earlier)" in refused.stderr
    assert "there is no terminal to ask on; nothing was sent" in refused.stderr
    assert "--yes" in refused.stderr
    assert await asyncio.to_thread(server.snapshot) == before
    assert await asyncio.to_thread(audited_unlocks, server) == 1

    as_json = await asyncio.to_thread(unlock, server, earlier, "--json", yes=False)
    assert as_json.returncode == 7
    answer = json.loads(as_json.stdout)
    assert answer == {
        "ok": False,
        "error": {"reason": "not_confirmed", "message": answer["error"]["message"]},
        "changes": [{"what": "expires", "before": None, "after": "2099-12-31", "reduces": True}],
    }
    assert "--yes" in answer["error"]["message"]

    confirmed = await asyncio.to_thread(unlock, server, earlier, yes=True)
    assert confirmed.returncode == 0, confirmed.stderr
    assert (await read_state(server)).license.expires == "2099-12-31"


async def test_a_key_that_only_adds_goes_straight_through(server_factory):
    server = server_factory("mosquitto")
    server.start_daemon()
    assert (await asyncio.to_thread(unlock, server, issue(seats=2), yes=False)).returncode == 0
    more = issue(seats=20, features="dataflow,workflow,subflow,reporting")
    result = await asyncio.to_thread(unlock, server, more, yes=False)
    assert result.returncode == 0, result.stderr
    assert "Activate it?" not in result.stdout + result.stderr
    assert (await read_state(server)).license.seats == 20


async def test_a_key_refused_anyway_gets_the_daemons_own_refusal(server_factory):
    server = server_factory("mosquitto")
    server.start_daemon()
    assert (await asyncio.to_thread(unlock, server, issue(seats=10))).returncode == 0
    old = issue("--product-version", "7", seats=1)
    result = await asyncio.to_thread(unlock, server, old, yes=False)
    assert result.returncode == 3, result.stderr
    assert "Keys from versions 6 and 7 cannot be used with version 8" in result.stderr
