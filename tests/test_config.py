"""Configuration files: unknown keys and bad values are errors that name the key."""

from __future__ import annotations

import socket

import pytest

from conftest import CONFIG, run
from floatkey.agent import Agent
from floatkey.config import load_agent_config
from floatkey.errors import ConfigError
from floatkeyd.config import load_config

VENDOR = (CONFIG / "dev-vendor.key.pub").read_text().strip()


def write(tmp_path, text: str):
    path = tmp_path / "floatkeyd.toml"
    path.write_text(text)
    return path


def test_the_shipped_configs_load():
    dev = load_config(CONFIG / "floatkeyd.dev.toml")
    assert dev.config.broker is None  # the embedded broker
    assert dev.broker.port == 18830
    assert dev.admin_key_file == CONFIG / "dev-admin.key"
    assert load_agent_config(CONFIG / "agent.dev.toml").config.server == "dev"


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (f'server = "s"\nvendor_public_key = "{VENDOR}"\nseats = 3\n', "unknown field `seats`"),
        (
            f'server = "s"\nvendor_public_key = "{VENDOR}"\n[broker]\nhots = "x"\n',
            "unknown field `hots`",
        ),
        (
            f'server = "s"\nvendor_public_key = "{VENDOR}"\n[broker]\nport = 70000\n',
            "port must be between",
        ),
        (f'server = "a/b"\nvendor_public_key = "{VENDOR}"\n', "server must be"),
        (
            f'server = "s"\nvendor_public_key = "{VENDOR}"\n[embedded_broker]\nhost = "0.0.0.0"\n',
            "embedded_broker.host must be a loopback address",
        ),
        ('server = "s"\nvendor_public_key = "rsa:abc"\n', "vendor_public_key"),
        (
            f'server = "s"\nvendor_public_key = "{VENDOR}"\nlease_seconds = "long"\n',
            "Expected `int`",
        ),
        ('server = "s"\n', "missing required field `vendor_public_key`"),
        ("server = \n", "not valid TOML"),
    ],
)
def test_bad_daemon_configs_name_the_key(tmp_path, text, words):
    with pytest.raises(ConfigError, match=words.replace("(", r"\(")):
        load_config(write(tmp_path, text))


def test_the_daemon_refuses_to_start_on_a_bad_config(tmp_path):
    path = write(tmp_path, f'server = "s"\nvendor_public_key = "{VENDOR}"\nbogus = 1\n')
    result = run("floatkeyd", "run", "--config", str(path))
    assert result.returncode == 1
    assert "unknown field `bogus`" in result.stderr


def test_bad_agent_configs_name_the_key(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_text('server = "s"\noffline_grace = -1\n')
    with pytest.raises(ConfigError, match="offline_grace"):
        load_agent_config(path)
    path.write_text('server = "s"\ncolour = "blue"\n')
    result = run("floatkey-agent", "run", "--config", str(path), "--", "true")
    assert result.returncode == 78
    assert "unknown field `colour`" in result.stderr


@pytest.mark.parametrize(
    ("ca_text", "words"),
    [
        (None, "No such file or directory"),
        ("not a certificate\n", "NO_CERTIFICATE_OR_CRL_FOUND"),
    ],
)
def test_unusable_tls_files_are_refused_at_start_naming_the_setting(tmp_path, ca_text, words):
    if ca_text is not None:
        (tmp_path / "ca.pem").write_text(ca_text)
    tls = '[broker]\nhost = "127.0.0.1"\n[broker.tls]\nca = "ca.pem"\n'
    daemon = write(tmp_path, f'server = "s"\nvendor_public_key = "{VENDOR}"\n{tls}')
    agent = tmp_path / "agent.toml"
    agent.write_text(f'server = "s"\n{tls}')
    for load in (load_config, load_agent_config):
        with pytest.raises(ConfigError, match=r"\[broker.tls\] ca = 'ca.pem'") as refused:
            load(daemon if load is load_config else agent)
        assert words in refused.value.message
    # The processes say it and stop with their configuration status, no traceback.
    result = run("floatkeyd", "run", "--config", str(daemon))
    assert result.returncode == 1
    assert "[broker.tls] ca = 'ca.pem'" in result.stderr
    assert "Traceback" not in result.stderr
    result = run("floatkey-agent", "run", "--config", str(agent), "--", "true")
    assert result.returncode == 78
    assert "[broker.tls] ca = 'ca.pem'" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unusable_state_directory_or_a_taken_port_is_one_sentence(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    path = write(
        tmp_path,
        f'server = "s"\nvendor_public_key = "{VENDOR}"\nstate_dir = "{blocker}/state"\n',
    )
    result = run("floatkeyd", "run", "--config", str(path))
    assert result.returncode == 1
    assert f"state_dir = '{blocker}/state': cannot use it as the state directory" in result.stderr
    assert "Traceback" not in result.stderr

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = write(
            tmp_path,
            f'server = "s"\nvendor_public_key = "{VENDOR}"\nstate_dir = "{tmp_path}/state"\n'
            f"[embedded_broker]\nport = {port}\n",
        )
        result = run("floatkeyd", "run", "--config", str(path))
    assert result.returncode == 1
    assert f"[embedded_broker] cannot listen on 127.0.0.1:{port} (Address already in use)" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr


async def test_an_agent_that_cannot_keep_a_pinned_key_refuses_to_start(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    path = tmp_path / "agent.toml"
    path.write_text(f'server = "s"\nstate_file = "{blocker}/known.json"\n')
    agent = Agent(load_agent_config(path))  # no server_key: it would trust on first use
    with pytest.raises(ConfigError, match="cannot keep the pinned server key there"):
        async with agent:
            pass
    result = run("floatkey-agent", "run", "--config", str(path), "--", "true")
    assert result.returncode == 78
    assert "Traceback" not in result.stderr


def test_a_damaged_database_stops_the_daemon_with_a_sentence_not_a_hang(tmp_path):
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / "floatkeyd.db").write_bytes(b"this is not SQLite " * 300)
    path = write(tmp_path, f'server = "s"\nvendor_public_key = "{VENDOR}"\nstate_dir = "{state}"\n')
    result = run("floatkeyd", "run", "--config", str(path), timeout=20)  # it used to hang
    assert result.returncode == 1
    assert "cannot be used (file is not a database)" in result.stderr
    assert "restore it from a backup" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("name", "what"),
    [
        ("agent.dev.toml", "this is an agent configuration (floatkey-agent's)"),
        ("admin.toml", "this is an administrator's configuration (admin.toml, floatkeyctl's)"),
        ("mosquitto.conf", "this is a Mosquitto configuration"),
    ],
)
def test_floatkeyd_says_which_kind_of_file_it_was_given(name, what):
    result = run("floatkeyd", "run", "--config", str(CONFIG / name))
    assert result.returncode == 1
    assert f"{what}; floatkeyd needs the daemon's (floatkeyd.toml)" in result.stderr


@pytest.mark.parametrize(
    "argv", [("run",), ("admin-key", "add"), ("admin-key", "remove"), ("admin-key", "list")]
)
def test_floatkeyds_config_option_says_its_default(argv):
    result = run("floatkeyd", *argv, "--help")
    assert result.returncode == 0
    assert "(default /etc/floatkey/floatkeyd.toml)" in " ".join(result.stdout.split())
