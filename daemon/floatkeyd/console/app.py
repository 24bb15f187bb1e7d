"""The console's ASGI application: log-in, License Management, clients, audit log, usage.

Server-rendered pages that work without JavaScript; ``/live/...`` streams (Server-Sent
Events) refresh the live parts where scripts run. Every command to the daemon names the
console user (``console:alice``), so the daemon's audit log records who asked.

Order of checks for every request that changes something: logged in (else a redirect to
the log-in page), the role (a viewer gets 403 and nothing is sent to the daemon), then
the form's CSRF token (403 when missing or stale).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlencode

import jinja2
import structlog
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from floatkey import protocol
from floatkey.errors import (
    PRODUCT_KEY_REASONS,
    FloatkeyError,
    LicenseeMismatch,
    ProductKeyError,
)
from floatkey.logs import redact
from floatkey.productkey import parse_product_key, verify_product_key
from floatkeyd._ctl_text import change_lines, when
from floatkeyd.admin_client import DaemonUnreachable
from floatkeyd.console.daemonlink import DaemonLink, LiveFeed
from floatkeyd.console.protection import BodyLimit, SecurityHeaders
from floatkeyd.console.sessions import SessionStore, csrf_token, same_token
from floatkeyd.console.throttle import LoginThrottle
from floatkeyd.console.usage_view import period_of, usage_context
from floatkeyd.console.users import UserStore
from floatkeyd.ctl_json import audit_of
from floatkeyd.errors import ConsoleUserError
from floatkeyd.licensechange import license_changes

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from starlette.requests import Request

    from floatkeyd.console.daemonlink import Snapshot
    from floatkeyd.console.sessions import LoginSession
    from floatkeyd.console.settings import ConsoleSettings
    from floatkeyd.console.users import ConsoleUser

__all__ = ["Console", "create_app"]

log = structlog.get_logger("floatkey-console")

SESSION_COOKIE: Final = "floatkey_console"
AUDIT_PAGE: Final = 50
#: How long a key kept for a confirmation (or after a refusal of the name) is kept.
KEPT_KEY_S: Final = 600
#: How long the page of an activation (its live shutdown count) can be opened.
ACTIVATION_S: Final = 3600
#: Heartbeat on the live streams (a comment line), so proxies keep them open.
HEARTBEAT_S: Final = 15.0
#: How often a live stream checks that its session and account still stand.
SESSION_CHECK_S: Final = 1.0
#: Argon2 verifications at once (each takes 64 MiB and a core for a moment).
HASHING_AT_ONCE: Final = 2

# Where each refusal of an unlock is shown: next to the field it concerns.
_NAME_REASONS = frozenset({"licensee_mismatch"})
_KEY_REASONS = PRODUCT_KEY_REASONS - _NAME_REASONS

AUDIT_ACTIONS: Final = (
    "admin.unlock",
    "admin.release",
    "license.expired",
    "license.reverify",
    "admin-key.add",
    "admin-key.remove",
    "config.reload",
    "admin",
)
AUDIT_OUTCOMES: Final = ("accepted", "done", "refused")


class Denied(Exception):
    """A request refused with ``status`` and a sentence for the page."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(slots=True)
class Kept:
    """A product key held in the console between two requests (never put in a page)."""

    sid: str
    key: str
    created: float


@dataclass(slots=True)
class Activation:
    """A successful unlock, for its page with the live shutdown count."""

    sid: str
    message: str
    license: protocol.LicenseInfo
    clients_told: int
    generation: int
    created: float


@dataclass(slots=True)
class Viewer:
    """The logged-in user of a request."""

    user: ConsoleUser
    session: LoginSession
    csrf: str

    @property
    def is_admin(self) -> bool:
        """Whether this user may unlock and release."""
        return self.user.role == "admin"

    @property
    def actor(self) -> str:
        """How commands name this user (the audit log's ``console:alice via <kid>``)."""
        return f"console:{self.user.name}"


@dataclass
class Console:
    """Everything the pages use; built in the application's lifespan."""

    settings: ConsoleSettings
    users: UserStore
    throttle: LoginThrottle
    sessions: SessionStore
    link: DaemonLink
    feed: LiveFeed
    vendor_key: Ed25519PublicKey
    clock: Callable[[], float]
    templates: Jinja2Templates
    hashing: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(HASHING_AT_ONCE))
    kept: dict[str, Kept] = field(default_factory=dict)
    activations: dict[str, Activation] = field(default_factory=dict)
    #: Why the accounts file could not be read, as last logged ("" while it can be).
    accounts_error: str = ""


@dataclass(frozen=True, slots=True)
class ShownChange:
    """One line of the confirmation page: what a key changes, and whether it reduces."""

    sentence: str
    reduces: bool


def _templates() -> Jinja2Templates:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("floatkeyd.console", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["when"] = _when
    env.filters["utc"] = when  # floatkeyctl's: the audit table says UTC in its heading
    env.filters["features"] = _features
    return Jinja2Templates(env=env)


def _when(ms: int) -> str:
    return f"{when(ms)} UTC"


def _features(features: list[str], names: dict[str, str]) -> list[str]:
    return [names.get(f, f) for f in features]


def create_app(
    settings: ConsoleSettings,
    *,
    secret: str,
    clock: Callable[[], float] = time.monotonic,
    timeout: float = 8.0,
) -> Starlette:
    """The console application for ``settings``; ``secret`` signs the session cookies."""
    console_config = settings.console
    templates = _templates()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        link = DaemonLink(
            settings.loaded.admin_broker,
            settings.loaded.topics,
            settings.admin_key(),
            base=settings.loaded.base,
            server_key=settings.server_key(),
            timeout=timeout,
        )
        async with link, LiveFeed(link) as feed:
            app.state.console = Console(
                settings=settings,
                users=UserStore(settings.users_file),
                throttle=LoginThrottle(
                    console_config.login_failures_per_account,
                    console_config.login_failures_per_address,
                    console_config.login_window_minutes * 60,
                    clock,
                ),
                sessions=SessionStore(
                    console_config.session_idle_minutes * 60,
                    console_config.session_max_hours * 3600,
                    clock,
                ),
                link=link,
                feed=feed,
                vendor_key=settings.loaded.vendor_public_key,
                clock=clock,
                templates=templates,
            )
            yield

    routes = [
        Route("/", _home),
        Route("/login", _login_page, methods=["GET"]),
        Route("/login", _login, methods=["POST"]),
        Route("/logout", _logout, methods=["POST"]),
        Route("/license", _license),
        Route("/license/unlock", _unlock_form, methods=["GET"]),
        Route("/license/unlock", _unlock, methods=["POST"]),
        Route("/license/activated/{token}", _activated),
        Route("/clients", _clients),
        Route("/clients/release", _release_form, methods=["GET"]),
        Route("/clients/release", _release, methods=["POST"]),
        Route("/audit", _audit),
        Route("/usage", _usage),
        Route("/live/license", _live_license),
        Route("/live/clients", _live_clients),
        Route("/live/activated/{token}", _live_activated),
        Mount("/static", StaticFiles(packages=[("floatkeyd.console", "static")]), name="static"),
    ]
    middleware = [
        Middleware(SecurityHeaders, hsts=settings.https),
        Middleware(TrustedHostMiddleware, allowed_hosts=settings.allowed_hosts),
        Middleware(BodyLimit),
        Middleware(
            SessionMiddleware,
            secret_key=secret,
            session_cookie=SESSION_COOKIE,
            max_age=console_config.session_max_hours * 3600,
            same_site="strict",
            https_only=True,
        ),
    ]

    async def denied(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, Denied)
        return _page(request, "denied.html", {"message": exc.message}, status=exc.status)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return _page(request, "denied.html", {"message": exc.detail}, status=exc.status_code)

    return Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={Denied: denied, HTTPException: http_error},
    )


# --- helpers -------------------------------------------------------------------------


def _console(request: Request) -> Console:
    return request.app.state.console  # type: ignore[no-any-return]


def _page(
    request: Request, name: str, context: dict[str, Any], *, status: int = 200
) -> HTMLResponse:
    console = _console(request)
    try:
        viewer = _viewer(request)
    except Denied:
        viewer = None  # the accounts file is unreadable: this is the page that says so
    csrf = viewer.csrf if viewer else _anonymous_csrf(request)
    context = {
        "viewer": viewer,
        "csrf": csrf,
        "path": request.url.path,
        "server": console.settings.loaded.config.server,
        **context,
    }
    return console.templates.TemplateResponse(request, name, context, status_code=status)


def _anonymous_csrf(request: Request) -> str:
    token = request.session.get("csrf")
    if not isinstance(token, str):
        token = csrf_token()
        request.session["csrf"] = token
    return token


def _viewer(request: Request) -> Viewer | None:
    """The logged-in user, or ``None``; cached on the request.

    Raises ``Denied`` (503) when the accounts file cannot be read; the request then
    counts as not logged in (so the error page can be shown).
    """
    if "viewer" in request.scope:
        return request.scope["viewer"]  # type: ignore[no-any-return]
    console = _console(request)
    viewer = None
    request.scope["viewer"] = None
    session = console.sessions.get(request.session.get("sid"))
    if session is not None:
        user = _account(console, session.user)
        if user is None or user.stamp != session.stamp:
            console.sessions.end(session.sid)  # removed, or the password changed
        else:
            viewer = Viewer(user, session, str(request.session.get("csrf", "")))
    request.scope["viewer"] = viewer
    return viewer


ACCOUNTS_UNREADABLE: Final = (
    "The console cannot read its accounts file, so nobody can log in or go on working "
    "now. The server's administrator finds why in the console's log "
    "(journalctl -u floatkey-console) and fixes the file, or adds the accounts again "
    "with `floatkeyctl console-user add`."
)


def _account(console: Console, name: str) -> ConsoleUser | None:
    """The account ``name``; raises ``Denied`` (503) when the accounts file is unreadable."""
    try:
        user = console.users.get(name)
    except ConsoleUserError as exc:
        raise _accounts_unreadable(console, exc) from None
    console.accounts_error = ""
    return user


def _accounts_unreadable(console: Console, exc: ConsoleUserError) -> Denied:
    """The 503 for an unreadable accounts file, logged once for as long as it lasts."""
    if exc.message != console.accounts_error:
        log.error("accounts file unreadable", error=exc.message)
        console.accounts_error = exc.message
    return Denied(503, ACCOUNTS_UNREADABLE)


def _login_redirect(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse("/login?" + urlencode({"next": target}), status_code=303)


class _NotLoggedIn(Exception):
    pass


def _require(request: Request, *, admin: bool = False) -> Viewer:
    viewer = _viewer(request)
    if viewer is None:
        raise _NotLoggedIn
    if admin and not viewer.is_admin:
        log.warning("viewer refused an admin action", user=viewer.user.name, path=request.url.path)
        raise Denied(
            403,
            f"{viewer.user.name} is a viewer: only console administrators may do this. "
            "Ask one to do it, or to give you the admin role.",
        )
    return viewer


async def _form(request: Request, viewer: Viewer | None) -> dict[str, str]:
    """The posted form, once its CSRF token is checked (403 when missing or stale)."""
    async with request.form(max_files=0, max_fields=16, max_part_size=8192) as form:
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
    expected = viewer.csrf if viewer else request.session.get("csrf")
    if not same_token(fields.get("csrf"), expected):
        raise Denied(
            403,
            "This form has expired (it was opened before a log-in or log-out, or in "
            "another session). Go back, reload the page and try again.",
        )
    return fields


def _guarded(
    handler: Callable[[Request], Any],
) -> Callable[[Request], Any]:
    async def run(request: Request) -> Response:
        try:
            return await handler(request)  # type: ignore[no-any-return]
        except _NotLoggedIn:
            return _login_redirect(request)

    run.__name__ = handler.__name__
    return run


def _trim(text: str, limit: int) -> str:
    return text.strip()[:limit]


def _cleanup(console: Console) -> None:
    now = console.clock()
    for token, kept in list(console.kept.items()):
        if now - kept.created > KEPT_KEY_S:
            del console.kept[token]
    for token, activation in list(console.activations.items()):
        if now - activation.created > ACTIVATION_S:
            del console.activations[token]
    while len(console.kept) > 1000:
        console.kept.pop(next(iter(console.kept)))
    while len(console.activations) > 1000:
        console.activations.pop(next(iter(console.activations)))


async def _ask(console: Console, command: protocol.AdminCommand) -> protocol.AdminResult | str:
    """The daemon's answer, or why it could not be had (a sentence for the page)."""
    try:
        return await console.link.send(command)
    except DaemonUnreachable as exc:
        return exc.message
    except FloatkeyError as exc:  # the console's key file or config went bad
        return exc.message


# --- log-in --------------------------------------------------------------------------


async def _home(_request: Request) -> Response:
    return RedirectResponse("/license", status_code=303)


def _safe_next(target: str) -> str:
    # Only a path on this console: never "//evil.example" or "https://...".
    if target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/license"


async def _login_page(request: Request) -> Response:
    if _viewer(request) is not None:
        return RedirectResponse(_safe_next(request.query_params.get("next", "")), 303)
    return _page(request, "login.html", {"error": "", "name": "", "next": _next(request)})


def _next(request: Request) -> str:
    return _safe_next(request.query_params.get("next", "/license"))


async def _login(request: Request) -> Response:
    console = _console(request)
    form = await _form(request, None)
    name = _trim(form.get("user", ""), 64).lower()
    password = form.get("password", "")
    target = _safe_next(form.get("next", "/license"))
    address = request.client.host if request.client else "unknown"
    # Counted before the password is checked: parallel attempts cannot pass the limit
    # together while their passwords are being hashed.
    wait = console.throttle.begin(name, address)
    if wait > 0:
        minutes = max(1, round(wait / 60))
        log.warning("log-in refused: too many failures", user=name[:32], address=address)
        return _page(
            request,
            "login.html",
            {
                "error": f"Too many failed log-ins. Try again in {minutes} minute"
                f"{'s' if minutes != 1 else ''}.",
                "name": name,
                "next": target,
            },
            status=429,
        )
    try:
        async with console.hashing:
            user = await asyncio.to_thread(console.users.verify, name, password)
    except ConsoleUserError as exc:
        console.throttle.cancelled(name, address)  # not the person's failure
        raise _accounts_unreadable(console, exc) from None
    console.accounts_error = ""
    if user is None:
        log.warning("log-in failed", user=name[:32], address=address)
        return _page(
            request,
            "login.html",
            {"error": "The user name or the password is wrong.", "name": name, "next": target},
            status=401,
        )
    console.throttle.succeeded(name, address)
    session = console.sessions.create(user.name, user.stamp)
    # A new session id and a new CSRF token: nothing from before the log-in carries over.
    request.session.clear()
    request.session.update({"sid": session.sid, "csrf": csrf_token()})
    log.info("log-in", user=user.name, role=user.role, address=address)
    return RedirectResponse(target, status_code=303)


async def _logout(request: Request) -> Response:
    viewer = _viewer(request)
    await _form(request, viewer)
    if viewer is not None:
        _console(request).sessions.end(viewer.session.sid)
        log.info("log-out", user=viewer.user.name)
    request.session.clear()
    request.session["csrf"] = csrf_token()
    return RedirectResponse("/login", status_code=303)


# --- License Management --------------------------------------------------------------


def _license_view(status: protocol.StatusReport | None) -> dict[str, Any]:
    """What the license panel shows, from a status report."""
    if status is None:
        return {"status": None}
    info = status.license
    today = dt.datetime.now(dt.UTC).date()
    days_left = None
    if info is not None and info.expires:
        days_left = (dt.date.fromisoformat(info.expires) - today).days
    if status.days_left is not None:  # the daemon's count, by its clock, as its warnings
        days_left = status.days_left
    seats = info.seats if info else 0
    return {
        "status": status,
        "license": info,
        "names": status.feature_names,
        "days_left": days_left,
        "seats": seats,
        "percent": min(100, round(100 * status.seats_in_use / seats)) if seats else 0,
    }


@_guarded
async def _license(request: Request) -> Response:
    console = _console(request)
    viewer = _require(request)
    answer = await _ask(
        console, protocol.AdminStatus(request_id=console.link.request_id(), user=viewer.actor)
    )
    error, status = _status_of(answer)
    notice = request.query_params.get("notice", "")
    notices = {"already_active": "This product key is already the active license: nothing changed."}
    return _page(
        request,
        "license.html",
        {**_license_view(status), "error": error, "notice": notices.get(notice, "")},
    )


def _status_of(answer: protocol.AdminResult | str) -> tuple[str, protocol.StatusReport | None]:
    if isinstance(answer, str):
        return answer, None
    if not answer.ok or answer.status is None:
        return f"The license server refused the console ({answer.reason}): {answer.message}", None
    return "", answer.status


@_guarded
async def _unlock_form(request: Request) -> Response:
    console = _console(request)
    viewer = _require(request, admin=True)
    answer = await _ask(
        console, protocol.AdminStatus(request_id=console.link.request_id(), user=viewer.actor)
    )
    _, status = _status_of(answer)
    info = status.license if status else None
    return _page(
        request,
        "unlock.html",
        _unlock_context(
            name=info.licensee if info else "", organization=info.organization if info else ""
        ),
    )


def _unlock_context(  # noqa: PLR0913 - the form's fields
    *,
    name: str = "",
    organization: str = "",
    errors: dict[str, str] | None = None,
    kept: str = "",
    kept_key: str = "",
    form_error: str = "",
) -> dict[str, Any]:
    return {
        "name": name,
        "organization": organization,
        "errors": errors or {},
        "kept": kept,
        "kept_key": kept_key,
        "form_error": form_error,
    }


@_guarded
async def _unlock(request: Request) -> Response:  # noqa: C901, PLR0911, PLR0912 - one step per outcome
    console = _console(request)
    viewer = _require(request, admin=True)
    form = await _form(request, viewer)
    _cleanup(console)
    if form.get("cancel"):
        console.kept.pop(form.get("kept", ""), None)
        return RedirectResponse("/license", status_code=303)
    name = _trim(form.get("name", ""), 256)
    organization = _trim(form.get("organization", ""), 256)
    key = " ".join(form.get("key", "").split())[:2048]
    kept_token = form.get("kept", "")
    kept = console.kept.get(kept_token)
    if kept is not None and kept.sid != viewer.session.sid:
        kept = None
    if not key and kept is not None:
        key = kept.key
    errors: dict[str, str] = {}
    if not name:
        errors["name"] = "Enter the licensee's name as it appears on your license certificate."
    if not organization:
        errors["organization"] = "Enter the organization as it appears on your license certificate."
    if not key:
        errors["key"] = "Paste the product key you received from your vendor."
    if errors:
        return _unlock_again(
            request, console, viewer, name=name, organization=organization, key=key, errors=errors
        )

    confirmed = form.get("confirm") == "yes" and kept is not None
    if not confirmed:
        changes = await _changes(console, viewer, key, name, organization)
        if any(change.reduces for change in changes):
            token = _keep(console, viewer, key)
            return _page(
                request,
                "confirm_unlock.html",
                {
                    "changes": changes,
                    "kept": token,
                    "kept_key": redact(key),
                    "name": name,
                    "organization": organization,
                },
            )

    answer = await _ask(
        console,
        protocol.AdminUnlock(
            request_id=console.link.request_id(),
            user=viewer.actor,
            name=name,
            organization=organization,
            key=key,
        ),
    )
    if isinstance(answer, str):
        log.warning("unlock not sent", user=viewer.user.name, key=redact(key))
        return _unlock_again(
            request,
            console,
            viewer,
            name=name,
            organization=organization,
            key=key,
            errors={},
            form_error=answer,
            status=503,
        )
    if not answer.ok:
        log.info("unlock refused", user=viewer.user.name, reason=answer.reason, key=redact(key))
        # The refusal goes by the field it concerns; a refused key is not shown again.
        sentence, shown_key, form_error = answer.message, key, ""
        if answer.reason in _KEY_REASONS:
            errors["key"], shown_key = sentence, ""
        elif answer.reason in _NAME_REASONS:
            for field_name in _mismatched_fields(key, name, organization):
                errors[field_name] = sentence
        else:
            form_error = sentence
        return _unlock_again(
            request,
            console,
            viewer,
            name=name,
            organization=organization,
            key=shown_key,
            errors=errors,
            form_error=form_error,
        )
    if kept is not None:
        console.kept.pop(kept_token, None)
    report = answer.unlock
    log.info("unlock", user=viewer.user.name, reason=answer.reason, key=redact(key))
    if report is None or not report.changed:
        return RedirectResponse("/license?notice=already_active", status_code=303)
    token = secrets.token_urlsafe(16)
    console.activations[token] = Activation(
        sid=viewer.session.sid,
        message=answer.message,
        license=report.license,
        clients_told=report.clients_told,
        generation=report.generation,
        created=console.clock(),
    )
    return RedirectResponse(f"/license/activated/{token}", status_code=303)


def _mismatched_fields(key: str, name: str, organization: str) -> tuple[str, ...]:
    """The form fields a licensee mismatch concerns: those the key names.

    A format 2 key tells the name from the organization (either, or both); a format 1
    key cannot, and then the sentence goes by the organization, the field entered last.
    """
    try:
        parse_product_key(key).key.check_licensee(name, organization)
    except LicenseeMismatch as mismatch:
        if mismatch.fields:
            return mismatch.fields
    except ProductKeyError:
        pass
    return ("organization",)


async def _changes(
    console: Console, viewer: Viewer, key: str, name: str, organization: str
) -> list[ShownChange]:
    """What the key would change, if it is good here and a license is active.

    A key this console cannot verify goes to the daemon as it is: its refusal (with the
    reason, and an audit row) is the answer.
    """
    try:
        record = verify_product_key(key, console.vendor_key, name=name, organization=organization)
    except ProductKeyError:
        return []
    answer = await _ask(
        console, protocol.AdminStatus(request_id=console.link.request_id(), user=viewer.actor)
    )
    _, status = _status_of(answer)
    if status is None or status.license is None or status.status == "unlicensed":
        return []
    changes = license_changes(status.license, record)
    # The same before -> after lines as floatkeyctl's question, one rule for both tools.
    lines = change_lines(changes, status.feature_names)
    return [
        ShownChange(sentence=" ".join(line.split()), reduces=change.reduces)
        for change, line in zip(changes, lines, strict=True)
    ]


def _keep(console: Console, viewer: Viewer, key: str) -> str:
    token = secrets.token_urlsafe(16)
    console.kept[token] = Kept(viewer.session.sid, key, console.clock())
    return token


def _unlock_again(  # noqa: PLR0913 - the form's fields and what went wrong
    request: Request,
    console: Console,
    viewer: Viewer,
    *,
    name: str,
    organization: str,
    key: str,
    errors: dict[str, str],
    form_error: str = "",
    status: int = 422,
) -> Response:
    """The unlock form again, with the reasons; a key is kept in the console, not the page."""
    kept = _keep(console, viewer, key) if key else ""
    return _page(
        request,
        "unlock.html",
        _unlock_context(
            name=name,
            organization=organization,
            errors=errors,
            kept=kept,
            kept_key=redact(key) if key else "",
            form_error=form_error,
        ),
        status=status,
    )


def _activation(request: Request, viewer: Viewer) -> Activation:
    activation = _console(request).activations.get(request.path_params["token"])
    if activation is None or activation.sid != viewer.session.sid:
        raise Denied(404, "This activation is not known here (any more): see License Management.")
    return activation


def _shutdown_view(
    activation: Activation, snapshot_status: protocol.StatusReport | None
) -> dict[str, Any]:
    told = activation.clients_told
    left = told
    if snapshot_status is not None and snapshot_status.generation == activation.generation:
        left = min(told, snapshot_status.awaiting_release)
    elif snapshot_status is not None:
        left = 0  # another license change since: these clients were told again
    done = told - left
    return {
        "told": told,
        "done": done,
        "left": left,
        "percent": round(100 * done / told) if told else 100,
    }


@_guarded
async def _activated(request: Request) -> Response:
    console = _console(request)
    viewer = _require(request)
    activation = _activation(request, viewer)
    answer = await _ask(
        console, protocol.AdminStatus(request_id=console.link.request_id(), user=viewer.actor)
    )
    error, status = _status_of(answer)
    names = status.feature_names if status else {}
    return _page(
        request,
        "activated.html",
        {
            "activation": activation,
            "token": request.path_params["token"],
            "names": names,
            "error": error,
            **_shutdown_view(activation, status),
        },
    )


# --- clients -------------------------------------------------------------------------


@_guarded
async def _clients(request: Request) -> Response:
    console = _console(request)
    viewer = _require(request)
    answer = await _ask(
        console, protocol.AdminClients(request_id=console.link.request_id(), user=viewer.actor)
    )
    error = answer if isinstance(answer, str) else ""
    if not isinstance(answer, str) and not answer.ok:
        error = f"The license server refused the console ({answer.reason}): {answer.message}"
    rows = answer.clients or [] if not isinstance(answer, str) else []
    denials = answer.denials or [] if not isinstance(answer, str) else []
    queue = answer.queue or [] if not isinstance(answer, str) else []
    # Set by this session's own release, never taken from the address: a link cannot
    # put words on this page.
    released = request.session.pop("released", "")
    if not isinstance(released, str) or not protocol.CLIENT_ID.fullmatch(released):
        released = ""
    return _page(
        request,
        "clients.html",
        {
            "clients": rows,
            "denials": list(reversed(denials))[:20],
            "queue": queue,
            "error": error,
            "released": released,
        },
    )


async def _client_row(console: Console, viewer: Viewer, client: str) -> protocol.ClientRow | None:
    answer = await _ask(
        console, protocol.AdminClients(request_id=console.link.request_id(), user=viewer.actor)
    )
    if isinstance(answer, str) or not answer.ok:
        return None
    return next((c for c in answer.clients or [] if c.client == client), None)


@_guarded
async def _release_form(request: Request) -> Response:
    console = _console(request)
    viewer = _require(request, admin=True)
    client = request.query_params.get("client", "")[:128]
    row = await _client_row(console, viewer, client)
    if row is None:
        raise Denied(404, f"No client {client!r} holds a seat now: see Clients.")
    return _page(request, "confirm_release.html", {"client": row})


@_guarded
async def _release(request: Request) -> Response:
    console = _console(request)
    viewer = _require(request, admin=True)
    form = await _form(request, viewer)
    client = form.get("client", "")[:128]
    if form.get("cancel"):
        return RedirectResponse("/clients", status_code=303)
    if not protocol.CLIENT_ID.fullmatch(client):
        raise Denied(404, "No such client holds a seat now: see Clients.")
    answer = await _ask(
        console,
        protocol.AdminRelease(
            request_id=console.link.request_id(), user=viewer.actor, client=client
        ),
    )
    if isinstance(answer, str):
        raise Denied(503, answer)
    if not answer.ok:
        raise Denied(409, answer.message)
    log.info("release", user=viewer.user.name, client=client)
    request.session["released"] = client  # the notice on the next Clients page
    return RedirectResponse("/clients", status_code=303)


# --- audit log -----------------------------------------------------------------------


@_guarded
async def _audit(request: Request) -> Response:
    console = _console(request)
    viewer = _require(request)
    action = request.query_params.get("action", "")
    outcome = request.query_params.get("outcome", "")
    before_text = request.query_params.get("before", "")
    before = int(before_text) if before_text.isdigit() and len(before_text) < 16 else 0
    answer = await _ask(
        console,
        protocol.AdminAudit(
            request_id=console.link.request_id(),
            user=viewer.actor,
            action=action if action in AUDIT_ACTIONS else None,
            outcome=outcome if outcome in AUDIT_OUTCOMES else None,
            before_seq=before,
            newest_first=True,
            limit=AUDIT_PAGE,
        ),
    )
    error = answer if isinstance(answer, str) else ""
    rows: list[protocol.AuditRow] = []
    if not isinstance(answer, str):
        if answer.ok:
            rows = answer.audit or []
        else:
            error = f"The license server refused the console ({answer.reason}): {answer.message}"
    older = ""
    if len(rows) == AUDIT_PAGE:
        query = {"before": str(rows[-1].seq)}
        query.update({k: v for k, v in (("action", action), ("outcome", outcome)) if v})
        older = "/audit?" + urlencode(query)
    return _page(
        request,
        "audit.html",
        {
            "rows": list(zip(rows, _details(rows), strict=True)),
            "error": error,
            "actions": AUDIT_ACTIONS,
            "outcomes": AUDIT_OUTCOMES,
            "action": action,
            "outcome": outcome,
            "older": older,
            "paged": bool(before),
        },
    )


@_guarded
async def _usage(request: Request) -> Response:
    """Seat usage over a period: the summary, a chart, and the figures as a table."""
    console = _console(request)
    viewer = _require(request)
    period = period_of(request.query_params.get("range", ""))
    command = protocol.AdminUsage(
        request_id=console.link.request_id(),
        user=viewer.actor,
        since=period.since(protocol.now_ms()),
        bucket=period.bucket,
    )
    answer = await _ask(console, command)
    report, error = None, answer if isinstance(answer, str) else ""
    if not isinstance(answer, str):
        if answer.ok:
            report = answer.usage
        else:
            error = f"The license server refused the console ({answer.reason}): {answer.message}"
    return _page(request, "usage.html", usage_context(period, report, error))


def _details(rows: list[protocol.AuditRow]) -> list[str]:
    """Each row's detail as ``key: value`` pairs.

    Read as ``floatkeyctl audit --json`` reads it: a JSON object, other text as ``text``.
    """
    shown = []
    for entry in audit_of(rows).entries:
        pairs = (
            (k, ", ".join(map(str, v)) if isinstance(v, list) else v)
            for k, v in entry.detail.items()
        )
        shown.append("; ".join(f"{k}: {v}" for k, v in pairs)[:300])
    return shown


# --- live parts (Server-Sent Events) -------------------------------------------------


def _stream(
    request: Request,
    render: Callable[[Snapshot], str],
) -> Response:
    """An SSE stream of ``render(snapshot)`` at every change, while the session lives.

    The session is checked every second as a page request checks it: the stream ends
    when it expired or was logged out, and when its account was removed or its password
    changed (or the accounts file cannot be read any more).
    """
    console = _console(request)
    viewer = _viewer(request)
    if viewer is None:
        return Response(status_code=401)
    sid = viewer.session.sid

    async def events() -> AsyncIterator[str]:
        yield "retry: 3000\n\n"
        loop = asyncio.get_running_loop()
        async with console.feed.watching():
            shown = console.feed.first_to_show()
            quiet_since = loop.time()
            while True:
                if not _session_stands(console, sid):
                    yield _sse_event("expired", "")
                    return
                snapshot = await console.feed.next_change(shown, SESSION_CHECK_S)
                if snapshot is None:
                    if loop.time() - quiet_since >= HEARTBEAT_S:
                        quiet_since = loop.time()
                        yield ": still here\n\n"
                    continue
                quiet_since = loop.time()
                shown = snapshot.version
                yield _sse_event("update", render(snapshot))

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


def _session_stands(console: Console, sid: str) -> bool:
    """Whether session ``sid`` goes on, by the checks a page request makes."""
    session = console.sessions.peek(sid)
    if session is None:
        return False
    try:
        user = console.users.get(session.user)
    except ConsoleUserError as exc:
        _accounts_unreadable(console, exc)  # logged once
        return False
    if user is None or user.stamp != session.stamp:
        console.sessions.end(sid)  # removed, or the password changed
        return False
    return True


def _sse_event(event: str, data: str) -> str:
    """One Server-Sent Event: each line of ``data`` on its own ``data:`` line."""
    lines = "".join(f"data: {line}\n" for line in data.split("\n"))
    return f"event: {event}\n{lines}\n"


@_guarded
async def _live_license(request: Request) -> Response:
    viewer = _require(request)
    template = _console(request).templates.get_template("_license_panel.html")

    def render(snapshot: Snapshot) -> str:
        return template.render(
            viewer=viewer, error=snapshot.error, **_license_view(snapshot.status)
        )

    return _stream(request, render)


@_guarded
async def _live_clients(request: Request) -> Response:
    viewer = _require(request)
    template = _console(request).templates.get_template("_clients_table.html")

    def render(snapshot: Snapshot) -> str:
        return template.render(viewer=viewer, clients=snapshot.clients, error=snapshot.error)

    return _stream(request, render)


@_guarded
async def _live_activated(request: Request) -> Response:
    viewer = _require(request)
    activation = _activation(request, viewer)
    template = _console(request).templates.get_template("_shutdown.html")

    def render(snapshot: Snapshot) -> str:
        return template.render(error=snapshot.error, **_shutdown_view(activation, snapshot.status))

    return _stream(request, render)
