"""The agent's configuration: values that cannot work together are refused at load."""

from __future__ import annotations

import pytest

from conftest import run
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
