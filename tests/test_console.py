"""The browser console's application against a real daemon on Mosquitto (Starlette's
TestClient): log-in, roles, CSRF, cookies, the log-in limit, headers, and the pages."""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from starlette.testclient import TestClient
from structlog.testing import capture_logs

from conftest import run
from consoles import PASSWORDS, add_user, console_table
from floatkey import protocol
from floatkey.envelope import peek
from floatkey.signing import key_id, load_private_key
from floatkeyd.admin_client import AdminSession, DaemonUnreachable
from floatkeyd.config import load_config
from floatkeyd.console.app import create_app
from floatkeyd.console.settings import ConsoleSettings
from floatkeyd.console.throttle import LoginThrottle
from licensing import issue, unlock
from servers import CONFIG, raw_client

pytestmark = pytest.mark.broker
BASE = "https://testserver"


@pytest.fixture
def daemon(server_factory, tmp_path):
    """A running daemon on Mosquitto whose config has a [console] table; two accounts."""
    extra = f'catalogue = "{CONFIG / "product.toml"}"\n' + console_table(
        tmp_path, login_failures_per_account=3, login_failures_per_address=8
    )
    server = server_factory("mosquitto", extra=extra)
    server.start_daemon()
    add_user(server.config_path, "alice", "admin")
    add_user(server.config_path, "victor", "viewer")
    return server


@pytest.fixture
def app(daemon):
    settings = ConsoleSettings.from_config(load_config(daemon.config_path))
    return create_app(settings, secret="test-secret-" + "x" * 32, timeout=5)


@pytest.fixture
def browser(app):
    with TestClient(app, base_url=BASE, follow_redirects=False) as client:
        yield client


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, html[:2000]
    return match.group(1)


def log_in(client: TestClient, name: str, password: str | None = None, status: int = 303):
    page = client.get("/login")
    response = client.post(
        "/login",
        data={"user": name, "password": password or PASSWORDS[name], "csrf": csrf_of(page.text)},
    )
    assert response.status_code == status, response.text[:2000]
    return response


def audit_actions(server) -> list[tuple[str, str, str]]:
    with contextlib.closing(server.db()) as db:
        return list(db.execute("SELECT actor, action, outcome FROM audit ORDER BY seq"))


# --- access ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/license",
        "/license/unlock",
        "/clients",
        "/clients/release?client=x",
        "/audit",
        "/live/clients",
    ],
)
def test_unauthenticated_requests_are_sent_to_the_login_page(browser, path):
    response = browser.get(path)
    assert response.status_code == 303
    assert response.headers["location"].startswith("/login?next=")


def test_an_unauthenticated_post_is_sent_to_the_login_page_and_nothing_is_sent(browser, daemon):
    before = audit_actions(daemon)
    response = browser.post("/license/unlock", data={"name": "x", "organization": "y", "key": "z"})
    assert response.status_code == 303
    assert response.headers["location"].startswith("/login")
    assert audit_actions(daemon) == before


def test_the_login_cookie_is_secure_httponly_strict_and_a_new_one_after_log_in(browser):
    first = browser.get("/login")
    anonymous = first.headers["set-cookie"]
    response = log_in(browser, "alice")
    cookie = response.headers["set-cookie"]
    flags = {part.strip().lower() for part in cookie.split(";")}
    assert {"secure", "httponly", "samesite=strict"} <= flags
    assert any(f.startswith("max-age=") for f in flags)
    assert cookie.split(";")[0] != anonymous.split(";")[0]
    assert browser.get("/license").status_code == 200


def test_a_copied_cookie_is_worthless_after_log_out(browser):
    log_in(browser, "alice")
    copied = dict(browser.cookies)
    page = browser.get("/license")
    assert browser.post("/logout", data={"csrf": csrf_of(page.text)}).status_code == 303
    browser.cookies.clear()
    browser.cookies.update(copied)  # someone who copied the cookie before the log-out
    assert browser.get("/license").status_code == 303


def test_a_session_ends_when_idle_and_at_its_absolute_limit(daemon):
    clock = [1000.0]
    settings = ConsoleSettings.from_config(load_config(daemon.config_path))
    app = create_app(settings, secret="s" * 40, clock=lambda: clock[0], timeout=5)
    with TestClient(app, base_url=BASE, follow_redirects=False) as client:
        log_in(client, "alice")
        clock[0] += 29 * 60
        assert client.get("/audit").status_code == 200  # active: the idle clock restarts
        clock[0] += 31 * 60
        assert client.get("/audit").status_code == 303  # idle 31 minutes: over
        log_in(client, "alice")
        for _ in range(25):  # active every 29 minutes, until 12 hours have passed
            clock[0] += 29 * 60
            if client.get("/audit").status_code == 303:
                break
        else:
            pytest.fail("the session outlived its absolute limit")
        assert clock[0] - 1000 - 60 * 60 <= 12 * 3600 + 29 * 60


def test_a_removed_account_or_a_new_password_ends_its_sessions(browser, daemon):
    log_in(browser, "victor")
    assert browser.get("/license").status_code == 200
    add_user(daemon.config_path, "victor", "viewer", "a-new-password-for-victor")
    assert browser.get("/license").status_code == 303


def live_stream_ends_after(browser: TestClient, change) -> str:
    """Open /live/clients, make ``change``, and return the stream once it has ended."""
    console = browser.app.state.console
    with ThreadPoolExecutor(1) as pool:
        stream = pool.submit(browser.get, "/live/clients")
        # The stream is open once the live feed has a watcher.
        deadline = time.monotonic() + 10
        while not console.feed._watchers and not stream.done() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert console.feed._watchers == 1, "the live stream did not open"
        change()
        response = stream.result(timeout=20)  # it ends by itself, or this fails
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    return response.text


def test_live_streams_end_when_the_account_is_removed_or_its_password_changed(browser, daemon):
    log_in(browser, "victor")

    def new_password():
        add_user(daemon.config_path, "victor", "viewer", "a-new-password-for-victor")

    assert live_stream_ends_after(browser, new_password).endswith("event: expired\ndata: \n\n")
    assert browser.get("/license").status_code == 303  # that session is over

    log_in(browser, "alice")

    def remove():
        config = str(daemon.config_path)
        removed = run("floatkeyctl", "console-user", "remove", "alice", "--config", config)
        assert removed.returncode == 0, removed.stderr

    assert live_stream_ends_after(browser, remove).endswith("event: expired\ndata: \n\n")
    assert browser.get("/license").status_code == 303


# --- CSRF ------------------------------------------------------------------------------


def test_forms_without_or_with_a_stale_csrf_token_are_refused(browser, daemon):
    log_in(browser, "alice")
    form = browser.get("/license/unlock")
    stale = csrf_of(form.text)
    fields = {"name": "Ada Lovelace", "organization": "Analytical Engines Ltd", "key": issue()}
    before = audit_actions(daemon)

    missing = browser.post("/license/unlock", data=fields)
    assert missing.status_code == 403
    assert "This form has expired" in missing.text

    browser.post("/logout", data={"csrf": stale})
    log_in(browser, "alice")
    refused = browser.post("/license/unlock", data={**fields, "csrf": stale})
    assert refused.status_code == 403
    wrong = browser.post("/license/unlock", data={**fields, "csrf": "x" * 43})
    assert wrong.status_code == 403
    release = browser.post("/clients/release", data={"client": "c1", "csrf": stale})
    assert release.status_code == 403
    assert audit_actions(daemon) == before  # nothing reached the daemon

    # The log-in form has one too: a log-in posted from elsewhere is refused.
    assert browser.post("/logout", data={"csrf": csrf_of(browser.get("/license").text)})
    forged = browser.post("/login", data={"user": "alice", "password": PASSWORDS["alice"]})
    assert forged.status_code == 403


# --- roles -----------------------------------------------------------------------------


def test_a_viewer_gets_403_and_the_daemon_never_sees_the_command(browser, daemon):
    log_in(browser, "victor")
    page = browser.get("/license")
    assert page.status_code == 200
    assert "Unlock using a key" not in page.text
    token = csrf_of(page.text)
    seen: list[str] = []
    ready, done = threading.Event(), threading.Event()
    marker = b'{"marker": true}'

    async def listen() -> None:
        async with raw_client(daemon, "floatkeyd", "test-listener") as client:
            await client.subscribe(daemon.topics.admin_request, qos=1)
            ready.set()
            async for message in client.messages:
                if bytes(message.payload) == marker:
                    break
                seen.append(peek(bytes(message.payload)).get("type", "?"))
        done.set()

    async def mark() -> None:
        async with raw_client(daemon, "floatkeyd", "test-marker") as client:
            await client.publish(daemon.topics.admin_request, marker, qos=1)

    listener = threading.Thread(target=asyncio.run, args=(listen(),))
    listener.start()
    assert ready.wait(10)
    before = audit_actions(daemon)

    unlock_form = browser.get("/license/unlock")
    assert unlock_form.status_code == 403
    assert "victor is a viewer" in unlock_form.text
    fields = {"name": "Ada Lovelace", "organization": "Analytical Engines Ltd", "key": issue()}
    assert browser.post("/license/unlock", data={**fields, "csrf": token}).status_code == 403
    assert browser.post("/clients/release", data={"client": "c1", "csrf": token}).status_code == 403
    assert browser.get("/clients/release", params={"client": "c1"}).status_code == 403

    asyncio.run(mark())
    assert done.wait(10)
    listener.join(10)
    assert seen == []  # not one command published between the listener's start and the mark
    after = [row for row in audit_actions(daemon) if row[0] != "invalid"]  # (the mark)
    assert after == before


# --- log-in limits ---------------------------------------------------------------------


def test_failed_log_ins_say_nothing_about_what_was_wrong_and_are_limited_per_account(browser):
    unknown = log_in(browser, "nobody", "whatever-password", status=401)
    wrong = log_in(browser, "alice", "not-her-password", status=401)
    message = "The user name or the password is wrong."
    assert message in unknown.text
    assert message in wrong.text
    log_in(browser, "alice", "still-not-it", status=401)
    log_in(browser, "alice", "third-try-wrong", status=401)  # 3 failures: the limit
    limited = log_in(browser, "alice", status=429)  # the right password, too late
    assert "Too many failed log-ins" in limited.text
    # As for a name that does not exist: the limit tells nothing about accounts.
    for _ in range(3):
        log_in(browser, "ghost", "x" * 12, status=401)
    assert "Too many failed log-ins" in log_in(browser, "ghost", "y" * 12, status=429).text
    # Other accounts from here are still let in (8 failures per address; 7 so far).
    log_in(browser, "victor")


def test_failed_log_ins_are_limited_per_address(browser):
    for i in range(8):
        log_in(browser, f"user{i}", "wrong-password", status=401)
    limited = log_in(browser, "victor", status=429)
    assert "Too many failed log-ins" in limited.text


class CountingThrottle(LoginThrottle):
    """The console's throttle, counting the log-ins that asked it (every one does)."""

    def __init__(self, throttle: LoginThrottle, expected: int) -> None:
        super().__init__(throttle.per_account, throttle.per_address, throttle.window_s)
        self.asked = 0
        self.expected = expected
        self.all_asked = threading.Event()

    def retry_after(self, account: str, address: str) -> float:
        self.asked += 1
        if self.asked == self.expected:
            self.all_asked.set()
        return super().retry_after(account, address)


def test_parallel_log_ins_cannot_pass_the_limit_together(browser):
    """Every password check waits until all the log-ins have been let in or refused, so
    a limit checked before the hashing and counted after it would let all of them in."""
    console = browser.app.state.console
    attempts = 8  # the account's limit is 3
    throttle = CountingThrottle(console.throttle, attempts)
    console.throttle = throttle
    verify = console.users.verify
    checked = []

    def gated_verify(name, password):
        assert throttle.all_asked.wait(30), "not every log-in reached the limit check"
        checked.append(name)
        return verify(name, password)

    console.users.verify = gated_verify
    token = csrf_of(browser.get("/login").text)

    def attempt(i: int) -> int:
        form = {"user": "alice", "password": f"wrong-password-{i}", "csrf": token}
        return browser.post("/login", data=form).status_code

    with ThreadPoolExecutor(attempts) as pool:
        statuses = sorted(pool.map(attempt, range(attempts)))
    assert statuses == [401] * 3 + [429] * 5
    assert len(checked) == 3
    # A right password later is refused too: the three failures stand.
    log_in(browser, "alice", status=429)
    # A log-in that succeeds is taken back from the address's count.
    from_here = len(throttle._failures["address:testclient"])
    log_in(browser, "victor")
    assert len(throttle._failures["address:testclient"]) == from_here


def test_an_unreadable_accounts_file_gives_a_clear_503_logged_once(browser, daemon, tmp_path):
    log_in(browser, "alice")
    users = tmp_path / "console" / "users.json"
    good = users.read_bytes()
    users.write_text("{not json")
    sentence = "The console cannot read its accounts file"
    with capture_logs() as logs:
        pages = [browser.get("/license"), browser.get("/clients"), browser.get("/login")]
        alice = dict(browser.cookies)
        browser.cookies.clear()  # someone else, logging in meanwhile
        form = browser.get("/login")
        assert form.status_code == 200
        fields = {"user": "victor", "password": PASSWORDS["victor"], "csrf": csrf_of(form.text)}
        pages.append(browser.post("/login", data=fields))
    for response in pages:
        assert response.status_code == 503, response.text[:2000]
        assert sentence in response.text
        assert "damaged" not in response.text  # the details are for the log
    errors = [e for e in logs if e["event"] == "accounts file unreadable"]
    assert len(errors) == 1, logs
    assert "is damaged" in errors[0]["error"]
    # Mended: alice's session goes on, and victor's attempt did not count as a failure.
    users.write_bytes(good)
    assert not browser.app.state.console.throttle._failures
    browser.cookies.clear()
    browser.cookies.update(alice)
    assert browser.get("/license").status_code == 200


# --- headers ---------------------------------------------------------------------------


def test_every_page_has_a_strict_csp_no_inline_script_and_no_framing(browser):
    pages = [browser.get("/login")]
    log_in(browser, "alice")
    pages += [browser.get(p) for p in ("/license", "/license/unlock", "/clients", "/audit")]
    pages.append(browser.get("/static/console.css"))
    for response in pages:
        assert response.status_code == 200, response.url
        csp = response.headers["content-security-policy"]
        assert "script-src 'self'" in csp
        assert "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp
        assert "unsafe-eval" not in csp
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["x-content-type-options"] == "nosniff"
        assert "strict-transport-security" not in response.headers  # only with TLS
        if response.headers["content-type"].startswith("text/html"):
            assert response.headers["cache-control"] == "no-store"
            html = response.text
            assert re.findall(r"<script(?![^>]*\ssrc=)[^>]*>", html) == []  # no inline script
            assert " style=" not in html  # no inline style
            assert re.findall(r"\son[a-z]+=", html) == []  # no inline event handlers


def test_an_unknown_host_name_is_refused(browser):
    assert browser.get("/login", headers={"host": "evil.example"}).status_code == 400


# --- License Management ----------------------------------------------------------------


def test_license_page_shows_the_license_with_display_names_and_days_left(browser, daemon):
    assert unlock(daemon, issue(seats=7, features="dataflow,workflow")).returncode == 0
    log_in(browser, "victor")
    page = browser.get("/license").text
    assert "Ada Lovelace" in page
    assert "Analytical Engines Ltd" in page
    assert "of 7 seats in use" in page
    assert 'id="license-status">licensed<' in page
    assert "Dataflow" in page  # the catalogue's display names
    assert "Workflow" in page
    assert daemon.server_key_text() not in page
    fingerprint = re.search(r'id="fingerprint">([^<]+)<', page)
    assert fingerprint
    assert fingerprint.group(1)


def test_an_old_version_key_is_refused_by_the_key_field_and_never_echoed(browser, daemon):
    log_in(browser, "alice")
    token = csrf_of(browser.get("/license/unlock").text)
    old = issue("--product-version", "7")
    with capture_logs() as logs:
        response = browser.post(
            "/license/unlock",
            data={
                "name": "Ada Lovelace",
                "organization": "Analytical Engines Ltd",
                "key": old,
                "csrf": token,
            },
        )
    assert response.status_code == 422
    error = re.search(r'id="key-error">([^<]+)<', response.text)
    assert error, response.text
    assert "Keys from versions 6 and 7 cannot be used with version 8" in error.group(1)
    assert "contact sales" in error.group(1)
    assert old not in response.text
    assert old[:30] not in response.text
    assert all(old not in str(entry) for entry in logs)
    assert ("console:alice via", "admin.unlock", "refused") in [
        (actor.split(" ")[0] + " via", action, outcome)
        for actor, action, outcome in audit_actions(daemon)
    ]


def test_a_licensee_mismatch_is_shown_by_the_organization_and_the_key_is_kept(browser, daemon):
    log_in(browser, "alice")
    key = issue()
    token = csrf_of(browser.get("/license/unlock").text)
    fields = {"name": "Ada Lovelace", "organization": "Someone Else Ltd", "csrf": token}
    response = browser.post("/license/unlock", data={**fields, "key": key})
    assert response.status_code == 422
    assert re.search(
        r'id="organization-error">[^<]*the name matches, the organization does not', response.text
    ), response.text
    assert 'id="name-error"' not in response.text
    assert key not in response.text
    assert 'id="kept-key"' in response.text
    kept = re.search(r'name="kept" value="([^"]+)"', response.text)
    assert kept
    fixed = browser.post(
        "/license/unlock",
        data={**fields, "organization": "Analytical Engines Ltd", "kept": kept.group(1)},
    )
    assert fixed.status_code == 303, fixed.text
    assert fixed.headers["location"].startswith("/license/activated/")


def test_an_unlock_names_the_console_user_in_the_audit_log(browser, daemon):
    log_in(browser, "alice")
    token = csrf_of(browser.get("/license/unlock").text)
    response = browser.post(
        "/license/unlock",
        data={
            "name": "Ada Lovelace",
            "organization": "Analytical Engines Ltd",
            "key": issue(seats=10, features="dataflow,workflow,subflow"),
            "csrf": token,
        },
    )
    assert response.status_code == 303
    done = browser.get(response.headers["location"])
    assert "The license has been successfully activated: 10 seats" in done.text
    assert "No clients were connected" in done.text
    kid = key_id(load_private_key(CONFIG / "dev-admin.key").public_key())
    assert (f"console:alice via {kid}", "admin.unlock", "accepted") in audit_actions(daemon)
    audit = browser.get("/audit").text
    assert f"console:alice via {kid}" in audit
    # Only its own browser session may open that page.
    browser.post("/logout", data={"csrf": csrf_of(audit)})
    log_in(browser, "victor")
    assert browser.get(response.headers["location"]).status_code == 404


def test_a_reducing_unlock_asks_for_confirmation_first(browser, daemon):
    assert unlock(daemon, issue(seats=10, features="dataflow,workflow,subflow")).returncode == 0
    log_in(browser, "alice")
    token = csrf_of(browser.get("/license/unlock").text)
    smaller = issue(seats=4, features="dataflow,workflow")
    fields = {"name": "Ada Lovelace", "organization": "Analytical Engines Ltd", "csrf": token}
    ask = browser.post("/license/unlock", data={**fields, "key": smaller})
    assert ask.status_code == 200
    assert "This key takes something away" in ask.text
    assert "Seats 10 -&gt; 4 (fewer)" in ask.text
    assert "(Subflow removed)" in ask.text
    assert smaller not in ask.text
    generation = [a for a in audit_actions(daemon) if a[1] == "admin.unlock"]
    assert len(generation) == 1  # nothing sent yet
    kept = re.search(r'name="kept" value="([^"]+)"', ask.text)
    assert kept
    done = browser.post("/license/unlock", data={**fields, "kept": kept.group(1), "confirm": "yes"})
    assert done.status_code == 303
    assert "4 seats" in browser.get(done.headers["location"]).text
    # A larger key goes through without a question.
    larger = issue(seats=20, features="dataflow,workflow,subflow")
    direct = browser.post("/license/unlock", data={**fields, "key": larger})
    assert direct.status_code == 303


def test_the_audit_log_is_newest_first_and_filters_by_outcome_and_action(browser, daemon):
    unlock(daemon, issue(seats=3))
    unlock(daemon, issue("--product-version", "6"))
    unlock(daemon, issue(seats=5))
    log_in(browser, "victor")
    rows = re.findall(r"<td class=\"muted\">(\d+)</td>", browser.get("/audit").text)
    assert rows == sorted(rows, key=int, reverse=True)
    assert len(rows) >= 3
    refused = browser.get("/audit", params={"outcome": "refused"}).text
    assert "wrong_product_version" in refused
    assert 'pill-accepted">accepted' not in refused
    accepted = browser.get("/audit", params={"outcome": "accepted", "action": "admin.unlock"})
    assert accepted.text.count('pill-accepted">accepted') == 2


def test_a_daemon_that_does_not_answer_is_said_on_the_page(browser, daemon):
    log_in(browser, "victor")
    daemon.processes[0].stop()
    page = browser.get("/license")
    assert page.status_code == 200
    assert "did not answer" in page.text


async def test_release_needs_a_confirmation_and_stops_the_application(daemon, app, tmp_path):
    from servers import make_agent  # noqa: PLC0415

    assert unlock(daemon, issue(seats=3)).returncode == 0
    async with make_agent(daemon, tmp_path, "stuck") as stuck:

        def in_browser() -> tuple[str, int, str]:
            with TestClient(app, base_url=BASE, follow_redirects=False) as client:
                log_in(client, "alice")
                listing = client.get("/clients").text
                assert stuck.client_id in listing
                confirm = client.get("/clients/release", params={"client": stuck.client_id})
                assert "Release this seat?" in confirm.text
                done = client.post(
                    "/clients/release",
                    data={"client": stuck.client_id, "csrf": csrf_of(confirm.text)},
                )
                notice = client.get(done.headers["location"]).text
                again = client.get(done.headers["location"]).text
                assert "Released the seat of" not in again  # said once
                return done.headers["location"], done.status_code, notice

        location, status, notice = await asyncio.to_thread(in_browser)
        assert status == 303
        assert location == "/clients"  # the notice is in the session, not the address
        assert f"Released the seat of {stuck.client_id}" in notice
        reason = await asyncio.wait_for(stuck.shutdown_requested.wait(), 10)
        assert reason.code == "seat.revoked"
    assert any(
        a[1] == "admin.release" and a[0].startswith("console:alice via")
        for a in audit_actions(daemon)
    )


async def test_the_clients_page_shows_who_waits_for_a_seat(daemon, app, tmp_path):
    from servers import make_agent  # noqa: PLC0415

    assert unlock(daemon, issue(seats=1)).returncode == 0
    async with (
        make_agent(daemon, tmp_path, "seated") as seated,
        make_agent(daemon, tmp_path, "first", wait_for_seat=True) as first,
        make_agent(daemon, tmp_path, "second", wait_for_seat=True) as second,
    ):
        assert first.queued is not None
        assert second.queued is not None

        def in_browser() -> str:
            with TestClient(app, base_url=BASE, follow_redirects=False) as client:
                log_in(client, "victor")
                return client.get("/clients").text

        page = await asyncio.to_thread(in_browser)
        assert "Waiting for a seat" in page
        waiting = page[page.index("Waiting for a seat") :]
        rows = re.findall(r"<tr><td>(\d+)</td><td>([^<]+)</td><td>test-app</td>", waiting)
        assert rows == [("1", first.client_id), ("2", second.client_id)]
        assert seated.client_id not in waiting


def test_the_clients_page_shows_no_text_from_its_address(browser):
    log_in(browser, "victor")
    page = browser.get("/clients", params={"released": "your-seat-was-stolen-call-555-0100"})
    assert page.status_code == 200
    assert "your-seat-was-stolen" not in page.text
    assert "Released the seat of" not in page.text


async def test_a_long_lived_admin_session_blames_the_server_key_only_for_its_own_answer(daemon):
    """The console keeps one admin session for days: an answer that did not verify once
    must not make every later timeout blame the server key."""
    wrong_key = Ed25519PrivateKey.generate().public_key()
    async with AdminSession(
        daemon.broker("floatkey-admin"),
        daemon.topics,
        load_private_key(CONFIG / "dev-admin.key"),
        base=CONFIG,
        server_key=wrong_key,
        timeout=2,
    ) as session:
        with pytest.raises(DaemonUnreachable, match="not signed by the server key"):
            await session.send(protocol.AdminStatus(request_id=session.request_id()))
        await asyncio.to_thread(daemon.processes[0].stop)
        with pytest.raises(DaemonUnreachable) as silent:
            await session.send(protocol.AdminStatus(request_id=session.request_id()))
    assert "did not answer within 2 s" in silent.value.message
    assert "server key" not in silent.value.message
