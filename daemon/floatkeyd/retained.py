"""Our retained topics on the broker: kept ours, and a second daemon noticed.

The daemon subscribes to its own retained ``identity`` and ``state``. What it reads
there is one of:

- its own current message, or an echo of an earlier one (a state it sealed, with a
  revision not above the current one; an identity with its own key id): nothing to do;
- a rival's: a well-formed state or identity for this server name under another key
  id, which is what a second floatkeyd started with the same ``server`` name on the same
  broker publishes. The daemon puts its own back, but if rivals keep coming (more than
  :data:`FIGHT_LIMIT` a minute) it steps back for that minute and says so in one error
  line: republishing against another daemon is a publishing fight that never ends;
- anything else (garbage, a damaged message): put our own back. Agents would refuse it
  anyway, but until the daemon republishes they have no valid state to read there.
"""

from __future__ import annotations

import time
from collections import deque
from typing import TYPE_CHECKING, Final

import msgspec
import structlog

from floatkey import protocol
from floatkey.envelope import EnvelopeError, open_envelope, peek

if TYPE_CHECKING:
    from floatkey.envelope import Signer
    from floatkeyd.authority import LicenseAuthority
    from floatkeyd.drops import Drops
    from floatkeyd.link import Link

__all__ = ["FIGHT_LIMIT", "RetainedGuard"]

log = structlog.get_logger("floatkeyd")

#: Foreign retained messages per minute above which the daemon stops putting its own back.
FIGHT_LIMIT: Final = 3
_WINDOW_S = 60.0


class RetainedGuard:
    """Puts our identity and state back when overwritten; never fights over them."""

    def __init__(  # noqa: PLR0913 - wired once by the daemon's factory
        self,
        *,
        topics: protocol.Topics,
        signer: Signer,
        authority: LicenseAuthority,
        identity_body: bytes,
        link: Link,
        drops: Drops,
    ) -> None:
        self._topics = topics
        self._trusted = {signer.kid: signer.public_key}
        self._kid = signer.kid
        self._authority = authority
        self._identity_body = identity_body
        self._link = link
        self._drops = drops
        self._foreign: deque[float] = deque()
        self.contested = False

    async def check(self, topic: str, payload: bytes) -> None:
        """Look at one message read on our ``state`` or ``identity`` topic."""
        is_state = topic == self._topics.state
        ours = self._authority.state_payload if is_state else self._identity_body
        if payload == ours or self._is_echo(is_state, topic, payload):
            return
        self._drops("foreign_retained", topic)
        if not self._is_rival(is_state, payload):
            await self._link.publish(topic, ours, retain=True)
            return
        now = time.monotonic()
        self._foreign.append(now)
        while self._foreign and self._foreign[0] < now - _WINDOW_S:
            self._foreign.popleft()
        if len(self._foreign) > FIGHT_LIMIT:
            if not self.contested:
                self.contested = True
                log.error(
                    "another publisher keeps overwriting this server's retained state; not "
                    "putting ours back while it goes on. If a second floatkeyd runs with "
                    "this server name on this broker, stop it or give it another server "
                    "name: two daemons for one server would each grant every seat.",
                    server=self._topics.server,
                    topic=topic,
                    per_minute=len(self._foreign),
                )
            return
        if self.contested:
            self.contested = False
            log.warning("the retained state is ours again", topic=topic)
        await self._link.publish(topic, ours, retain=True)

    def _is_rival(self, is_state: bool, payload: bytes) -> bool:
        """Whether ``payload`` is a well-formed message for this server under another key."""
        try:
            if is_state:
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

    def _is_echo(self, is_state: bool, topic: str, payload: bytes) -> bool:
        """Whether ``payload`` is one of our own earlier messages."""
        try:
            if is_state:
                body = open_envelope(payload, topic, self._trusted)
                state = protocol.decode(body, protocol.State)
                return state.revision <= self._authority.revision
            identity = protocol.decode(payload, protocol.Identity)
        except (EnvelopeError, msgspec.DecodeError):
            return False
        return identity.kid == self._kid
