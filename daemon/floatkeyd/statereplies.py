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
answer costs one signature, like a seat reply, and goes out through the same queue.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from floatkey.envelope import peek

if TYPE_CHECKING:
    from floatkey import protocol
    from floatkey.envelope import Signer
    from floatkeyd.authority import LicenseAuthority
    from floatkeyd.link import Link

__all__ = ["StateReplies"]


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
            self._link.send(topic, self._signer.seal(topic, self._identity_body))
        body = self._state_body()
        if body:
            self._link.send(topic, self._signer.seal(topic, body))
