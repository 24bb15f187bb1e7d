"""The client agent: holds a seat, knows the features, and says when to stop.

::

    async with Agent(config) as agent:
        if agent.is_enabled("dataflow"):
            ...
        reason = await agent.shutdown_requested   # a new license, expiry, revocation, lost
                                                  # seat, offline

``Agent`` owns one ``asyncio.TaskGroup`` of named tasks, entered and left through an
``AsyncExitStack`` that hands a cancellation of the caller's back to the caller:

``connection``  connect (reconnect with capped, jittered backoff), subscribe, handle messages
``seat``        renews the lease at the interval the daemon asked for; after a lost seat,
                asks again, and asks the application to stop if it has none by the time
                the last lease would have run out
``offline``     notices a daemon that stopped answering behind a running broker, and asks
                the application to stop when the daemon has been silent too long
``shutdown``    once a stop is requested: the application's hooks, then the seat release

While a borrow token is held (``floatkey-agent borrow``, :meth:`Agent.borrow`), the agent
runs without the server instead: the features are the token's, nothing is renewed, and
no offline grace applies; ``borrow-end`` asks the application to stop when the borrow
ends. The connection task still reaches the broker when it can: a new license, or an
administrator's release of the borrowed seat, stops the application as usual.

Every daemon message is verified against the pinned server key before it is parsed;
anything unsigned, wrongly signed, addressed to another topic or replayed is dropped,
logged and counted in :attr:`Agent.drops`.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import os
import random
import secrets
import socket
import time
from collections import Counter
from typing import TYPE_CHECKING, Literal, Self, TypeVar

import aiomqtt
import msgspec
import structlog

from floatkey import borrow as borrowing
from floatkey import protocol
from floatkey.broker import Backoff, connect, connection_advice, settled
from floatkey.envelope import EnvelopeError, open_envelope
from floatkey.errors import (
    BorrowError,
    ConfigError,
    FeatureNotLicensed,
    NoAnswer,
    ServerKeyChanged,
)
from floatkey.hostid import default_client_id
from floatkey.licensefile import SignedSeat
from floatkey.notices import (
    Denial,
    ExpiryWarning,
    LicenseView,
    ShutdownCode,
    ShutdownReason,
    ShutdownSignal,
)
from floatkey.outage import OutageLog
from floatkey.pinning import KnownServers, signed_identity
from floatkey.protocol import (
    SeatCancel,
    SeatDenied,
    SeatGranted,
    SeatIdleWarning,
    SeatLost,
    SeatQueued,
    SeatRelease,
    SeatRenew,
    SeatRenewed,
    SeatRequest,
    SeatRevoked,
    StateRequest,
)
from floatkey.signing import key_id, parse_public_key, public_key_text

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from types import TracebackType

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from floatkey.config import LoadedAgentConfig

# The value types live in floatkey.notices; they are re-exported here, where they were
# first defined, for code that imports them from floatkey.agent.
__all__ = [
    "Agent",
    "Denial",
    "ExpiryWarning",
    "LicenseView",
    "ShutdownCode",
    "ShutdownReason",
    "ShutdownSignal",
    "default_client_id",
]

log = structlog.get_logger("floatkey.agent")

# Without a seat, ask again every renew_after_s of the last grant, within these bounds.
_RETRY_MIN_S, _RETRY_MAX_S = 1.0, 60.0
_LEASE_MAX_S = 86_400.0
_Told = TypeVar("_Told")
# In borrowed mode the daemon answers borrow checks, an administrator's release of the
# borrowed seat comes as a seat.revoked (of the token's lease), and the daemon's answer to
# the state.request sent with the check is the state.
_borrow_reply_decoder: msgspec.json.Decoder[
    protocol.BorrowReply | protocol.SeatRevoked | protocol.State
] = msgspec.json.Decoder(protocol.BorrowReply | protocol.SeatRevoked | protocol.State)


class Agent:
    """A licensed client. ``async with Agent(loaded_config) as agent:``.

    Entering connects, requests a seat and returns once the daemon answered (granted or
    denied), or raises ``NoAnswer`` after ``connect_timeout`` seconds, ``ServerKeyChanged``
    when the server's key is not the pinned one, ``ConfigError`` when the server key is
    to be trusted on first use and ``state_file`` cannot keep it. Leaving runs the
    shutdown hooks if a stop was requested, releases the seat and disconnects.
    """

    def __init__(  # noqa: PLR0915 - the options an application may set; its state
        self,
        loaded: LoadedAgentConfig,
        *,
        app: str | None = None,
        client_id: str | None = None,
        wait_for_seat: bool | None = None,
        track_activity: bool | None = None,
    ) -> None:
        self._loaded = loaded
        self.config = loaded.config
        self.topics = loaded.config.topics
        self.app = app if app is not None else self.config.app
        self.client_id = self.config.own_client_id(client_id or default_client_id(self.app))
        if not protocol.CLIENT_ID.fullmatch(self.client_id):
            msg = f"client id {self.client_id!r} may use only letters, digits and . _ : -"
            raise ValueError(msg)
        self.shutdown_requested = ShutdownSignal()
        #: Wait in the server's queue when every seat is taken (``seat.queued``).
        self.wait_for_seat = self.config.wait_for_seat if wait_for_seat is None else wait_for_seat
        #: Report activity (:meth:`touch`): the server may then reclaim the seat when idle.
        self.track_activity = (
            self.config.track_activity if track_activity is None else track_activity
        )
        #: While waiting for a seat: the server's latest word on the place in the queue.
        self.queued: SeatQueued | None = None
        self._last_active = time.monotonic()
        # The last activity the server was told of (in the latest request or renewal).
        self._reported_active = self._last_active
        self._idle_warned = False
        self._idle_listeners: list[Callable[[SeatIdleWarning], None]] = []
        self._activity_probes: list[Callable[[], None]] = []
        self._probing = False
        self.drops: Counter[str] = Counter()
        #: Exceptions raised by ``on_license_change`` and ``on_lease_change`` listeners,
        #: by listener name.
        self.listener_failures: Counter[str] = Counter()
        self.denial: Denial | None = None
        #: The latest ``license.expiring`` warning of the current license, if any.
        self.expiring: ExpiryWarning | None = None
        self._hooks: list[Callable[[ShutdownReason], Awaitable[None]]] = []
        self._license_listeners: list[Callable[[LicenseView], None]] = []
        self._lease_listeners: list[Callable[[SignedSeat], None]] = []
        self._expiry_listeners: list[Callable[[ExpiryWarning], None]] = []
        self._key_changed = asyncio.Event()
        self._offered_kid = ""  # the fingerprint of a key offered instead of the pinned one
        self._reading_retained = False
        # Whether the daemon's own answer to a state.request came on this connection:
        # until it does, every seat message sent goes with another state.request.
        self._synced = False
        self._identity_asked = False
        # The retained identity seen while the daemon's signed one was asked for.
        self._retained_key: Ed25519PublicKey | None = None
        self._kid_of: Ed25519PublicKey | None = None
        self._kid = ""
        self._known_servers = KnownServers(loaded.state_path())
        self._server_key: Ed25519PublicKey | None = (
            parse_public_key(self.config.server_key) if self.config.server_key else None
        )
        self._state: protocol.State | None = None
        self._grant: SeatGranted | None = None
        # The last seat held, kept after it is lost: its generation is the license the
        # application runs under, and its renew_after_s paces the requests for another.
        self._last_grant: SeatGranted | None = None
        self._lost_at: float | None = None  # monotonic; set while a lost seat is not back
        # The envelopes of the current grant and of its latest renewal, as verified: the
        # application can check them itself (floatkey.licensefile).
        self._grant_envelope: bytes | None = None
        self._renewal_envelope: bytes | None = None
        self._lease_ends = 0.0  # monotonic: when the last lease the daemon gave runs out
        self._seat_changed = asyncio.Event()
        self._nonce = ""
        self._answered = asyncio.Event()
        self._identity_seen = asyncio.Event()
        self._connected = asyncio.Event()
        self._broker_error: str | None = None  # the last failed connection's reason
        # The current connection: cancelled (rescheduled to now) to move to the next
        # broker address when the daemon is silent through this one; since when it is up.
        self._leave: asyncio.Timeout | None = None
        self._connected_at = 0.0
        self._moving_on = False
        #: The broker address connected to now (``mqtt://host:port``), or ``None``.
        self.connected_to: str | None = None
        self._outage = OutageLog(self.client_id, self.config.broker.describe())
        self._client: aiomqtt.Client | None = None
        self._last_contact = time.monotonic()
        self._stack: contextlib.AsyncExitStack | None = None
        self._tasks: asyncio.TaskGroup | None = None
        self._children: list[asyncio.Task[None]] = []
        self._released = False
        self._closing = False
        #: The borrow the agent runs under (no server needed), if any.
        self.borrowed: borrowing.HeldBorrow | None = None
        #: Why a borrow token held was not used (edited, another computer's), if so.
        self.borrow_problem: BorrowError | None = None
        self._shutdown_task: asyncio.Task[None] | None = None

    # --- what the application reads -------------------------------------------------

    @property
    def license(self) -> LicenseView:
        """The verified current license state (``unlicensed`` until one is seen)."""
        state = self._state
        held = self.borrowed
        if held is not None and (state is None or state.generation <= held.token.generation):
            token = held.token
            return LicenseView(
                status="licensed",
                generation=token.generation,
                licensee=token.licensee,
                organization=token.organization,
                features=frozenset(token.features),
            )
        if state is None:
            return LicenseView(status="unlicensed", generation=0)
        info = state.license
        if info is None:
            return LicenseView(status=state.status, generation=state.generation)
        return LicenseView(
            status=state.status,
            generation=state.generation,
            licensee=info.licensee,
            organization=info.organization,
            seats=info.seats,
            features=frozenset(info.features),
            expires=info.expires,
        )

    @property
    def has_seat(self) -> bool:
        """Whether the agent holds a seat (or, on an unlicensed server, a session)."""
        return self._grant is not None and not self._released

    @property
    def licensed(self) -> bool:
        """Whether the seat is a licensed one (not an unlicensed session)."""
        return self.has_seat and self._grant is not None and self._grant.licensed

    @property
    def generation(self) -> int | None:
        """The license generation the seat was granted under."""
        return self._grant.generation if self._grant else None

    @property
    def features(self) -> frozenset[str]:
        """The features this client may use: none without a licensed seat."""
        if not self.licensed or self._grant is None:
            return frozenset()
        return frozenset(self._grant.features)

    @property
    def signed_seat(self) -> SignedSeat | None:
        """The daemon's signed grant of the seat held and its latest renewal (or ``None``)."""
        key = self._server_key
        if not self.has_seat or self._grant_envelope is None or key is None:
            return None
        return SignedSeat(
            server_key=public_key_text(key),
            topic=self.topics.client(self.client_id),
            grant=self._grant_envelope,
            renewal=self._renewal_envelope,
        )

    def is_enabled(self, feature: str) -> bool:
        """Whether ``feature`` may be used now."""
        return feature in self.features

    def require(self, feature: str) -> None:
        """Raise ``FeatureNotLicensed`` unless ``feature`` may be used now."""
        if self.is_enabled(feature):
            return
        view = self.license
        if not self.has_seat:
            why = self.denial.message if self.denial else "This client holds no seat."
        elif view.status == "unlicensed":
            why = "The license server has no license yet."
        else:
            why = f"The license of {view.organization or 'this server'} does not include it."
        raise FeatureNotLicensed(f"The feature {feature!r} is not licensed. {why}", feature=feature)

    def on_shutdown(self, hook: Callable[[ShutdownReason], Awaitable[None]]) -> None:
        """Register an async hook run (bounded by ``hook_timeout``) before the seat is released."""
        self._hooks.append(hook)

    def on_license_change(self, listener: Callable[[LicenseView], None]) -> None:
        """Call ``listener`` with the new view whenever a newer verified state arrives.

        An exception raised by ``listener`` is logged with its name and counted in
        :attr:`listener_failures`; the agent and the other listeners go on.
        """
        self._license_listeners.append(listener)

    def on_lease_change(self, listener: Callable[[SignedSeat], None]) -> None:
        """Call ``listener`` with :attr:`signed_seat` whenever a grant or a renewal is accepted.

        An exception raised by ``listener`` is logged with its name and counted in
        :attr:`listener_failures`; the agent and the other listeners go on.
        """
        self._lease_listeners.append(listener)

    def on_idle_warning(self, listener: Callable[[SeatIdleWarning], None]) -> None:
        """Call ``listener`` when the server warns that the idle seat will be reclaimed.

        The warning's ``message`` is a sentence to show ("Your seat will be released in 5
        minutes unless you continue working."); :meth:`touch` before ``reclaim_at``
        keeps the seat. Only with ``track_activity``.
        """
        self._idle_listeners.append(listener)

    def on_activity_report(self, probe: Callable[[], None]) -> None:
        """Call ``probe`` just before activity is reported to the server (each renewal).

        For activity read from elsewhere (a file's time, say): ``probe`` calls
        :meth:`touch`, and the renewal being sent carries it. An exception it raises is
        logged and counted in :attr:`listener_failures`.
        """
        self._activity_probes.append(probe)

    def touch(self, ago: float = 0.0) -> None:
        """The user did something (``ago`` seconds ago): the seat is in use. Cheap.

        Call it on user input. Costs no message, except after an idle warning: then the
        server is told at once. Call it in the agent's event loop thread; from another
        thread use ``loop.call_soon_threadsafe(agent.touch)``.
        """
        self._last_active = max(self._last_active, time.monotonic() - max(ago, 0.0))
        if self._idle_warned:
            self._idle_warned = False
            grant = self._grant
            if (
                grant is not None
                and self._tasks is not None
                and not self._closing
                and not self._probing  # a renewal is being written: it tells the server
            ):
                self._tasks.create_task(
                    self._send(self._renewal(grant), "renew"),
                    name=f"agent-touch-{self.client_id}",
                )

    @property
    def idle_warned(self) -> bool:
        """Whether the server warned that the idle seat will be reclaimed (until a touch)."""
        return self._idle_warned

    async def wait_for_grant(self) -> bool:
        """While queued, wait until a seat is granted (``True``) or the wait ends (``False``).

        The wait ends with :attr:`denial` set (``queue_full``, ``queue_timeout``).
        """
        while not self.has_seat and self.queued is not None:
            self._seat_changed.clear()
            await self._seat_changed.wait()
        return self.has_seat

    def _idle_ms(self) -> int | None:
        if not self.track_activity:
            return None
        self._probing = True
        try:
            for probe in self._activity_probes:
                try:
                    probe()
                except Exception:
                    name = _callable_name(probe)
                    self.listener_failures[name] += 1
                    log.exception("activity probe failed", client=self.client_id, listener=name)
        finally:
            self._probing = False
        self._reported_active = self._last_active
        return min(round((time.monotonic() - self._last_active) * 1000), 366 * 86_400_000)

    def _renewal(self, grant: SeatGranted) -> SeatRenew:
        return SeatRenew(client=self.client_id, lease=grant.lease, idle_ms=self._idle_ms())

    def on_license_expiring(self, listener: Callable[[ExpiryWarning], None]) -> None:
        """Call ``listener`` when the license server warns that its license expires soon.

        The server sends the warning at its ``[license] warn_days`` (30, 7 and 1 days
        before the last day, by default), once each; nothing has to stop. An exception
        raised by ``listener`` is logged with its name and counted in
        :attr:`listener_failures`; the agent and the other listeners go on.
        """
        self._expiry_listeners.append(listener)

    # --- lifecycle ----------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._stack is not None:
            msg = "this Agent is already entered"
            raise RuntimeError(msg)
        held = self._held_borrow()
        if held is not None:
            lock = borrowing.BorrowLock(self._known_servers.path, held.root)
            if lock.acquire():
                return await self._enter_borrowed(held, lock)
            # One borrowed seat runs one application: this one asks for a seat of its own.
            self.borrow_problem = BorrowError(
                f"The seat borrowed from {self.config.server!r} is in use by another "
                "application on this computer (a borrowed seat runs one application at a "
                "time); this one asks the license server for a seat of its own.",
                problem="in_use",
            )
            log.warning("borrowed seat in use", client=self.client_id)
        if self._server_key is None:
            self._known_servers.check_writable()
        stack = contextlib.AsyncExitStack()
        self._tasks = await stack.enter_async_context(asyncio.TaskGroup())
        # Last in, first out: runs before the task group waits for its tasks.
        stack.push_async_callback(self._stop_tasks)
        self._stack = stack
        self._children = [
            self._tasks.create_task(self._connection(), name=f"agent-connection-{self.client_id}"),
            self._tasks.create_task(self._keep_seat(), name=f"agent-seat-{self.client_id}"),
            self._tasks.create_task(self._offline_watch(), name=f"agent-offline-{self.client_id}"),
            self._tasks.create_task(
                self._shutdown_sequence(), name=f"agent-shutdown-{self.client_id}"
            ),
        ]
        self._shutdown_task = self._children[3]
        try:
            async with asyncio.timeout(self.config.connect_timeout):
                answered = asyncio.ensure_future(self._answered.wait())
                changed = asyncio.ensure_future(self._key_changed.wait())
                try:
                    await asyncio.wait({answered, changed}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    answered.cancel()
                    changed.cancel()
            self.check_server_key()
        except TimeoutError:
            connected, error = self._connected.is_set(), self._broker_error
            await self.__aexit__(None, None, None)
            raise NoAnswer(self._no_answer_message(connected, error)) from None
        except BaseException as exc:
            await self.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack, self._stack = self._stack, None
        if stack is None:
            return
        try:
            if isinstance(exc, asyncio.CancelledError):
                # The task group must see the caller's cancellation to hand it back (an
                # asyncio.timeout around us turns it into TimeoutError), or to swallow it
                # when it cancelled the caller itself because one of our tasks failed.
                await stack.__aexit__(exc_type, exc, tb)
            else:
                # Anything else is the application's own exception: it propagates as it
                # is, not wrapped into the task group's ExceptionGroup. A cancellation
                # that arrives while we wait here is raised, never swallowed.
                await stack.__aexit__(None, None, None)
        finally:
            self._tasks = None

    async def _stop_tasks(self) -> None:
        """Let the hooks of a requested stop finish, release the seat, end the tasks."""
        try:
            if self.shutdown_requested.is_set():
                # Bounded (the hooks are), and asyncio.wait raises nothing of the task's:
                # a CancelledError here is the caller's.
                shutdown = self._shutdown_task
                if shutdown is not None:
                    await asyncio.wait({shutdown}, timeout=self.config.hook_timeout + 1)
        finally:
            try:
                await self.release()
            finally:
                self._closing = True
                for task in self._children:
                    task.cancel()

    def _no_answer_message(self, connected: bool, error: str | None) -> str:
        broker = self.config.broker.describe()
        if not connected:
            detail = f": {error}. {connection_advice(error)}" if error else "."
            return (
                f"Cannot connect to the broker ({broker}) within "
                f"{self.config.connect_timeout:g} s (connect_timeout){detail}"
            )
        return (
            f"No answer from the license server {self.config.server!r} ({broker}) "
            f"within {self.config.connect_timeout:g} s (connect_timeout). Check that floatkeyd "
            "is running and connected to the same broker."
        )

    # --- borrowed seats -------------------------------------------------------------

    async def borrow(self, days: float) -> borrowing.HeldBorrow:
        """Borrow a seat from the server for ``days`` (fractions allowed) and keep its token.

        Needs the server (call it on the network, entered or not: it uses a connection of
        its own); afterwards, an ``Agent`` entered on this computer runs without the server
        until the borrow ends. Raises ``BorrowError`` (the server's refusal: ``problem`` is
        its reason code and the message says which limit was hit), ``NoAnswer``.
        """
        return await borrowing.borrow_seat(self._loaded, days=days, app=self.app)

    async def return_borrow(self) -> str:
        """Give the borrowed seat back early; return the server's sentence.

        Raises ``BorrowError`` (``nothing_borrowed``; ``in_use`` while an ``Agent``, in
        this process or another, runs on the borrowed seat), ``NoAnswer``.
        """
        return await borrowing.return_seat(self._loaded)

    def _held_borrow(self) -> borrowing.HeldBorrow | None:
        """The borrow token held for this server, verified; a refused one is logged."""
        try:
            held = borrowing.held_borrow(self._loaded)
        except BorrowError as exc:
            self.borrow_problem = exc
            log.error("borrow token refused", client=self.client_id, problem=exc.problem)
            return None
        except (OSError, ValueError) as exc:
            log.error("borrow token unreadable", client=self.client_id, error=str(exc))
            return None
        return held

    async def _enter_borrowed(self, held: borrowing.HeldBorrow, lock: borrowing.BorrowLock) -> Self:
        """Run under ``held`` (holding ``lock``): no seat request, renewal nor offline grace."""
        token = held.token
        self.borrowed = held
        self.client_id = token.client  # the borrow's: only it may ask after the seat
        self._server_key = borrowing.server_key(self._loaded)
        grant = SeatGranted(
            nonce="",
            lease=token.lease,
            generation=token.generation,
            licensed=True,
            features=list(token.features),
            expires_at=token.end,
            renew_after_s=_RETRY_MAX_S,
            ts=token.ts,
        )
        self._grant = self._last_grant = grant
        log.info(
            "running on a borrowed seat, without the license server",
            client=self.client_id,
            until=token.end,
            features=token.features,
        )
        stack = contextlib.AsyncExitStack()
        stack.callback(lock.release)  # last: held until every task has stopped
        self._tasks = await stack.enter_async_context(asyncio.TaskGroup())
        stack.push_async_callback(self._stop_tasks)
        self._stack = stack
        self._children = [
            self._tasks.create_task(self._connection(), name=f"agent-connection-{self.client_id}"),
            self._tasks.create_task(
                self._borrow_end(held), name=f"agent-borrow-end-{self.client_id}"
            ),
            self._tasks.create_task(
                self._shutdown_sequence(), name=f"agent-shutdown-{self.client_id}"
            ),
        ]
        self._shutdown_task = self._children[2]
        return self

    async def _borrow_end(self, held: borrowing.HeldBorrow) -> None:
        """Ask the application to stop when the borrow ends (a clock set back changes nothing)."""
        clock = borrowing.BorrowClock(borrowing.BorrowStore(self._known_servers.path))
        while True:
            left = held.ends_at - clock.now()
            if left <= 0:
                break
            await asyncio.sleep(min(left / 1000, 60.0))  # the clock is read again each minute
        borrowing.BorrowStore(self._known_servers.path).forget(held.root)
        self.request_shutdown(
            "borrow.ended",
            f"The seat borrowed from the license server {self.config.server!r} until "
            f"{borrowing.when(held.token.end)} has been given back (the borrow ended); the "
            "application must stop. Connect to the network to get a seat, or borrow again.",
            held.token.generation,
        )

    def _take_borrow_reply(self, reply: protocol.BorrowReply | protocol.SeatRevoked) -> None:
        """The daemon's answer to a borrow check, or its administrator's release."""
        held = self.borrowed
        topic = self.topics.client(self.client_id)
        if held is None:
            self._drop("stale_reply", topic)
            return
        if isinstance(reply, protocol.SeatRevoked):
            if not secrets.compare_digest(reply.lease, held.token.lease):
                self._drop("stale_reply", topic)
                return
            message = reply.message
        elif isinstance(reply, protocol.BorrowStatus) and reply.nonce == self._nonce:
            if reply.held:
                self._contact(answer=True)
                log.info("borrowed seat confirmed by the license server", client=self.client_id)
                return
            message = reply.message
        else:
            self._drop("stale_reply", topic)
            return
        self._contact(answer=True)
        borrowing.BorrowStore(self._known_servers.path).forget(held.root)
        self.request_shutdown(
            "seat.revoked",
            message
            or "The license server no longer lends this computer its borrowed seat; the "
            "application must stop.",
            held.token.generation,
        )

    async def _check_borrow(self, held: borrowing.HeldBorrow) -> None:
        """Ask whether the daemon still lends ``held`` (it ends one of an older license)."""
        self._nonce = secrets.token_hex(8)
        await self._send(
            protocol.SeatBorrowCheck(
                client=self.client_id, nonce=self._nonce, lease=held.token.lease
            ),
            "borrow",
        )

    async def request_seat(self) -> bool:
        """Ask for a seat (again: after :meth:`release`, or after a denial).

        Returns whether a seat was granted; :attr:`denial` says why not. Raises
        ``NoAnswer`` when the daemon does not answer within ``connect_timeout``.
        """
        if self.has_seat:
            return True
        self._released, self._grant = False, None
        self._answered.clear()
        await self._request_seat()
        try:
            async with asyncio.timeout(self.config.connect_timeout):
                await self._answered.wait()
        except TimeoutError:
            raise NoAnswer(
                f"The license server {self.config.server!r} did not answer within "
                f"{self.config.connect_timeout:g} s (connect_timeout).",
            ) from None
        return self.has_seat

    async def release(self) -> None:
        """Give the seat back now (idempotent). A borrowed seat stays lent (see return)."""
        if self.borrowed is not None:
            self._released = True
            return
        if self._grant is None and self.queued is not None and self._client is not None:
            cancel = SeatCancel(client=self.client_id, lease=self.queued.lease)
            self.queued = None
            with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                await self._client.publish(
                    self.topics.seat(self.client_id, "cancel"), protocol.encode(cancel), timeout=2
                )
        if self._released or self._grant is None:
            self._released = True
            return
        self._released = True
        client = self._client
        if client is None:
            return  # the will, or the lease's expiry, frees it
        body = SeatRelease(client=self.client_id, lease=self._grant.lease)
        with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
            await client.publish(
                self.topics.seat(self.client_id, "release"), protocol.encode(body), qos=0, timeout=2
            )
        log.info("seat released", client=self.client_id)

    def request_shutdown(
        self, code: ShutdownCode, message: str, generation: int | None = None
    ) -> None:
        """Ask the application to stop (also used by the agent itself)."""
        reason = ShutdownReason(code, message, generation, time.time())
        held = self.borrowed
        if held is not None and code in {"license.activated", "license.expired"}:
            # A borrow of a license no longer in force: the next start asks the server.
            borrowing.BorrowStore(self._known_servers.path).forget(held.root)
            if self._tasks is not None and self._client is not None:
                # Tell the daemon, which ends the borrow and frees its seat.
                self._tasks.create_task(
                    self._check_borrow(held), name=f"agent-borrow-check-{self.client_id}"
                )
        if self.shutdown_requested._set(reason):  # noqa: SLF001
            log.warning("shutdown requested", client=self.client_id, reason=code, message=message)

    # --- tasks --------------------------------------------------------------------

    async def _connection(self) -> None:
        backoff = Backoff(start=0.2, cap=4.0)
        will = aiomqtt.Will(
            self.topics.seat(self.client_id, "release"),
            protocol.encode(SeatRelease(client=self.client_id)),
            qos=1,
        )
        addresses = self.config.broker.addresses(self.client_id)
        attempt = 0
        while not self._closing:
            # After a failure or a lost connection, the next broker address in turn (a
            # cluster's other nodes); with one address, that one again.
            options = self.config.broker.at(*addresses[attempt % len(addresses)])
            attempt += 1
            self._moving_on = False
            try:
                async with (
                    asyncio.timeout(None) as leave,
                    connect(
                        options, identifier=self.client_id, base=self._loaded.base, will=will
                    ) as client,
                ):
                    self._leave, self._connected_at = leave, time.monotonic()
                    self._broker_error = None
                    self.connected_to = options.describe()
                    await self._on_connect(client)
                    self._outage.connected()
                    backoff.reset()
                    async for message in client.messages:
                        self._handle(message.topic.value, message.payload)
            except (aiomqtt.MqttError, ConfigError, TimeoutError) as exc:
                # ConfigError: TLS files gone; TimeoutError: no identity to trust on first
                # use within connect_timeout (neither retained nor answered), or leaving a
                # node through which the daemon is silent (_check_silence).
                self._broker_error = (
                    f"no answer from the license server through {options.describe()}; "
                    "trying the next broker address"
                    if self._moving_on
                    else f"no license server identity on the broker ({options.describe()}) "
                    f"within {self.config.connect_timeout:g} s"
                    if isinstance(exc, TimeoutError)
                    else f"{options.describe()}: {str(exc) or type(exc).__name__}"
                )
                now = time.monotonic()
                self._outage.connection_failed(self._broker_error, now, self._grace_left(now))
            finally:
                self._leave = None
                self._client = None
                self.connected_to = None
                self._connected.clear()
            await asyncio.sleep(backoff.next_delay())

    async def _on_connect(self, client: aiomqtt.Client) -> None:
        if self._server_key is None:
            self._server_key = self._known_servers.key_of(self.topics.root)
        self._synced = False
        self._identity_asked = False  # an answer asked for on an earlier connection is lost
        if self._server_key is None:
            self._retained_key = None
            await self._trust_on_first_use(client)
        # Identity and state are retained: the broker sends them on subscribing. Once the
        # state is read, the agent unsubscribes from both and follows the events, which
        # halves what a thousand agents must read at every unlock; it reads them again
        # at every reconnect, which is when it could have missed an event. Retained
        # messages are only the fast path: the first seat message sent goes with a
        # state.request, answered by the daemon itself (a clustered broker may keep no
        # retained state, or an old one, on the node this agent reached).
        self._reading_retained = True
        await settled(
            client.subscribe(
                [
                    (self.topics.client(self.client_id), 1),
                    (self.topics.events, 1),
                    (self.topics.identity, 1),
                    (self.topics.state, 1),
                ],
            )
        )
        self._client = client
        self._connected.set()
        if self._released:
            return
        held = self.borrowed
        if held is not None:
            # Does the server still lend it? (An administrator may have released it; a
            # borrow of an older license ends on the daemon's side with this check.)
            await self._check_borrow(held)
            return
        if self._grant is not None:
            # Back after a reconnect: check the daemon still holds our lease.
            await self._send(self._renewal(self._grant), "renew")
        else:
            await self._request_seat()

    async def _trust_on_first_use(self, client: aiomqtt.Client) -> None:
        """Take the server's key before anything signed is read; ``TimeoutError``.

        From the daemon's answer on our own topic (signed by the key it announces; it
        needs no retained message), asked for again halfway through ``connect_timeout``
        in case it was lost. Only if the daemon does not answer at all, the retained
        identity seen meanwhile is trusted (it may be an old one a broker kept).
        """
        await settled(
            client.subscribe([(self.topics.identity, 1), (self.topics.client(self.client_id), 1)])
        )
        self._client = client
        for _ in range(2):
            self._identity_asked = False
            await self._ask_state()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.connect_timeout / 2):
                    async for message in client.messages:
                        self._handle(message.topic.value, message.payload)
                        if self._pinned():
                            return
        retained = self._retained_key
        if retained is None:
            raise TimeoutError
        log.warning(
            "no signed identity from the license server; trusting the retained one",
            client=self.client_id,
            key=key_id(retained),
        )
        self._adopt_identity(retained)

    async def _request_seat(self) -> None:
        self._nonce = secrets.token_hex(8)
        await self._send(
            SeatRequest(
                client=self.client_id,
                nonce=self._nonce,
                app=self.app,
                user=_user(),
                host=socket.gethostname(),
                pid=os.getpid(),
                # Only for a first seat: an application that has run with a seat and lost
                # it may not run on while it waits (the lost-seat deadline stops it).
                wait=self.wait_for_seat and self._last_grant is None,
                idle_ms=self._idle_ms(),
            ),
            "request",
        )

    async def _ask_state(self) -> None:
        """Ask the daemon for its state (and its identity while no key is trusted)."""
        client = self._client
        if client is None:
            return
        identity = self._server_key is None
        self._identity_asked = self._identity_asked or identity
        body = StateRequest(client=self.client_id, identity=identity)
        with contextlib.suppress(aiomqtt.MqttError):
            await settled(
                client.publish(
                    self.topics.seat(self.client_id, "request"), protocol.encode(body), qos=1
                )
            )

    async def _send(
        self, body: msgspec.Struct, action: Literal["request", "renew", "borrow"]
    ) -> None:
        client = self._client
        if client is None:
            return
        if not self._synced:
            await self._ask_state()
        with contextlib.suppress(aiomqtt.MqttError):
            await settled(
                client.publish(
                    self.topics.seat(self.client_id, action), protocol.encode(body), qos=1
                )
            )

    async def _keep_seat(self) -> None:
        while not self._closing:
            self._seat_changed.clear()
            held = self._last_grant
            queued = self.queued
            if self._grant is None and queued is not None and not self._released:
                # Waiting: the queue entry has a lease of its own, renewed like a seat.
                if (
                    not await self._seat_changes_within(
                        queued.renew_after_s * random.uniform(0.8, 1.0)  # noqa: S311
                    )
                    and self._connected.is_set()
                ):
                    await self._send(SeatRenew(client=self.client_id, lease=queued.lease), "renew")
            elif held is None or self._released:
                await self._seat_changed.wait()  # nothing to keep before the first grant
            elif self._grant is not None:
                # Jittered, so agents started together do not renew together forever.
                delay = held.renew_after_s * random.uniform(0.8, 1.0)  # noqa: S311
                grant = self._grant
                if (
                    not await self._seat_changes_within(delay)
                    and self._connected.is_set()
                    and not self.shutdown_requested.is_set()  # the lease outlasts the hooks
                ):
                    await self._send(self._renewal(grant), "renew")
            elif self._lost_at is None or self.shutdown_requested.is_set():
                await self._seat_changed.wait()
            else:
                await self._regain_seat(held, self._lost_at)

    async def _regain_seat(self, held: SeatGranted, lost_at: float) -> None:
        """One step without a seat: ask again, or stop the application once time is up.

        The application may go on for as long as the lease the daemon last gave would
        have lasted, and at least ``connect_timeout`` after the loss, so that a seat lost
        while the agent was cut off (found out on reconnecting) gets a fair try.
        """
        deadline = max(self._lease_ends, lost_at + self.config.connect_timeout)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            denial = self.denial
            why = (
                f"This computer lost its seat and none is free: {denial.message}"
                if denial is not None
                else "This computer lost its seat and the license server has not given it another."
            )
            self.request_shutdown("seat.lost", why, held.generation)
            return
        retry = min(max(held.renew_after_s, _RETRY_MIN_S), _RETRY_MAX_S, remaining)
        if not await self._seat_changes_within(retry) and self._connected.is_set():
            await self._request_seat()

    async def _seat_changes_within(self, delay: float) -> bool:
        """Whether the seat changed (granted, lost, denied) within ``delay`` seconds."""
        try:
            async with asyncio.timeout(delay):
                await self._seat_changed.wait()
        except TimeoutError:
            return False
        return True

    def _grace_left(self, now: float) -> float | None:
        """How long the application may still run unanswered (``None``: no seat, no limit)."""
        if self._last_grant is None or self.borrowed is not None:
            return None
        return max(self.config.offline_grace - (now - self._last_contact), 0.0)

    async def _offline_watch(self) -> None:
        grace = self.config.offline_grace
        while True:
            await asyncio.sleep(min(grace / 4, 5.0, self.config.connect_timeout))
            now = time.monotonic()
            silent = now - self._last_contact
            self._check_silence(now)
            if self._last_grant is not None and silent > grace:
                self.request_shutdown(
                    "offline",
                    f"The license server has not answered for {silent:.0f} s (more than the "
                    f"{grace:g} s offline grace); the application must stop.",
                )
                return

    def _check_silence(self, now: float) -> None:
        """Connected, with a seat, and a renewal went unanswered: floatkeyd is not heard.

        The daemon may be down, or this broker node may be cut off from the daemon's
        (a partitioned cluster). With more than one broker address, and no answer
        either to what was sent on this connection within ``connect_timeout``, the
        connection is dropped so that the next address is tried.
        """
        held = self._grant
        if (
            held is None
            or not self._connected.is_set()
            or now - self._last_contact <= held.renew_after_s + self.config.connect_timeout
        ):
            return
        self._outage.silent(self._last_contact, self._grace_left(now))
        leave = self._leave
        if (
            leave is not None
            and len(self.config.broker.addresses()) > 1
            and now - self._connected_at > self.config.connect_timeout
        ):
            log.warning(
                "license server silent through this broker node; trying the next",
                client=self.client_id,
                broker=self.connected_to,
            )
            self._moving_on = True
            leave.reschedule(asyncio.get_running_loop().time())

    async def _shutdown_sequence(self) -> None:
        reason = await self.shutdown_requested
        for hook in list(self._hooks):
            try:
                async with asyncio.timeout(self.config.hook_timeout):
                    await hook(reason)
            except TimeoutError:
                log.warning(
                    "shutdown hook timed out",
                    client=self.client_id,
                    timeout=self.config.hook_timeout,
                )
            except Exception:
                log.exception("shutdown hook failed", client=self.client_id)
        await self.release()

    # --- inbound ------------------------------------------------------------------

    def _drop(self, reason: str, topic: str) -> None:
        self.drops[reason] += 1
        log.warning("message dropped", client=self.client_id, reason=reason, topic=topic)

    def _drop_before_trust(self, topic: str) -> None:
        """A signed message that came before the identity the agent is about to trust.

        Normal on a first start (nothing pinned yet): a broker may hand over the retained
        state before the identity (amqtt does). Counted, logged at debug only: the
        warning that matters is the trust-on-first-use one that follows.
        """
        self.drops["no_server_key"] += 1
        log.debug("message before the server key is known", client=self.client_id, topic=topic)

    def _handle(self, topic: str, payload: object) -> None:
        if not isinstance(payload, bytes | bytearray):
            self._drop("not_bytes", topic)
            return
        if len(payload) > protocol.MAX_PAYLOAD:
            self._drop("oversized", topic)
            return
        if topic == self.topics.identity:
            self._take_identity(bytes(payload))
            return
        if (self._identity_asked or self._server_key is None) and self._take_signed_identity(
            bytes(payload), topic
        ):
            return
        if self.shutdown_requested.is_set() and topic in {self.topics.state, self.topics.events}:
            # Already stopping: nothing more these can change, so skip the verification
            # (with a thousand agents in one process, that time delays the others).
            self.drops["ignored_while_stopping"] += 1
            return
        envelope = bytes(payload)
        body = self._open(envelope, topic)
        if body is not None:
            self._dispatch(topic, body, envelope)

    def _open(self, data: bytes, topic: str) -> bytes | None:
        """The verified body, or ``None`` (dropped, logged, counted)."""
        key = self._server_key
        if key is None:
            self._drop_before_trust(topic)
            return None
        try:
            return open_envelope(data, topic, {self._server_kid: key})
        except EnvelopeError as exc:
            self._drop(exc.reason, topic)
            return None

    def _dispatch(self, topic: str, body: bytes, envelope: bytes) -> None:
        try:
            if topic == self.topics.state:
                self._take_state(protocol.decode(body, protocol.State))
            elif topic == self.topics.events:
                self._take_event(protocol.decode(body, protocol.Event))
            elif topic == self.topics.client(self.client_id) and self.borrowed is not None:
                borrowed = _borrow_reply_decoder.decode(body)
                if isinstance(borrowed, protocol.State):
                    self._synced = True
                    self._take_state(borrowed)
                    return
                self._take_borrow_reply(borrowed)
            elif topic == self.topics.client(self.client_id):
                reply = protocol.decode_client_topic(body)
                if isinstance(reply, protocol.State):
                    # The daemon's own answer to a state.request: whatever this broker
                    # node retained, this is the state now.
                    self._synced = True
                    self._take_state(reply)
                    return
                self._take_reply(reply)
                self._keep_envelope(reply, envelope)
            else:
                self._drop("unknown_topic", topic)
        except msgspec.DecodeError:
            self._drop("bad_body", topic)

    def _take_identity(self, data: bytes) -> None:
        """The retained identity."""
        try:
            identity = protocol.decode(data, protocol.Identity)
            key = parse_public_key(identity.public_key)
        except (msgspec.DecodeError, ValueError):
            self._drop("bad_identity", self.topics.identity)
            return
        if self._server_key is None and self._identity_asked:
            # Trusting on first use, with the daemon's signed answer asked for: that is
            # preferred (a broker may retain an identity under an old key, or one
            # planted there). This one is kept, to trust if the daemon does not answer.
            self._retained_key = key
            return
        self._adopt_identity(key)

    def _adopt_identity(self, key: Ed25519PublicKey) -> None:
        """Pin ``key`` on first use; otherwise refuse it unless it is the pinned one."""
        if self._server_key is None:
            self._server_key = key
            self._pin_key(key)
        elif key_id(key) != key_id(self._server_key):
            self.drops["server_key_changed"] += 1
            self._offered_kid = key_id(key)
            self._key_changed.set()
            log.error(
                "server key changed; refusing it",
                client=self.client_id,
                pinned=key_id(self._server_key),
                offered=self._offered_kid,
                pinned_in=self._pinned_in(),
            )

    def _take_signed_identity(self, data: bytes, topic: str) -> bool:
        """Take an ``identity`` signed by the key it announces, on our own topic.

        Taken as the retained one is: pinned on first use, compared with the pinned key
        otherwise (``floatkey.pinning.signed_identity`` says why it may be trusted).
        Returns whether ``data`` was such an identity (anything else goes on as usual).
        """
        if topic != self.topics.client(self.client_id):
            return False
        try:
            key = signed_identity(data, topic, self.config.server)
        except EnvelopeError as exc:
            self._identity_asked = False
            self._drop(exc.reason, topic)
            return True
        if key is None:
            return False  # not an identity: a seat reply or the state
        self._identity_asked = False
        self._adopt_identity(key)
        return True

    def _take_state(self, state: protocol.State) -> None:
        if state.server != self.config.server:
            self._drop("wrong_server", self.topics.state)
            return
        if self._state is not None and state.revision <= self._state.revision:
            if state.revision < self._state.revision:
                self._drop("replayed", self.topics.state)
            return
        self._state = state
        self._contact()
        if self.expiring is not None and self.expiring.generation != state.generation:
            self.expiring = None  # a warning about the license before this one
        if self._reading_retained and self._client is not None and self._tasks is not None:
            self._reading_retained = False
            self._tasks.create_task(
                self._unsubscribe_retained(self._client), name=f"agent-unsubscribe-{self.client_id}"
            )
        view = self.license
        for listener in self._license_listeners:
            self._tell_listener(listener, view, "license listener failed")
        # The last seat's generation, even when that seat is lost: a new license stops
        # an application that runs on without a seat as well.
        held = self._last_grant
        if held is not None and state.generation > held.generation:
            code: ShutdownCode = (
                "license.expired" if state.status == "expired" else "license.activated"
            )
            self.request_shutdown(code, _shutdown_message(code), state.generation)

    def _tell_listener(
        self,
        listener: Callable[[_Told], None],
        value: _Told,
        failure: Literal[
            "license listener failed",
            "lease listener failed",
            "expiry listener failed",
            "idle listener failed",
        ],
    ) -> None:
        try:
            listener(value)
        except Exception:
            # The application's code runs inside the connection task: what it raises must
            # not end the connection, nor (through the task group) the application.
            name = _callable_name(listener)
            self.listener_failures[name] += 1
            log.exception(failure, client=self.client_id, listener=name)

    def _keep_envelope(self, reply: protocol.DaemonToClient, envelope: bytes) -> None:
        """Keep the envelope of a grant or renewal just accepted; tell the lease listeners."""
        grant = self._grant
        if grant is None:
            return
        if reply is grant:
            self._grant_envelope, self._renewal_envelope = envelope, None
        elif isinstance(reply, SeatRenewed) and reply.lease == grant.lease:
            self._renewal_envelope = envelope
        else:
            return
        seat = self.signed_seat
        if seat is not None:
            for listener in self._lease_listeners:
                self._tell_listener(listener, seat, "lease listener failed")

    def _take_event(self, event: protocol.Event) -> None:
        if event.name == "license.expiring":
            self._take_expiring(event)
            return
        held = self._last_grant
        if held is None or event.generation <= held.generation:
            return  # an old event, or one from before our seat
        self.request_shutdown(event.name, _shutdown_message(event.name), event.generation)

    def _take_expiring(self, event: protocol.Event) -> None:
        """A warning: told to the listeners once; nothing stops."""
        if event.days_left is None or event.expires is None:
            self._drop("bad_body", self.topics.events)
            return
        state = self._state
        if state is not None and event.generation != state.generation:
            # About another license than the one in force (an old event, replayed).
            self._drop("stale_event", self.topics.events)
            return
        warning = ExpiryWarning(
            days_left=event.days_left, expires=event.expires, generation=event.generation
        )
        if warning == self.expiring:
            return  # the same warning delivered twice (QoS 1)
        self.expiring = warning
        self._contact()
        log.info(
            "license expiry warning received",
            client=self.client_id,
            days_left=warning.days_left,
            expires=warning.expires,
        )
        for listener in self._expiry_listeners:
            self._tell_listener(listener, warning, "expiry listener failed")

    def _take_reply(self, reply: protocol.DaemonToClient) -> None:
        if isinstance(reply, SeatGranted | SeatDenied | SeatQueued):
            self._take_answer(reply)
            return
        grant = self._grant
        queued = self.queued
        if grant is None and isinstance(reply, SeatLost) and queued and reply.lease == queued.lease:
            # The daemon dropped our queue entry (a restart, a lapse): ask again.
            # Not _seat_changed: wait_for_grant would take the empty queue for an end
            # and `run --wait` would exit; the new request's answer wakes it.
            self._contact(answer=True)
            self.queued = None
            log.warning("place in the queue lost", client=self.client_id, message=reply.message)
            if self._client is not None and not self._released:
                self._spawn_request()
            return
        if grant is None or reply.lease != grant.lease:
            self._drop("stale_reply", self.topics.client(self.client_id))
            return
        self._contact(answer=True)
        if isinstance(reply, SeatRenewed):
            self._lease_ends = time.monotonic() + _lease_length(
                reply.expires_at, reply.ts, grant.renew_after_s
            )
        elif isinstance(reply, SeatLost):
            # The daemon forgot us (restart, expiry): ask again, transparently. If no seat
            # is free, the seat task keeps asking and stops the application in the end.
            self._grant, self._lost_at = None, time.monotonic()
            self._seat_changed.set()
            log.warning("seat lost", client=self.client_id, message=reply.message)
            if self._client is not None and not self._released:
                self._spawn_request()
        elif isinstance(reply, SeatRevoked):
            self.request_shutdown("seat.revoked", reply.message, grant.generation)
        elif isinstance(reply, SeatIdleWarning):
            self._take_idle_warning(grant, reply)

    def _take_idle_warning(self, grant: SeatGranted, warning: SeatIdleWarning) -> None:
        """Active since the last renewal: tell the server now; otherwise warn the user.

        Compared with what the last renewal reported, not with the renewal interval: an
        idle timeout shorter than the interval would otherwise never warn anyone.
        """
        if self._last_active > self._reported_active:
            if self._tasks is not None and not self._closing:
                self._tasks.create_task(
                    self._send(self._renewal(grant), "renew"),
                    name=f"agent-active-{self.client_id}",
                )
            return
        self._idle_warned = True
        log.warning("idle seat warning", client=self.client_id, message=warning.message)
        for listener in self._idle_listeners:
            self._tell_listener(listener, warning, "idle listener failed")

    def _take_answer(self, reply: SeatGranted | SeatDenied | SeatQueued) -> None:
        """The answer to our latest request (an older nonce is a stale or replayed one)."""
        if reply.nonce != self._nonce:
            self._drop("stale_reply", self.topics.client(self.client_id))
            return
        self._contact(answer=True)
        if isinstance(reply, SeatQueued):
            if self.queued is None or self.queued.position != reply.position:
                log.info(
                    "waiting for a seat",
                    client=self.client_id,
                    position=reply.position,
                    seats=reply.seats,
                    in_use=reply.in_use,
                )
            self.queued = reply
            self._seat_changed.set()
            self._answered.set()
            return
        self.queued = None
        if isinstance(reply, SeatDenied) and reply.reason == "license_changed":
            # The queue was cleared by a license change (a new one, or expiry): ask again.
            log.info(
                "queue cleared by a license change; asking again",
                client=self.client_id,
                message=reply.message,
            )
            self._spawn_request()
            return
        if isinstance(reply, SeatGranted):
            # The server counts a grant as activity, as the agent does.
            self._last_active = self._reported_active = time.monotonic()
            held = self._last_grant
            self._grant, self._last_grant, self._lost_at, self.denial = reply, reply, None, None
            self._lease_ends = time.monotonic() + _lease_length(
                reply.expires_at, reply.ts, reply.renew_after_s
            )
            log.info(
                "seat granted",
                client=self.client_id,
                licensed=reply.licensed,
                generation=reply.generation,
                features=reply.features,
            )
            if held is not None and reply.generation > held.generation:
                # A seat lost, then found again under a newer license: the application
                # still runs under the old one, and must restart like every other.
                self.request_shutdown(
                    "license.activated",
                    _shutdown_message("license.activated"),
                    reply.generation,
                )
        else:
            self.denial = Denial(reply.reason, reply.message)
            log.info("seat denied", client=self.client_id, reason=reply.reason)
        self._seat_changed.set()
        self._answered.set()

    async def _unsubscribe_retained(self, client: aiomqtt.Client) -> None:
        with contextlib.suppress(aiomqtt.MqttError):
            await client.unsubscribe([self.topics.identity, self.topics.state])

    def _spawn_request(self) -> None:
        # Never once a stop is requested: a revoked seat asked for again would be a new
        # seat held by an application on its way out (an administrator's release undone).
        if self._tasks is not None and not self._closing and not self.shutdown_requested.is_set():
            self._tasks.create_task(self._request_seat(), name=f"agent-request-{self.client_id}")

    @property
    def _server_kid(self) -> str:
        key = self._server_key
        if key is None:
            return ""
        if self._kid_of is not key:
            self._kid_of, self._kid = key, key_id(key)
        return self._kid

    def _pinned(self) -> bool:
        return self._server_key is not None

    def _contact(self, *, answer: bool = False) -> None:
        """The daemon was heard; ``answer``: it replied to this agent (it is up now)."""
        self._last_contact = time.monotonic()
        if answer:
            self._outage.answered(self._last_contact)

    # --- pinned server keys (trust on first use) ----------------------------------

    def _pin_key(self, key: Ed25519PublicKey) -> None:
        path = self._known_servers.path
        try:
            if not self._known_servers.pin(self.topics.root, key):
                return
        except OSError as exc:  # checked at start; it went away since
            log.error(
                "cannot save the pinned server key; it is trusted for this run only",
                client=self.client_id,
                state_file=str(path),
                error=exc.strerror or str(exc),
            )
            return
        log.warning(
            "TRUSTING THE LICENSE SERVER KEY ON FIRST USE; set server_key in the agent config "
            "to pin it explicitly",
            client=self.client_id,
            server=self.topics.root,
            fingerprint=key_id(key),
            state_file=str(path),
        )

    def _pinned_in(self) -> str:
        """Where the pinned server key comes from: the config, or the state file."""
        if self.config.server_key:
            return "server_key in the agent config"
        return str(self._known_servers.path)

    def check_server_key(self) -> None:
        """Raise ``ServerKeyChanged`` if the server offered a key other than the pinned one.

        The message names where the pinned key is kept (``server_key`` in the config, or
        the ``state_file`` of trust on first use) and what to change there.
        """
        if not self._key_changed.is_set():
            return
        root, pinned = self.topics.root, self._server_kid
        offered = f"a key with fingerprint {self._offered_kid}, not {pinned}"
        if self.config.server_key:
            raise ServerKeyChanged(
                f"The license server {root} presents {offered}, the key set as server_key "
                "in the agent config. If the server was reinstalled or given a new key, "
                "set server_key to its new public key (floatkeyd logs it at every start); "
                "otherwise someone may be impersonating the license server: do not change "
                "anything until you know which.",
            )
        raise ServerKeyChanged(
            f"The license server {root} presents {offered}, the key this agent trusted on "
            f"first use and pinned in its state file {self._known_servers.path}. If the "
            f'server was reinstalled or given a new key, delete the "{root}" entry from that '
            "file (or the file, if it pins no other server) and start the agent again, or "
            "set server_key in the agent config to the server's new public key (floatkeyd "
            "logs it at every start); otherwise someone may be impersonating the license "
            "server: do not change anything until you know which.",
        )


def _shutdown_message(code: str) -> str:
    if code == "license.expired":
        return "The license has expired; the application must stop."
    return "A new license was activated; the application must restart to use it."


def _lease_length(expires_at: int, sent_at: int, renew_after_s: float) -> float:
    """How many seconds a lease the daemon just gave or renewed lasts.

    From two readings of the daemon's own clock (the reply's ``expires_at`` and ``ts``),
    so a skewed clock here does not matter. Bounded; a nonsensical pair falls back to
    three times ``renew_after_s`` (the daemon renews at a third of the lease).
    """
    length = (expires_at - sent_at) / 1000
    if not 0 < length <= _LEASE_MAX_S:
        length = 3 * renew_after_s
    return min(max(length, 0.0), _LEASE_MAX_S)


def _callable_name(function: object) -> str:
    module = getattr(function, "__module__", None)
    name = getattr(function, "__qualname__", None)
    if not isinstance(name, str):
        return repr(function)[:200]
    return f"{module}.{name}" if isinstance(module, str) else name


def _user() -> str:
    with contextlib.suppress(Exception):
        return getpass.getuser()
    return ""
