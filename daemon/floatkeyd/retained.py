"""Our retained topics on the broker: published, kept ours, and a second daemon noticed.

The daemon publishes its ``identity`` and ``state`` (retained) through :class:`Retained`,
and subscribes to both. What it then reads there is one of:

- the echo of something it published (the broker sends a subscriber its own messages
  too): expected, nothing to do;
- a rival's: a well-formed state or identity for this server name under another key id,
  which is what a second floatkeyd started with the same ``server`` name on the same
  broker publishes. The daemon puts its own back, but if rivals keep coming (more than
  :data:`FIGHT_LIMIT` a minute) it steps back and says so in one error line:
  republishing against another daemon is a publishing fight that never ends. Once a
  whole minute passes without a rival, :meth:`Retained.recover_step` puts ours back (a
  rival that stopped must not leave its messages there for good);
- anything else (garbage, our own older state replayed by someone): our own goes back.
  Agents would refuse garbage anyway, and ignore an older revision they have seen, but a
  fresh agent must find the current state there;
- our own older state, once more on the same connection: left alone. A clustered broker
  may keep retained messages per node (RabbitMQ's MQTT plugin does) and hand a stale
  copy from one node after ours was stored on another: putting ours back again and
  again would never make its nodes agree. Agents do not depend on it: each asks the
  daemon for the state at every (re)connect (``floatkeyd.statereplies``).

While a republication of ours has not echoed back yet, a foreign message read meanwhile
was stored before it (the broker sends everything in the order it stores it), so ours
will land on top anyway: no second republication. A flood of garbage thus costs about
one republication per broker round trip, not one per message.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import TYPE_CHECKING, Final

import msgspec
import structlog

from floatkey import protocol
from floatkey.envelope import peek

if TYPE_CHECKING:
    from floatkeyd.drops import Drops
    from floatkeyd.link import Link

__all__ = ["FIGHT_LIMIT", "Retained"]

log = structlog.get_logger("floatkeyd")

#: Rival retained messages per minute above which the daemon stops putting its own back.
FIGHT_LIMIT: Final = 3
_WINDOW_S = 60.0
_PENDING = 16  # our publications whose echo has not come back yet, per topic
_ECHO_WAIT_S = 5.0  # an echo not back by then is taken as lost


class Retained:
    """Publishes our retained messages and guards them; never fights over them."""

    def __init__(self, *, topics: protocol.Topics, kid: str, link: Link, drops: Drops) -> None:
        self._topics = topics
        self._kid = kid
        self._link = link
        self._drops = drops
        self._current: dict[str, bytes] = {}
        # (payload, when published) of our publications not yet echoed back, per topic.
        self._pending: dict[str, deque[tuple[bytes, float]]] = {}
        self._rivals: deque[float] = deque()
        # Topics where our own older message was put right on this connection.
        self._stale_put_back: set[str] = set()
        self.contested = False
        self._stepped_back = asyncio.Event()

    def reconnected(self) -> None:
        """A new broker connection (maybe to another node): put stale copies right again."""
        self._stale_put_back.clear()

    async def put(self, topic: str, payload: bytes) -> bool:
        """Publish ``payload`` retained on ``topic`` as ours from now on."""
        self._current[topic] = payload
        pending = self._pending.setdefault(topic, deque(maxlen=_PENDING))
        pending.append((payload, time.monotonic()))
        return await self._link.publish(topic, payload, retain=True)

    async def check(self, topic: str, payload: bytes) -> None:
        """Look at one message read on one of our retained topics."""
        ours = self._current.get(topic)
        if ours is None or self._echoed(topic, payload) or payload == ours:
            return
        self._drops("foreign_retained", topic)
        if self._is_rival(topic, payload) and self._fighting(topic):
            return
        if self._is_ours(payload):
            if topic in self._stale_put_back:
                return  # once per connection: a broker whose nodes disagree is not fought
            self._stale_put_back.add(topic)
        if not self._in_flight(topic, ours):
            await self.put(topic, ours)

    def _is_ours(self, payload: bytes) -> bool:
        """Whether ``payload`` is an envelope under our key (an older state of ours)."""
        peeked = peek(payload)
        return peeked is not None and peeked[0] == self._kid

    def _echoed(self, topic: str, payload: bytes) -> bool:
        """Whether ``payload`` is the echo of one of our publications (forgotten now)."""
        pending = self._pending.get(topic)
        if not pending:
            return False
        for entry in pending:
            if entry[0] == payload:
                pending.remove(entry)
                return True
        return False

    def _in_flight(self, topic: str, payload: bytes) -> bool:
        """Whether ``payload`` was published lately and has not echoed back yet."""
        recent = time.monotonic() - _ECHO_WAIT_S
        return any(p == payload and t > recent for p, t in self._pending.get(topic, ()))

    def _fighting(self, topic: str) -> bool:
        """Count a rival's message; whether to step back now."""
        now = time.monotonic()
        self._rivals.append(now)
        while self._rivals and self._rivals[0] < now - _WINDOW_S:
            self._rivals.popleft()
        if len(self._rivals) <= FIGHT_LIMIT:
            if self.contested:
                self._end_contest()
            return False
        if not self.contested:
            self.contested = True
            self._stepped_back.set()
            log.error(
                "another publisher keeps overwriting this server's retained state; not "
                "putting ours back while it goes on. If a second floatkeyd runs with "
                "this server name on this broker, stop it or give it another server "
                "name: two daemons for one server would each grant every seat.",
                server=self._topics.server,
                topic=topic,
                per_minute=len(self._rivals),
            )
        return True

    def _end_contest(self) -> None:
        self.contested = False
        self._stepped_back.clear()
        log.warning("putting this server's retained messages back again")

    async def recover_step(self) -> None:
        """After stepping back: once a minute passes without a rival, put ours back."""
        await self._stepped_back.wait()
        await asyncio.sleep(_WINDOW_S)
        now = time.monotonic()
        if not self.contested or (self._rivals and self._rivals[-1] > now - _WINDOW_S):
            return  # still contested: look again in a minute
        self._rivals.clear()
        self._end_contest()
        for topic, payload in list(self._current.items()):
            await self.put(topic, payload)

    def _is_rival(self, topic: str, payload: bytes) -> bool:
        """Whether ``payload`` is a well-formed message for this server under another key."""
        try:
            if topic == self._topics.state:
                peeked = peek(payload)
                if peeked is None or peeked[0] == self._kid:
                    return False
                server = protocol.decode(peeked[1], protocol.State).server
            else:
                identity = protocol.decode(payload, protocol.Identity)
                if identity.kid == self._kid:
                    return False
                server = identity.server
        except msgspec.DecodeError:
            return False
        return server == self._topics.server
