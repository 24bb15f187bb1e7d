"""floatkey on RabbitMQ: its topic permissions, and a three-node cluster (issue 16).

RabbitMQ's MQTT plugin keeps retained messages per node: a client on node 2 does not
see what the daemon retained through node 1. The agents must not care: they ask the
daemon for the state at every (re)connect. The cluster is started and stopped here, on
loopback, with private node names, ports and cookie; its nodes are started in parallel.
"""

from __future__ import annotations

import asyncio
import os
import uuid

import aiomqtt
import pytest

from floatkey import protocol
from floatkey.agent import Agent
from floatkey.config import load_agent_config
from floatkey.envelope import open_envelope
from floatkey.signing import key_id
from licensing import issue, unlock
from servers import (
    Server,
    clients,
    daemon_report,
    eventually,
    rabbitmq_cluster,
    write_agent_config,
    write_daemon_config,
)

pytestmark = [pytest.mark.broker, pytest.mark.timeout(300)]


# --- the topic permissions (one node) ------------------------------------------------


def plain(node, user: str, identifier: str) -> aiomqtt.Client:
    options = node.options(user)
    return aiomqtt.Client(
        options.host,
        options.port,
        username=options.username,
        password=options.password,
        identifier=identifier,
        timeout=3,
    )


async def refused(node, action: str, topic: str, me: str = "") -> bool:
    """Whether the node refuses ``floatkey-agent`` this publish or subscription.

    ``{me}`` in ``topic`` is the client's own id, a fresh one (beginning with the login,
    as ``prefix_client_id`` makes it) each time unless given (RabbitMQ closes an older
    connection with the same id, maybe only after the next has started). RabbitMQ closes
    the connection on a refusal; the operation never completes.
    """
    me = me or f"floatkey-agent-{uuid.uuid4().hex[:8]}"
    try:
        async with plain(node, "floatkey-agent", me) as client:
            if action == "write":
                await client.publish(topic.format(me=me), b"{}", qos=1, timeout=3)
            else:
                await client.subscribe(topic.format(me=me), qos=1, timeout=3)
            # A refused QoS 1 publication may be acknowledged before the connection is
            # closed: a round trip on our own topic tells.
            await client.subscribe("floatkey/s/events", qos=1, timeout=3)
    except aiomqtt.MqttError:
        return True
    return False


async def test_the_shipped_topic_permissions_confine_an_agent_to_its_own_login(rabbitmq_node):
    node, mine = rabbitmq_node, "floatkey/s/seats/floatkey-agent/{me}"
    for action in ("request", "renew", "release", "cancel", "borrow", "return"):
        assert not await refused(node, "write", f"{mine}/{action}")
    for topic in ("identity", "state", "events", "clients/{me}"):
        assert not await refused(node, "read", f"floatkey/s/{topic}")
    for topic in (
        "floatkey/s/seats/floatkeyd/{me}/request",  # under another login
        f"{mine}/other",
        "floatkey/s/identity",  # the daemon's retained identity, planted
        "floatkey/s/state",  # the daemon's retained state
        "floatkey/s/clients/{me}",  # a reply, forged
        "floatkey/s/admin/request",
    ):
        assert await refused(node, "write", topic), topic
    for topic in (
        "floatkey/s/clients/victim",  # a client id not beginning with this login
        "floatkey/s/clients/floatkeyd-x",
        "floatkey/s/#",
        "floatkey/s/seats/#",
        "floatkey/s/seats/+/+/+",
        "floatkey/s/admin/reply/#",
    ):
        assert await refused(node, "read", topic), topic


# Client ids that are regular expressions: RabbitMQ 3.10 put {client_id} into the rules
# unescaped, and these escaped rules that used it. The shipped rules do not use it.
HOSTILE = ["x.request$|^floatkey.s.|y", "x)|(.*", ".*", "victim|x", "[a-z]*"]


@pytest.mark.parametrize("hostile", HOSTILE)
async def test_a_client_id_that_is_a_pattern_does_not_escape_the_topic_permissions(
    rabbitmq_node, hostile
):
    node = rabbitmq_node
    # The broker takes such a client id (so the refusals below are the rules' doing).
    assert not await refused(node, "write", "floatkey/s/seats/floatkey-agent/x/request", hostile)
    for topic in (
        "floatkey/s/identity",  # a planted identity, pinned by agents trusting on first use
        "floatkey/s/clients/victim",
        "floatkey/s/clients/floatkey-agent-victim",
        "floatkey/s/admin/request",
        "floatkey/s/seats/floatkeyd/x/request",
    ):
        assert await refused(node, "write", topic, hostile), (hostile, topic)
    for topic in ("floatkey/s/seats/#", "floatkey/s/clients/victim", "floatkey/s/#"):
        assert await refused(node, "read", topic, hostile), (hostile, topic)


# --- a three-node cluster ---------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster():
    nodes = rabbitmq_cluster(3)
    nodes.start()
    yield nodes
    nodes.cleanup()


@pytest.fixture
def server(cluster, tmp_path):
    """A daemon config on node 1: leases and wills long enough that nothing expires."""
    node = cluster.nodes[0]
    name = f"c{os.getpid()}x{uuid.uuid4().hex[:6]}"
    state, config = tmp_path / "state", tmp_path / "floatkeyd.toml"
    write_daemon_config(
        config, server=name, state_dir=state, port=node.port, mosquitto=None, rabbit=node
    )
    text = config.read_text()
    assert "lease_seconds = 30" in text
    config.write_text(
        text.replace("lease_seconds = 30", "lease_seconds = 120\nwill_grace_seconds = 120")
    )
    server = Server(
        kind="rabbitmq",
        config_path=config,
        state_dir=state,
        topics=protocol.Topics("floatkey", name),
        port=node.port,
        rabbit=node,
    )
    yield server
    for process in server.processes:
        if process.process and process.process.poll() is None:
            process.stop()


def cluster_agent(server: Server, tmp_path, name: str, nodes, *, pin: bool = True) -> Agent:
    """An agent that tries ``nodes`` in that order: it connects to the first.

    An agent starts at a node chosen from its client id: ``hosts`` is written turned
    round so that this client's start is ``nodes[0]``.
    """
    path = write_agent_config(
        server, tmp_path / f"{name}.toml", pin=pin, broker=nodes[0].options("floatkey-agent")
    )
    template = path.read_text().replace('host = "127.0.0.1"\n', "")
    client_id = load_agent_config(path).config.own_client_id(f"{name}-{uuid.uuid4().hex[:6]}")
    for turn in range(len(nodes)):
        turned = nodes[turn:] + nodes[:turn]
        hosts = ", ".join(f'"127.0.0.1:{node.port}"' for node in turned)
        path.write_text(template.replace("[broker]\n", f"[broker]\nhosts = [{hosts}]\n"))
        loaded = load_agent_config(path)
        if [port for _, port in loaded.config.broker.addresses(client_id)] == [
            node.port for node in nodes
        ]:
            return Agent(loaded, app="test-app", client_id=client_id)
    raise AssertionError("no order of hosts starts this client at nodes[0]")


async def listed(server) -> set[str]:
    """The clients ``floatkeyctl clients`` lists (run in a thread: it blocks)."""
    return {str(row["client"]) for row in await asyncio.to_thread(clients, server)}


async def retained_on(node, topic: str) -> bytes | None:
    """What ``node`` itself retains on ``topic`` (read as the daemon's login)."""
    async with plain(node, "floatkeyd", f"peek-{uuid.uuid4().hex[:6]}") as client:
        await client.subscribe(topic, qos=1)
        try:
            async with asyncio.timeout(2):
                async for message in client.messages:
                    if message.retain:
                        return bytes(message.payload)
        except TimeoutError:
            return None
    return None


async def exit_all(agents) -> None:
    await asyncio.gather(*(agent.__aexit__(None, None, None) for agent in agents))


async def test_a_three_node_rabbitmq_cluster_grants_exactly_s_seats_and_stops_everyone(  # noqa: PLR0915 - one cluster (slow to start), one story in five steps
    cluster, server, tmp_path
):
    one, two, three = cluster.nodes
    order = {one: [one, two, three], two: [two, three, one], three: [three, one, two]}
    server.start_daemon()
    key = server.server_key()
    assert await retained_on(two, server.topics.state) is None  # kept on node 1 only

    # 1. Unlicensed sessions on every node; agents on nodes 2 and 3 trust the server's
    #    key on first use, with no retained identity there. An unlock reaches them all.
    first = [
        cluster_agent(server, tmp_path, f"u{i}", order[node], pin=node is one)
        for i, node in enumerate(cluster.nodes)
    ]
    await asyncio.gather(*(agent.__aenter__() for agent in first))
    assert all(agent.has_seat and not agent.licensed for agent in first)
    assert all(key_id(agent._server_key) == key_id(key) for agent in first)
    assert [agent.connected_to for agent in first] == [
        f"mqtt://127.0.0.1:{node.port}" for node in cluster.nodes
    ]
    result = await asyncio.to_thread(unlock, server, issue(seats=3), "--wait", "0")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 connected clients were told to shut down" in result.stdout
    for agent in first:
        reason = await asyncio.wait_for(agent.shutdown_requested.wait(), 20)
        assert (reason.code, reason.generation) == ("license.activated", 1)
    await exit_all(first)
    assert await eventually(lambda: _empty(server), within=20)

    # 2. S = 3 seats, 2S = 6 agents, two on each node: exactly S granted. The sleeper
    #    (node 2 only) holds the first seat.
    sleeper = cluster_agent(server, tmp_path, "sleeper", [two])
    await sleeper.__aenter__()
    assert sleeper.has_seat
    agents = [
        cluster_agent(server, tmp_path, f"a{i}", order[cluster.nodes[i % 3]]) for i in range(5)
    ]
    await asyncio.gather(*(agent.__aenter__() for agent in agents))
    everyone = [sleeper, *agents]
    try:
        assert sum(agent.has_seat for agent in everyone) == 3
        assert await listed(server) == {a.client_id for a in everyone if a.has_seat}
        # Node 2 once had the daemon's state retained (the daemon was once connected
        # there, say): a copy of today's state, stored on node 2 only.
        async with plain(two, "floatkeyd", f"old-{uuid.uuid4().hex[:6]}") as old:
            await old.publish(
                server.topics.state, await _retained_state(one, server), qos=1, retain=True
            )

        # 3. Node 2 stops mid-run. Its agents reconnect to the other nodes and keep their
        #    seats; at no moment are more than S seats held, or one counted twice.
        samples: list[int] = []
        sampling = asyncio.create_task(_sample(server, everyone, samples))
        await asyncio.to_thread(two.stop)
        moved = [a for a in agents if a.config.broker.addresses(a.client_id)[0][1] == two.port]
        assert moved
        await eventually(
            lambda: all(
                a.connected_to not in {None, f"mqtt://127.0.0.1:{two.port}"} and a._synced
                for a in moved
            ),
            within=30,
        )
        await eventually(
            lambda: _seats_agree(server, [a for a in everyone if a is not sleeper], sleeper),
            within=20,
        )
        sampling.cancel()
        assert samples
        assert max(samples) <= 3
        assert sum(agent.has_seat for agent in everyone) == 3

        # 4. A new license while node 2 is down: every seat on nodes 1 and 3 is told; the
        #    sleeper, cut off on node 2, hears nothing yet.
        result = await asyncio.to_thread(unlock, server, issue(seats=3), "--wait", "0")
        assert result.returncode == 0, result.stdout + result.stderr
        seated = [a for a in agents if a.has_seat]
        for agent in seated:
            reason = await asyncio.wait_for(agent.shutdown_requested.wait(), 20)
            assert reason.generation == 2
        assert not sleeper.shutdown_requested.is_set()
        await exit_all(seated)

        # 5. Node 2 rejoins with the old state it retained. The sleeper reconnects there,
        #    learns the new generation from the daemon's answer to its state.request (a
        #    license listener hears only states), and stops its application before any
        #    seat under generation 2 (a renewal refused, a request granted anew) could
        #    have told it.
        heard: list[int] = []
        sleeper.on_license_change(lambda view: heard.append(view.generation))
        await asyncio.to_thread(two.start_again)
        stale = await retained_on(two, server.topics.state)
        assert stale is not None
        stale_state = protocol.decode(
            open_envelope(stale, server.topics.state, {key_id(key): key}), protocol.State
        )
        assert stale_state.generation == 1  # the broker did bring it back...
        reason = await asyncio.wait_for(sleeper.shutdown_requested.wait(), 60)
        assert (reason.code, reason.generation) == ("license.activated", 2)
        assert 2 in heard
        assert sleeper._last_grant is not None
        assert sleeper._last_grant.generation == 1  # no seat under the new license
        assert sleeper.license.generation == 2
        # ...but an agent that starts on node 2 now works under the new license, and
        # hears of it from the daemon (node 2 retains generation 1).
        late = cluster_agent(server, tmp_path, "late", order[two])
        late_heard: list[int] = []
        late.on_license_change(lambda view: late_heard.append(view.generation))
        async with late:
            assert late.licensed
            assert late.generation == 2
            await eventually(lambda: 2 in late_heard, within=10)
            assert late.license.generation == 2
            assert not late.shutdown_requested.is_set()
    finally:
        await exit_all([a for a in everyone if a._stack is not None])
    # Every seat released.
    assert await eventually(lambda: _empty(server), within=20)


async def _retained_state(node, server) -> bytes:
    payload = await retained_on(node, server.topics.state)
    assert payload is not None
    return payload


async def _empty(server) -> bool:
    report = await daemon_report(server)
    return report.seats_in_use == 0 and report.unlicensed_sessions == 0


async def _sample(server, agents, samples: list[int]) -> None:
    """The daemon's seats in use, and the agents' own count, again and again."""
    while True:
        try:
            report = await daemon_report(server)
        except Exception:  # noqa: BLE001 - a sample lost to a slow moment is no failure
            await asyncio.sleep(0.1)
            continue
        samples.append(max(report.seats_in_use, sum(a.has_seat for a in agents)))
        await asyncio.sleep(0.1)


async def _seats_agree(server, agents, sleeper) -> bool:
    """The daemon holds exactly the seats the agents believe they hold, each once."""
    holders = {a.client_id for a in agents if a.has_seat} | {sleeper.client_id}
    report = await daemon_report(server)
    return report.seats_in_use == 3 and await listed(server) == holders
