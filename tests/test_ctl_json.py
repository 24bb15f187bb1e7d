"""floatkeyctl --json: every command's documented shape (docs/SCRIPTING.md), exactly."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json

import pytest

from conftest import CONFIG, run
from licensing import ctl, issue, unlock
from servers import make_agent

pytestmark = pytest.mark.broker

LICENSE = {
    "licensee",
    "organization",
    "seats",
    "features",
    "product_version",
    "serial",
    "issued",
    "expires",
}
STATUS = {
    "ok",
    "server",
    "status",
    "license",
    "seats_in_use",
    "unlicensed_sessions",
    "awaiting_shutdown",
    "generation",
    "revision",
    "fingerprint",
    "broker",
    "admin_keys",
    "dropped",
    "days_left",
    "expiring",
}
CLIENT = {
    "client", "login", "app", "user", "host", "pid", "seat", "since", "lease_expires",
    "borrowed_until",
}  # fmt: skip
DENIAL = {"at", "client", "login", "app", "user", "host", "reason"}
WAITING = {"position", "client", "login", "app", "user", "host", "pid", "since"}
UNLOCKED = {
    "ok",
    "changed",
    "message",
    "license",
    "changes",
    "clients_told",
    "clients_still_running",
}
AUDIT_ENTRY = {"seq", "at", "actor", "action", "outcome", "reason", "detail"}


def utc(text: str) -> dt.datetime:
    """An ISO 8601 time in UTC, or the test fails."""
    when = dt.datetime.fromisoformat(text)
    assert when.utcoffset() == dt.timedelta(0), text
    return when


def check_license(license_: dict) -> None:
    assert set(license_) == LICENSE
    dt.date.fromisoformat(license_["issued"])
    assert license_["expires"] is None or dt.date.fromisoformat(license_["expires"])
    for feature in license_["features"]:
        assert set(feature) == {"id", "name"}


async def as_json(server, *args: str, status: int = 0) -> dict:
    result = await asyncio.to_thread(ctl, server, *args, "--json")
    assert result.returncode == status, result.stdout + result.stderr
    return json.loads(result.stdout)


async def test_every_command_has_its_documented_shape(server_factory, tmp_path):
    server = server_factory("mosquitto", extra=f'catalogue = "{CONFIG / "product.toml"}"')
    server.start_daemon()

    status = await as_json(server, "status")
    assert set(status) == STATUS
    assert (status["ok"], status["status"], status["license"]) == (True, "unlicensed", None)

    first = await as_json(server, "unlock", "--name", "Ada Lovelace", "--organization",
                          "Analytical Engines Ltd", "--key", issue(seats=1))  # fmt: skip
    assert set(first) == UNLOCKED
    assert (first["ok"], first["changed"], first["changes"]) == (True, True, [])
    assert (first["clients_told"], first["clients_still_running"]) == (0, 0)
    check_license(first["license"])
    assert first["license"]["features"] == [
        {"id": "dataflow", "name": "Dataflow"},
        {"id": "subflow", "name": "Subflow"},
        {"id": "workflow", "name": "Workflow"},
    ]

    async with contextlib.AsyncExitStack() as stack:
        seated = await stack.enter_async_context(make_agent(server, tmp_path, "seated"))
        await stack.enter_async_context(make_agent(server, tmp_path, "denied"))
        listing = await as_json(server, "clients")
        assert (set(listing), listing["queue"]) == ({"ok", "clients", "denials", "queue"}, [])
        [client] = listing["clients"]
        assert set(client) == CLIENT
        assert (client["client"], client["seat"]) == (seated.client_id, "licensed")
        assert utc(client["since"]) < utc(client["lease_expires"])
        [denial] = listing["denials"]
        assert set(denial) == DENIAL
        assert denial["reason"] == "seats_exhausted"
        utc(denial["at"])

        bigger = issue(seats=2, features="dataflow,workflow,subflow,reporting")
        second = await as_json(server, "unlock", "--name", "Ada Lovelace", "--organization",
                               "Analytical Engines Ltd", "--key", bigger)  # fmt: skip
        assert set(second) == UNLOCKED
        assert (second["clients_told"], second["clients_still_running"]) == (1, 0)
        assert second["changes"] == [
            {"what": "seats", "before": 1, "after": 2, "reduces": False},
            {
                "what": "features",
                "before": ["dataflow", "subflow", "workflow"],
                "after": ["dataflow", "reporting", "subflow", "workflow"],
                "reduces": False,
            },
        ]

    again = await as_json(server, "status")
    assert set(again) == STATUS
    check_license(again["license"])
    # A key without expiry: no days left to count.
    assert (again["license"]["seats"], again["days_left"], again["expiring"]) == (2, None, False)
    assert {"id": "reporting", "name": "Reporting"} in again["license"]["features"]

    async with make_agent(server, tmp_path, "released") as agent:
        released = await as_json(server, "release", agent.client_id)
        assert released == {
            "ok": True,
            "client": agent.client_id,
            "message": f"Released the seat of {agent.client_id}.",
        }
    missing = await as_json(server, "release", "nobody", status=1)
    assert missing == {
        "ok": False,
        "error": {"reason": "unknown_client", "message": "No client 'nobody' holds a seat."},
    }

    audit = await as_json(server, "audit")
    assert set(audit) == {"ok", "entries"}
    assert [e["action"] for e in audit["entries"] if e["action"] == "admin.unlock"] == [
        "admin.unlock",
        "admin.unlock",
    ]
    for entry in audit["entries"]:
        assert set(entry) == AUDIT_ENTRY
        utc(entry["at"])
        assert isinstance(entry["detail"], dict)
    verdict = await as_json(server, "audit", "verify")
    assert set(verdict) == {"ok", "intact", "rows", "message", "bad_seq"}
    assert (verdict["intact"], verdict["rows"], verdict["bad_seq"]) == (
        True,
        len(audit["entries"]),
        None,
    )

    key = await as_json(server, "server-key")
    assert key == {
        "ok": True,
        "server": server.topics.server,
        "public_key": server.server_key_text(),
        "fingerprint": status["fingerprint"],
        "agent_config": f'server_key = "{server.server_key_text()}"',
    }


def test_errors_on_our_side_are_json_too(server_factory, tmp_path):
    server = server_factory("embedded")  # nothing started on its port
    server.start_daemon().stop()
    result = run("floatkeyctl", "status", "--json", "--timeout", "2",
                 "--config", str(server.config_path))  # fmt: skip
    assert result.returncode == 5
    answer = json.loads(result.stdout)
    assert set(answer) == {"ok", "error"}
    assert answer["ok"] is False
    assert answer["error"]["reason"] == "unreachable"
    assert "is floatkeyd running" in answer["error"]["message"]

    no_key = run("floatkeyctl", "unlock", "--json", "--config", str(server.config_path),
                 "--name", "A", "--organization", "B", "--key", " ")  # fmt: skip
    assert no_key.returncode == 2
    assert json.loads(no_key.stdout)["error"]["reason"] == "no_key"

    wrong = run("floatkeyctl", "status", "--json", "--config", str(CONFIG / "agent.dev.toml"))
    assert wrong.returncode == 1
    assert json.loads(wrong.stdout)["error"]["reason"] == "config"

    created = run("floatkeyctl", "admin-key", "create", "--json", "--out", str(tmp_path / "a.key"))
    assert created.returncode == 0, created.stderr
    answer = json.loads(created.stdout)
    assert set(answer) == {"ok", "public_key", "key_id", "private_key_file"}
    assert answer["public_key"] == (tmp_path / "a.key.pub").read_text().strip()


async def test_clients_lists_the_queue_first_in_line_first(server_factory, tmp_path):
    server = server_factory("mosquitto")
    server.start_daemon()
    assert unlock(server, issue(seats=1)).returncode == 0
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(make_agent(server, tmp_path, "seated"))
        first, second = [
            await stack.enter_async_context(make_agent(server, tmp_path, n, wait_for_seat=True))
            for n in ("first", "second")
        ]
        assert first.queued is not None
        assert second.queued is not None
        listing = await as_json(server, "clients")
        assert set(listing) == {"ok", "clients", "denials", "queue"}
        assert listing["denials"] == []
        for row in listing["queue"]:
            assert set(row) == WAITING
            assert row["app"] == "test-app"
            utc(row["since"])
        assert [(r["position"], r["client"]) for r in listing["queue"]] == [
            (1, first.client_id),
            (2, second.client_id),
        ]
        text = await asyncio.to_thread(ctl, server, "clients")
        assert "Waiting for a seat:" in text.stdout
        assert "POSITION" in text.stdout
        assert "WAITING SINCE (UTC)" in text.stdout
        assert second.client_id in text.stdout
