"""The console as a person uses it: real processes, and the seed's story in Chromium.

The daemon on Mosquitto, ``floatkeyd console``, and three ``floatkey-agent run`` clients
each supervising a small application; Playwright drives Debian's ``chromium`` (never a
browser Playwright downloads). Screenshots of each step go to the test's temporary
directory; with ``FLOATKEY_DOCS_SCREENSHOTS=1`` the final ones are copied to
``docs/console/`` (the README and docs/CONSOLE.md show them).
"""

from __future__ import annotations

import os
import re
import shutil
import ssl
import time

import httpx2
import pytest
from bench.certificates import make_broker_certificates

from consoles import PASSWORDS, ConsoleProcess, add_user, console_table
from licensing import issue
from servers import CONFIG, REPO, clients, free_port, required_tool
from test_agents import child_env, output, start_supervised

pytestmark = pytest.mark.broker
DOCS = REPO / "docs" / "console"
#: Debian's package (scripts/test installs it); Playwright's own browser builds cannot be
#: downloaded here, and are never used.
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture
def console(server_factory, tmp_path):
    """A daemon on Mosquitto with its console running, and an admin account."""
    port = free_port()
    extra = f'catalogue = "{CONFIG / "product.toml"}"\n' + console_table(tmp_path, port)
    server = server_factory("mosquitto", extra=extra)
    server.start_daemon()
    add_user(server.config_path, "alice", "admin")
    process = ConsoleProcess(server, port)
    process.start()
    yield process
    assert process.stop() == 0, process.log()  # SIGTERM: a clean stop, streams or not


def session_cookie(client: httpx2.Client, base: str) -> dict[str, str]:
    """Log in; the session cookie (sent by hand: it is Secure, and this is plain HTTP)."""
    page = client.get(f"{base}/login")
    anonymous = _cookie(page)
    token = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert token
    response = client.post(
        f"{base}/login",
        data={"user": "alice", "password": PASSWORDS["alice"], "csrf": token.group(1)},
        headers={"cookie": anonymous},
    )
    assert response.status_code == 303, response.text
    return {"cookie": _cookie(response)}


def _cookie(response: httpx2.Response) -> str:
    return response.headers["set-cookie"].split(";")[0]


def test_the_live_stream_sends_the_clients_table_as_it_changes(console, tmp_path):
    server = console.server
    with httpx2.Client(timeout=20) as client:
        cookie = session_cookie(client, console.url)
        assert client.get(f"{console.url}/live/clients").status_code == 303  # no cookie
        with client.stream("GET", f"{console.url}/live/clients", headers=cookie) as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            lines = stream.iter_lines()
            first = _next_event(lines)
            assert "No clients are connected" in first
            agent = start_supervised(server, tmp_path, "live1")
            try:
                update = _next_event(lines)
                assert "flowdesigner" in update
                assert "unlicensed" in update
            finally:
                agent.terminate()
                agent.wait(15)


def _next_event(lines) -> str:
    """The data of the next ``update`` event on an SSE stream."""
    event, data = "", []
    for line in lines:
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            data.append(line[6:])
        elif line == "" and event:
            if event == "update":
                return "\n".join(data)
            event, data = "", []
    raise AssertionError("the stream ended")


def test_the_seeds_story_in_chromium(console, tmp_path):  # noqa: PLR0915 - one story
    required_tool("chromium")  # skipped without it, failed in CI
    from playwright.sync_api import expect, sync_playwright  # noqa: PLC0415

    server = console.server
    shots = tmp_path / "screenshots"
    shots.mkdir()
    names = ["c1", "c2", "c3"]
    agents = [start_supervised(server, tmp_path, n) for n in names]
    try:
        _wait(lambda: all((tmp_path / f"{n}.env").exists() for n in names), 30)
        _wait(lambda: len(clients(server)) == 3, 30)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM, args=["--no-sandbox"], headless=True
            )
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            page.set_default_timeout(20_000)

            def shot(name: str) -> None:
                page.screenshot(path=str(shots / f"{name}.png"), full_page=True)

            # Log in.
            page.goto(f"{console.url}/license")
            expect(page).to_have_url(re.compile(r"/login\?next="))
            shot("01-login")
            page.fill("#user", "alice")
            page.fill("#password", PASSWORDS["alice"])
            page.get_by_role("button", name="Log in").click()
            expect(page.locator("h1")).to_have_text("License Management")
            expect(page.locator("#license-status")).to_have_text("unlicensed")
            expect(page.locator(".big-number")).to_have_text("3")
            shot("02-license-unlicensed")

            # A version 7 key: the sales sentence by the key field, nothing changes.
            page.click("text=Unlock using a key")
            page.fill("#name", "Ada Lovelace")
            page.fill("#organization", "Analytical Engines Ltd")
            page.fill("#key", issue("--product-version", "7"))
            page.click("#unlock-submit")
            expect(page.locator("#key-error")).to_contain_text(
                "Keys from versions 6 and 7 cannot be used with version 8; please contact "
                "sales for a new version 8 key."
            )
            shot("03-old-key-refused")

            # The good key: the seed's message, then the live count of clients going.
            page.fill("#key", issue(seats=10, features="dataflow,workflow,subflow"))
            page.click("#unlock-submit")
            expect(page.locator("#success-message")).to_contain_text(
                "The license has been successfully activated: 10 seats, features "
                "Dataflow, Subflow, Workflow. 3 connected clients were told to shut down."
            )
            shot("04-activated")
            expect(page.locator("#shutdown-count")).to_have_text(
                "3 of 3 clients have shut down", timeout=30_000
            )
            expect(page.locator("#shutdown-done")).to_be_visible()
            shot("05-clients-shut-down")
            for n, agent in zip(names, agents, strict=True):
                assert agent.wait(20) == 75, output(tmp_path, n)

            # Restarted (systemd would), they hold seats under the new license.
            for n in names:
                (tmp_path / f"{n}.env").unlink()
            agents = [start_supervised(server, tmp_path, n) for n in names]
            _wait(lambda: all((tmp_path / f"{n}.env").exists() for n in names), 30)
            for n in names:
                assert child_env(tmp_path, n)["FLOATKEY_FEATURES"] == "dataflow,subflow,workflow"
            page.click("text=Clients")
            rows = page.locator("#clients-table tbody tr")
            expect(rows).to_have_count(3)
            expect(page.locator("#clients-table .pill-licensed")).to_have_count(3)
            shot("06-clients-licensed")

            page.click("text=License Management")
            expect(page.locator("#license-status")).to_have_text("licensed")
            expect(page.locator("#seats-in-use")).to_contain_text("3 of 10 seats in use")
            shot("07-license-licensed")

            page.click("text=Audit log")
            expect(page.locator("#audit-table")).to_contain_text("console:alice via")
            shot("08-audit-log")
            browser.close()
    finally:
        for agent in agents:
            if agent.poll() is None:
                agent.terminate()
                agent.wait(15)
    for png in shots.glob("*.png"):
        assert png.stat().st_size > 5000, png  # a real picture, not an empty page
    if os.environ.get("FLOATKEY_DOCS_SCREENSHOTS") == "1":
        DOCS.mkdir(exist_ok=True)
        for png in sorted(shots.glob("*.png")):
            shutil.copy(png, DOCS / png.name)


def _wait(check, within: float) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within} s")
        time.sleep(0.1)


def test_with_a_certificate_the_console_serves_https(server_factory, tmp_path):
    certificates = make_broker_certificates(tmp_path)
    port = free_port()
    extra = console_table(
        tmp_path, port, tls_cert=str(certificates.cert), tls_key=str(certificates.key)
    )
    server = server_factory("embedded", extra=extra)
    server.start_daemon()
    process = ConsoleProcess(server, port)
    process.start()
    try:
        trust = ssl.create_default_context(cafile=str(certificates.ca))
        with httpx2.Client(verify=trust, timeout=20) as client:
            page = client.get(f"https://127.0.0.1:{port}/login")
            assert page.status_code == 200
            assert page.headers["strict-transport-security"] == "max-age=31536000"
            assert "secure" in page.headers["set-cookie"].lower()
        with httpx2.Client(timeout=5) as plain, pytest.raises(httpx2.HTTPError):
            plain.get(f"http://127.0.0.1:{port}/login")
    finally:
        assert process.stop() == 0, process.log()
