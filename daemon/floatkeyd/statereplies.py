"""Answers to ``state.request``: the current state, signed for one agent's own topic.

Retained messages are a fast path, not something to rely on: a clustered broker may keep
them per node (RabbitMQ's MQTT plugin does), so an agent that connects to another node
than the daemon's may find no state there, or an old one. Every agent therefore asks at
each (re)connect, and the daemon answers on ``clients/{client}``, which only that client
may read, with the same ``state`` body it retains, signed for that topic (a copy moved to
another agent's topic fails its signature). Asked for, the server's ``identity`` goes
first, signed by the key it announces: an agent that trusts on first use needs no
retained ``identity`` either.

The request is rate-limited with the client's other seat messages (``SeatDesk``); the
answer costs one signature, like a seat reply, and goes out through the same queue. The
identity signed for a client's topic never changes while the daemon runs: it is kept
(for the latest ``IDENTITY_CACHE`` clients), so an agent asking at every reconnect
costs one signature more only the first time.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Final

from floatkey.envelope import peek

if TYPE_CHECKING:
    from floatkey import protocol
    from floatkey.envelope import Signer
    from floatkeyd.authority import LicenseAuthority
    from floatkeyd.link import Link

__all__ = ["IDENTITY_CACHE", "StateReplies"]

#: How many clients' sealed identities are kept (about 300 bytes each).
IDENTITY_CACHE: Final = 10_000


class StateReplies:
    """Sends an agent the signed state (and the identity) on its own topic."""

    def __init__(
        self,
        *,
        topics: protocol.Topics,
        authority: LicenseAuthority,
        signer: Signer,
        link: Link,
        identity_body: bytes,
    ) -> None:
        self._topics = topics
        self._authority = authority
        self._signer = signer
        self._link = link
        self._identity_body = identity_body
        self._identities: OrderedDict[str, bytes] = OrderedDict()  # topic -> sealed
        self._sealed = b""  # the retained state the body below was taken from
        self._body = b""

    def _state_body(self) -> bytes:
        sealed = self._authority.state_payload
        if sealed is not self._sealed:
            peeked = peek(sealed)
            self._sealed, self._body = sealed, peeked[1] if peeked else b""
        return self._body

    def answer(self, request: protocol.StateRequest) -> None:
        """Queue the answer to ``request`` (already checked: its client is the topic's)."""
        topic = self._topics.client(request.client)
        if request.identity:
            self._link.send(topic, self._identity_for(topic))
        body = self._state_body()
        if body:
            self._link.send(topic, self._signer.seal(topic, body))

    def _identity_for(self, topic: str) -> bytes:
        """The identity sealed for ``topic``: kept, as it never changes while running."""
        sealed = self._identities.get(topic)
        if sealed is None:
            sealed = self._signer.seal(topic, self._identity_body)
            if len(self._identities) >= IDENTITY_CACHE:
                self._identities.popitem(last=False)
        else:
            self._identities.move_to_end(topic)
        self._identities[topic] = sealed
        return sealed
