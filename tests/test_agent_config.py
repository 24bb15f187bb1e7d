"""The agent's configuration: values that cannot work together are refused at load."""

from __future__ import annotations

import pytest

from conftest import run
from floatkey.agent import Agent
from floatkey.config import load_agent_config
from floatkey.errors import ConfigError


@pytest.mark.parametrize(("grace", "timeout"), [(15, 15), (20, 15), (30, 8)])
def test_a_shutdown_grace_not_shorter_than_the_hook_timeout_is_refused(tmp_path, grace, timeout):
    path = tmp_path / "agent.toml"
    path.write_text(f'server = "s"\nshutdown_grace = {grace}\nhook_timeout = {timeout}\n')
    with pytest.raises(ConfigError) as caught:
        load_agent_config(path)
    message = str(caught.value)
    assert f"shutdown_grace ({grace} s) must be shorter than hook_timeout ({timeout} s)" in message
    assert f"Set hook_timeout to at least {grace + 5}" in message


def test_a_shutdown_grace_shorter_than_the_hook_timeout_loads(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_text('server = "s"\nshutdown_grace = 10\nhook_timeout = 10.5\n')
    config = load_agent_config(path).config
    assert (config.shutdown_grace, config.hook_timeout) == (10, 10.5)
    path.write_text('server = "s"\n')
    config = load_agent_config(path).config
    assert config.shutdown_grace < config.hook_timeout  # the defaults agree


def test_floatkey_agent_refuses_the_pair_before_starting_anything(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_text('server = "s"\nshutdown_grace = 20\n')
    result = run("floatkey-agent", "run", "--config", str(path), "--", "true")
    assert result.returncode == 78
    assert "shutdown_grace (20 s) must be shorter than hook_timeout (15 s)" in result.stderr


def test_connect_timeout_is_read_under_its_older_name_too(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_text('server = "s"\n')
    assert load_agent_config(path).config.connect_timeout == 10
    path.write_text('server = "s"\nconnect_timeout = 30\n')
    assert load_agent_config(path).config.connect_timeout == 30
    # A file written before the rename still loads, and means the same.
    path.write_text('server = "s"\nrequest_timeout = 4.5\n')
    assert load_agent_config(path).config.connect_timeout == 4.5


def test_connect_timeout_and_its_older_name_together_are_refused(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_text('server = "s"\nrequest_timeout = 5\nconnect_timeout = 30\n')
    with pytest.raises(ConfigError) as caught:
        load_agent_config(path)
    assert "request_timeout is the older name of connect_timeout; set only connect_timeout" in (
        str(caught.value)
    )


def test_run_help_names_the_default_config_the_connect_wait_and_the_restart():
    result = run("floatkey-agent", "run", "--help")
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert "--config CONFIG agent config file (default: /etc/floatkey/agent.toml)" in text
    assert "76 the broker or the license server did not answer within connect_timeout" in text
    assert "the shipped unit (floatkey-agent@.service) starts it again" in text


def test_the_broker_may_be_one_address_or_a_list_of_a_clusters_nodes(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_text('server = "s"\n[broker]\nhost = "mq.example.com"\nport = 8883\n')
    assert load_agent_config(path).config.broker.addresses() == [("mq.example.com", 8883)]
    path.write_text(
        'server = "s"\n[broker]\nport = 8883\nusername = "lab"\n'
        'hosts = ["mq1.example.com", "mq2.example.com:1884", "10.0.0.3", "[fd00::3]:1885"]\n'
    )
    broker = load_agent_config(path).config.broker
    assert broker.addresses() == [
        ("mq1.example.com", 8883),
        ("mq2.example.com", 1884),
        ("10.0.0.3", 8883),
        ("fd00::3", 1885),
    ]
    one = broker.at("mq2.example.com", 1884)
    assert (one.host, one.port, one.username) == ("mq2.example.com", 1884, "lab")


@pytest.mark.parametrize(
    ("hosts", "words"),
    [
        ('["mq1:0"]', "has no valid port after ':'"),
        ('["mq1:x"]', "has no valid port after ':'"),
        ('["mq 1"]', "is not a host name, an address, or either with ':port'"),
        ('["mq1/a"]', "is not a host name"),
    ],
)
def test_a_broker_address_that_cannot_be_used_is_refused(tmp_path, hosts, words):
    path = tmp_path / "agent.toml"
    path.write_text(f'server = "s"\n[broker]\nhosts = {hosts}\n')
    with pytest.raises(ConfigError, match=words):
        load_agent_config(path)


@pytest.mark.parametrize("host", ["mq1", "127.0.0.1"])  # the default too: it was set
def test_host_and_hosts_together_are_refused(tmp_path, host):
    path = tmp_path / "agent.toml"
    path.write_text(f'server = "s"\n[broker]\nhost = "{host}"\nhosts = ["mq2"]\n')
    with pytest.raises(ConfigError, match="set either host or hosts, not both"):
        load_agent_config(path)


def test_a_broker_described_lists_every_address_and_no_host_is_the_default(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_text('server = "s"\n[broker]\nhosts = ["mq1", "mq2:1884"]\n')
    broker = load_agent_config(path).config.broker
    assert broker.describe() == "mqtt://mq1:1883, mqtt://mq2:1884"
    path.write_text('server = "s"\n')
    broker = load_agent_config(path).config.broker
    assert (broker.host, broker.describe()) == ("127.0.0.1", "mqtt://127.0.0.1:1883")


def test_each_client_starts_at_a_node_of_its_own_and_agents_spread_over_the_nodes(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_text('server = "s"\n[broker]\nhosts = ["mq1", "mq2", "mq3"]\n')
    broker = load_agent_config(path).config.broker
    every = broker.addresses()
    assert [host for host, _ in every] == ["mq1", "mq2", "mq3"]
    firsts = []
    for n in range(300):
        order = broker.addresses(f"lab-pc{n}")
        assert order == broker.addresses(f"lab-pc{n}")  # stable for a client
        start = every.index(order[0])
        assert order == every[start:] + every[:start]  # then the others, in turn
        firsts.append(order[0][0])
    assert all(firsts.count(host) > 60 for host in ("mq1", "mq2", "mq3"))


def test_prefix_client_id_begins_every_client_id_with_the_login(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_text(
        'server = "s"\n[broker]\nusername = "floatkey-agent"\nprefix_client_id = true\n'
    )
    config = load_agent_config(path).config
    assert config.own_client_id("flowdesigner-h1-7") == "floatkey-agent-flowdesigner-h1-7"
    assert config.own_client_id("floatkey-agent-x") == "floatkey-agent-x"  # once only
    agent = Agent(load_agent_config(path), app="flowdesigner")
    assert agent.client_id.startswith("floatkey-agent-flowdesigner-")
    assert Agent(load_agent_config(path), client_id="c1").client_id == "floatkey-agent-c1"
    path.write_text('server = "s"\n[broker]\nusername = "lab"\n')
    assert load_agent_config(path).config.own_client_id("c1") == "c1"  # not asked for


@pytest.mark.parametrize("login", [None, "lab.one", "me@lab"])
def test_prefix_client_id_needs_a_login_that_may_begin_a_client_id(tmp_path, login):
    path = tmp_path / "agent.toml"
    user = f'username = "{login}"\n' if login else ""
    path.write_text(f'server = "s"\n[broker]\n{user}prefix_client_id = true\n')
    with pytest.raises(ConfigError, match=r"prefix_client_id needs a broker\.username"):
        load_agent_config(path)
