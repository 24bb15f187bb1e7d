"""The console's Seat usage page: the table without scripts, the chart in Chromium.

Real processes, as in tests/test_console_browser.py (whose ``console`` fixture this
reuses): the daemon on Mosquitto, ``floatkey console``, and supervised agents, three of
them against two seats, so the history has a peak at the limit and a denial.
"""

from __future__ import annotations

import os
import re
import shutil

import httpx2
import pytest

from consoles import PASSWORDS
from licensing import issue, unlock
from servers import clients, required_tool
from test_agents import start_supervised
from test_console_browser import CHROMIUM, DOCS, _wait, console, session_cookie

pytestmark = pytest.mark.broker
__all__ = ["console"]  # the fixture, imported for pytest

SENTENCE = re.compile(
    r"Peak 2 of 2 seats on \d{4}-\d\d-\d\d \d\d:\d\d; the limit was hit once; "
    r"3 seats would have served all demand\."
)


@pytest.fixture
def busy(console, tmp_path):
    """Two seats, three supervised agents: two hold a seat, the third is turned away."""
    assert unlock(console.server, issue(seats=2)).returncode == 0
    agents = []
    for held, name in enumerate(("u1", "u2", "u3"), start=1):
        agents.append(start_supervised(console.server, tmp_path, name))
        if name != "u3":
            _wait(lambda held=held: len(clients(console.server)) == held, 30)
    _wait(lambda: agents[2].poll() is not None, 60)  # no seat free: it stops (69)
    yield console
    for agent in agents:
        if agent.poll() is None:
            agent.terminate()
            agent.wait(15)


def test_the_usage_page_shows_the_figures_without_scripts(busy):
    with httpx2.Client(timeout=20) as client:
        cookie = session_cookie(client, busy.url)
        assert client.get(f"{busy.url}/usage").status_code == 303  # log in first
        page = client.get(f"{busy.url}/usage?range=24h", headers=cookie)
    assert page.status_code == 200
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert SENTENCE.search(page.text), page.text
    assert 'id="usage-table"' in page.text
    assert "2 of 2" in page.text  # the peak against the seats, in the table
    assert 'src="/static/vendor/uplot/uPlot.iife.min.js"' in page.text  # no CDN
    assert "<script>" not in page.text  # nothing inline
    with httpx2.Client(timeout=20) as client:
        script = client.get(f"{busy.url}/static/vendor/uplot/uPlot.iife.min.js")
    assert script.status_code == 200
    assert "uPlot" in script.text


def test_the_usage_chart_in_chromium(busy, tmp_path):
    required_tool("chromium")  # skipped without it, failed in CI
    from playwright.sync_api import expect, sync_playwright  # noqa: PLC0415

    shot = tmp_path / "09-seat-usage.png"
    errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox"], headless=True
        )
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(20_000)
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"{busy.url}/usage")
        page.fill("#user", "alice")
        page.fill("#password", PASSWORDS["alice"])
        page.get_by_role("button", name="Log in").click()
        expect(page.locator("h1")).to_have_text("Seat usage")
        expect(page.locator("#usage-sentence")).to_have_text(SENTENCE)
        expect(page.locator("#usage-chart canvas")).to_have_count(1)
        legend = page.locator("#usage-chart .u-legend")
        expect(legend).to_contain_text("Licensed seats")
        expect(legend).to_contain_text("Denied")
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert errors == []  # the CSP let the vendored script run, and it did not fail
    assert shot.stat().st_size > 20_000  # a drawn chart, not an empty page
    if os.environ.get("FLOATKEY_DOCS_SCREENSHOTS") == "1":
        DOCS.mkdir(exist_ok=True)
        shutil.copy(shot, DOCS / shot.name)
