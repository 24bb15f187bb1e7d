"""The state from the daemon itself, not from retained messages (issue 16), in-process.

A clustered broker may keep retained messages per node: an agent asks the daemon at
every (re)connect (``state.request``) and gets the signed state, and on first use the
signed identity, on its own topic. The real brokers, a RabbitMQ cluster among them, are
in tests/test_cluster.py and tests/test_agents.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import SimpleNamespace

import aiomqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from floatkey import agent as agent_module
from floatkey import protocol
from floatkey.agent import Agent
from floatkey.config import load_agent_config
from floatkey.envelope import EnvelopeError, Signer, open_envelope
from floatkey.pinning import KnownServers
from floatkey.signing import key_id, public_key_text
from floatkeyd import statereplies
from inprocess import MemoryLink, Wall, ask, product_key, running, trusted, unlock_command
from inprocess import write_config as write_daemon_config


@pytest.fixture
def link():
    return MemoryLink()


@pytest.fixture
def wall():
    return Wall()


def request_topic(daemon, client: str) -> str:
    return daemon.topics.seat(client, "request")


async def test_a_state_request_is_answered_on_the_clients_own_topic_signed_for_it(
    tmp_path, link, wall
):
    async with running(write_daemon_config(tmp_path), link, wall) as daemon:
        link.sent.clear()
        ask_state = protocol.StateRequest(client="c1", identity=True)
        await daemon.handle(request_topic(daemon, "c1"), protocol.encode(ask_state))
        mine = daemon.topics.client("c1")
        assert [topic for topic, _ in link.sent] == [mine, mine]
        # First the identity, signed by the key it announces...
        identity_envelope, state_envelope = (payload for _, payload in link.sent)
        body = open_envelope(identity_envelope, mine, trusted(daemon))
        identity = protocol.decode(body, protocol.Identity)
        assert identity.kid == key_id(next(iter(trusted(daemon).values())))
        # ...then the state the daemon retains, signed for this client's topic only.
        body = open_envelope(state_envelope, mine, trusted(daemon))
        state = protocol.decode(body, protocol.State)
        assert (state.status, state.generation) == ("unlicensed", 0)
        with pytest.raises(EnvelopeError, match="bad_signature"):
            open_envelope(state_envelope, daemon.topics.client("c2"), trusted(daemon))

        assert (await ask(daemon, link, unlock_command(product_key(), "u1"))).ok
        link.sent.clear()
        await daemon.handle(
            request_topic(daemon, "c1"), protocol.encode(protocol.StateRequest(client="c1"))
        )
        [(_, payload)] = link.sent  # no identity unless asked
        state = protocol.decode(open_envelope(payload, mine, trusted(daemon)), protocol.State)
        assert (state.status, state.generation) == ("licensed", 1)
        assert state.revision == daemon.authority.revision

        # Asked for another client's topic: dropped, nothing sent.
        link.sent.clear()
        other = protocol.encode(protocol.StateRequest(client="c2"))
        await daemon.handle(request_topic(daemon, "c1"), other)
        assert link.sent == []
        assert daemon.drops.counts["client_mismatch"] == 1
        # The request topic still takes seat requests.
        seat = protocol.SeatRequest(client="c1", nonce="n1")
        await daemon.handle(request_topic(daemon, "c1"), protocol.encode(seat))
        [(_, payload)] = link.sent
        granted = protocol.decode_to_client(open_envelope(payload, mine, trusted(daemon)))
        assert isinstance(granted, protocol.SeatGranted)
        assert granted.generation == 1


async def test_a_stale_copy_of_our_state_is_put_back_once_per_connection(tmp_path, link, wall):
    """A broker whose nodes disagree may hand back an old copy again and again: the
    daemon puts its own back once per connection, never in a loop."""
    async with running(write_daemon_config(tmp_path), link, wall, serve=False) as daemon:
        topic = daemon.topics.state
        first = daemon.authority.state_payload
        await daemon.connected()
        assert (await ask(daemon, link, unlock_command(product_key(), "e1"))).ok
        current = daemon.authority.state_payload
        await daemon.handle(topic, first)  # the echoes of both publications
        await daemon.handle(topic, current)
        link.published.clear()
        for _ in range(5):  # an old copy, from a node that never got the new one
            await daemon.handle(topic, first)
            for item in list(link.published):
                await daemon.handle(item.topic, item.payload)  # the echo
        assert [item.payload for item in link.published] == [current]
        assert not daemon.retained.contested  # not taken for a second daemon
        # Connected again (maybe to another node): one more time, and only once.
        await daemon.connected()
        for item in list(link.published):
            await daemon.handle(item.topic, item.payload)
        link.published.clear()
        await daemon.handle(topic, first)
        await daemon.handle(topic, first)
        assert [item.payload for item in link.published] == [current]


def write_agent_config(tmp_path, *, server: str = "core") -> Agent:
    path = tmp_path / "agent.toml"
    path.write_text(f'server = "{server}"\nstate_file = "known.json"\n')
    return Agent(load_agent_config(path), app="test", client_id="c1")


async def test_an_agent_trusts_the_signed_identity_on_its_own_topic_on_first_use(
    tmp_path, link, wall
):
    async with running(write_daemon_config(tmp_path), link, wall) as daemon:
        agent = write_agent_config(tmp_path)
        await daemon.handle(
            request_topic(daemon, "c1"),
            protocol.encode(protocol.StateRequest(client="c1", identity=True)),
        )
        for topic, payload in link.sent:
            agent._handle(topic, payload)
        key = next(iter(trusted(daemon).values()))
        assert agent._server_key is not None
        assert key_id(agent._server_key) == key_id(key)
        pinned = KnownServers(tmp_path / "known.json").key_of(daemon.topics.root)
        assert pinned is not None
        assert public_key_text(pinned) == public_key_text(key)
        # The state that followed was read under that key: this connection is in sync.
        assert agent._synced
        assert agent.license.status == "unlicensed"
        assert not agent.drops


async def test_an_identity_that_is_not_signed_by_the_key_it_announces_is_not_trusted(tmp_path):
    agent = write_agent_config(tmp_path)
    topic = agent.topics.client("c1")
    announced, signer = Ed25519PrivateKey.generate(), Signer(Ed25519PrivateKey.generate())
    identity = protocol.Identity(
        server="core",
        public_key=public_key_text(announced.public_key()),
        kid=key_id(announced.public_key()),
    )
    agent._handle(topic, signer.seal(topic, protocol.encode(identity)))
    assert agent.drops["bad_identity"] == 1
    # Signed by the key it announces, but for another client's topic (moved here).
    honest = Signer(announced)
    agent._handle(topic, honest.seal(agent.topics.client("c2"), protocol.encode(identity)))
    assert agent.drops["bad_signature"] == 1
    # For another server name.
    other = protocol.Identity(server="elsewhere", public_key=identity.public_key, kid=identity.kid)
    agent._handle(topic, honest.seal(topic, protocol.encode(other)))
    assert agent.drops["bad_identity"] == 2
    assert agent._server_key is None
    assert not (tmp_path / "known.json").exists()


async def test_a_newer_state_from_the_daemon_stops_an_agent_whose_node_kept_an_old_one(
    tmp_path, link, wall
):
    """The agent's node retained an old state; the daemon's answer is the truth."""
    async with running(write_daemon_config(tmp_path), link, wall) as daemon:
        agent = write_agent_config(tmp_path)
        agent._server_key = next(iter(trusted(daemon).values()))
        old_retained = daemon.authority.state_payload
        seat = protocol.SeatRequest(client="c1", nonce="n1")
        agent._nonce = "n1"
        await daemon.handle(request_topic(daemon, "c1"), protocol.encode(seat))
        agent._handle(daemon.topics.state, old_retained)
        for topic, payload in link.sent:
            agent._handle(topic, payload)
        assert agent.has_seat
        assert agent.generation == 0
        assert (await ask(daemon, link, unlock_command(product_key(), "u1"))).ok
        # Cut off during the unlock; back on a node that kept the old retained state.
        link.sent.clear()
        agent._handle(daemon.topics.state, old_retained)
        assert not agent.shutdown_requested.is_set()
        await daemon.handle(
            request_topic(daemon, "c1"), protocol.encode(protocol.StateRequest(client="c1"))
        )
        for topic, payload in link.sent:
            agent._handle(topic, payload)
        reason = agent.shutdown_requested.reason
        assert reason is not None
        assert reason.code == "license.activated"
        assert reason.generation == 1


def identity_of(key, server: str = "core") -> protocol.Identity:
    public = key.public_key()
    return protocol.Identity(server=server, public_key=public_key_text(public), kid=key_id(public))


async def test_the_signed_answer_wins_over_a_retained_identity_seen_first(tmp_path, link, wall):
    """First use: a broker's retained identity under an old key comes before the daemon's
    signed answer. The signed answer is pinned; the retained one is not."""
    async with running(write_daemon_config(tmp_path), link, wall) as daemon:
        agent = write_agent_config(tmp_path)
        agent._identity_asked = True  # as _trust_on_first_use does, with a state.request
        old = identity_of(Ed25519PrivateKey.generate())
        agent._handle(daemon.topics.identity, protocol.encode(old))
        assert agent._server_key is None
        await daemon.handle(
            request_topic(daemon, "c1"),
            protocol.encode(protocol.StateRequest(client="c1", identity=True)),
        )
        for topic, payload in link.sent:
            agent._handle(topic, payload)
        key = next(iter(trusted(daemon).values()))
        assert agent._server_key is not None
        assert key_id(agent._server_key) == key_id(key)
        assert not agent._identity_asked
        assert agent.drops["server_key_changed"] == 0
        pinned = KnownServers(tmp_path / "known.json").key_of(daemon.topics.root)
        assert pinned is not None
        assert key_id(pinned) == key_id(key)


@pytest.mark.parametrize("asked", [False, True])
async def test_a_pinned_agent_refuses_a_signed_identity_under_another_key(tmp_path, asked):
    agent = write_agent_config(tmp_path)
    pinned = Ed25519PrivateKey.generate()
    agent._server_key = pinned.public_key()
    agent._identity_asked = asked
    topic = agent.topics.client("c1")
    other = Ed25519PrivateKey.generate()
    agent._handle(topic, Signer(other).seal(topic, protocol.encode(identity_of(other))))
    assert key_id(agent._server_key) == key_id(pinned.public_key())
    assert not (tmp_path / "known.json").exists()
    if asked:  # taken for an identity and compared: refused, the application told
        assert agent.drops["server_key_changed"] == 1
        assert agent._key_changed.is_set()
    else:  # not asked for: signed by a key it does not know
        assert agent.drops["unknown_key"] == 1


class Leave:
    """Stands in for the connection's ``asyncio.timeout``: records being brought forward."""

    def __init__(self) -> None:
        self.when: list[float | None] = []

    def reschedule(self, when: float | None) -> None:
        self.when.append(when)


def silent_agent(tmp_path, hosts: str) -> tuple[Agent, Leave]:
    """A seated, connected agent whose renewal went unanswered for a long time."""
    path = tmp_path / "agent.toml"
    path.write_text(f'server = "core"\nstate_file = "known.json"\n[broker]\nhosts = {hosts}\n')
    agent = Agent(load_agent_config(path), app="test", client_id="c1")
    agent._grant = protocol.SeatGranted(
        nonce="n", lease="l" * 22, generation=1, licensed=True, features=[],
        expires_at=0, renew_after_s=10.0, ts=0,
    )  # fmt: skip
    agent._connected.set()
    leave = Leave()
    agent._leave = leave
    return agent, leave


async def test_an_agent_moves_to_the_next_broker_node_when_the_daemon_is_silent(tmp_path):
    agent, leave = silent_agent(tmp_path, '["mq1", "mq2"]')
    agent._last_contact = agent._connected_at = 1000.0
    agent._check_silence(1000.0 + 10 + agent.config.connect_timeout - 1)
    assert leave.when == []  # not silent for long enough yet
    agent._check_silence(1000.0 + 10 + agent.config.connect_timeout + 1)
    assert len(leave.when) == 1  # the connection is dropped: the next node is tried
    assert agent._moving_on
    # Just connected to the next node: its renewal gets connect_timeout to be answered.
    agent._moving_on, leave.when = False, []
    agent._connected_at = 2000.0
    agent._check_silence(2000.0 + agent.config.connect_timeout - 1)
    assert leave.when == []
    agent._check_silence(2000.0 + agent.config.connect_timeout + 1)
    assert len(leave.when) == 1


async def test_with_one_broker_address_a_silent_daemon_is_waited_for(tmp_path):
    agent, leave = silent_agent(tmp_path, '["mq1"]')
    agent._last_contact = agent._connected_at = 1000.0
    agent._check_silence(5000.0)
    assert leave.when == []
    assert agent._outage.down_since == 1000.0  # said once: no answer through the broker


async def test_the_identity_signed_for_a_client_is_kept_not_signed_again(monkeypatch):
    signer = Signer(Ed25519PrivateKey.generate())
    seals: list[str] = []
    real_seal = signer.seal
    signer.seal = lambda topic, body: seals.append(topic) or real_seal(topic, body)
    sent: list[tuple[str, bytes]] = []
    topics = protocol.Topics("floatkey", "core")
    replies = statereplies.StateReplies(
        topics=topics,
        authority=SimpleNamespace(state_payload=b""),  # no state yet: the identity only
        signer=signer,
        link=SimpleNamespace(send=lambda topic, payload: sent.append((topic, payload))),
        identity_body=b'{"type":"identity"}',
    )
    monkeypatch.setattr(statereplies, "IDENTITY_CACHE", 2)
    for client in ("c1", "c1", "c2", "c1", "c3", "c2"):
        replies.answer(protocol.StateRequest(client=client, identity=True))
    # c1 signed once; c2 once, then dropped for c3 (two kept, the oldest used goes), again.
    assert seals == [topics.client(c) for c in ("c1", "c2", "c3", "c2")]
    assert [topic for topic, _ in sent] == [
        topics.client(c) for c in ("c1", "c1", "c2", "c1", "c3", "c2")
    ]
    assert sent[0][1] == sent[1][1]


async def test_an_agent_starts_at_the_node_its_client_id_chooses(tmp_path, monkeypatch):
    path = tmp_path / "agent.toml"
    path.write_text('server = "core"\n[broker]\nhosts = ["mq1", "mq2", "mq3"]\n')
    agent = Agent(load_agent_config(path), app="test", client_id="lab-pc7")
    tried: list[str] = []

    @contextlib.asynccontextmanager
    async def refused(options, **_):
        tried.append(options.host)
        agent._closing = len(tried) == 3
        raise aiomqtt.MqttError("refused")
        yield  # never reached: an async context manager all the same

    monkeypatch.setattr(agent_module, "connect", refused)
    await asyncio.wait_for(agent._connection(), 30)
    assert tried == [host for host, _ in agent.config.broker.addresses("lab-pc7")]
