"""The console's parts without a server: accounts, log-in limits, sessions, the license
comparison behind the reducing-unlock confirmation, its config, and floatkeyctl console-user."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

from conftest import CONFIG, run
from consoles import console_table
from floatkey.errors import PRODUCT_KEY_REASONS, ConfigError
from floatkeyd.config import load_config
from floatkeyd.console.sessions import SessionStore, same_token
from floatkeyd.console.settings import session_secret
from floatkeyd.console.throttle import LoginThrottle
from floatkeyd.console.users import UserStore
from floatkeyd.errors import ConsoleUserError

# --- log-in limits and sessions ----------------------------------------------------------


def test_the_log_in_limit_opens_again_as_failures_leave_the_window():
    now = [0.0]
    throttle = LoginThrottle(per_account=3, per_address=5, window_s=900, clock=lambda: now[0])
    for _ in range(3):
        # Counted when it starts, before its password is checked (which takes a while).
        assert throttle.begin("Alice", "10.0.0.1") == 0
        now[0] += 60
    assert throttle.begin("ALICE", "10.0.0.2") == pytest.approx(900 - 180)  # not counted
    now[0] = 901  # the first failure has left the window
    assert throttle.begin("alice", "10.0.0.2") == 0
    throttle.succeeded("alice", "10.0.0.2")  # the account's failures and this attempt go
    assert throttle.retry_after("alice", "10.0.0.1") == 0
    for name in ("b", "c", "d"):
        throttle.failed(name, "10.0.0.1")
    assert throttle.retry_after("e", "10.0.0.1") > 0  # 5 from that address (2 + 3)
    assert throttle.retry_after("e", "10.0.0.2") == 0  # the success counts for nothing
    # An attempt that could not be checked (the accounts file unreadable) is taken back.
    assert throttle.begin("f", "10.0.0.3") == 0
    throttle.cancelled("f", "10.0.0.3")
    assert not {"account:f", "address:10.0.0.3"} & set(throttle._failures)


def test_sessions_end_when_idle_or_too_old_and_at_log_out():
    now = [0.0]
    store = SessionStore(idle_s=60, max_s=300, clock=lambda: now[0])
    session = store.create("alice", "stamp")
    now[0] = 59
    assert store.get(session.sid) is session
    now[0] = 59 + 61
    assert store.get(session.sid) is None
    other = store.create("alice", "stamp")
    for _ in range(7):
        now[0] += 50
        store.get(other.sid)
    assert store.get(other.sid) is None  # active all along, but older than 300 s
    third = store.create("bob", "s")
    store.end(third.sid)
    assert store.get(third.sid) is None
    assert store.get(None) is None
    assert not same_token(None, "x")
    assert not same_token("x", "")
    assert same_token("abc", "abc")


# --- accounts ----------------------------------------------------------------------------


def test_accounts_are_argon2id_hashes_in_a_private_file(tmp_path):
    store = UserStore(tmp_path / "console" / "users.json")
    assert store.users() == {}
    assert not store.add("alice", "admin", "a-long-password")
    assert store.add("alice", "viewer", "another-password")  # replaced
    data = json.loads(store.path.read_text())
    [user] = data["users"]
    assert user["role"] == "viewer"
    assert user["password_hash"].startswith("$argon2id$")
    assert "another-password" not in store.path.read_text()
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert store.verify("Alice", "another-password").name == "alice"
    assert store.verify("alice", "a-long-password") is None
    assert store.verify("nobody", "another-password") is None
    with pytest.raises(ConsoleUserError, match=r"between 10"):
        store.add("bob", "admin", "short")
    with pytest.raises(ConsoleUserError, match="cannot be a console user name"):
        store.add("Bob Smith", "admin", "a-long-password")
    assert store.remove("alice")
    assert not store.remove("alice")


def test_a_damaged_accounts_file_is_said_so(tmp_path):
    path = tmp_path / "users.json"
    path.write_text("{not json")
    with pytest.raises(ConsoleUserError, match="damaged"):
        UserStore(path).users()


def dev_config(tmp_path, **console: object):
    """config/floatkeyd.dev.toml with its state and the console's files in ``tmp_path``."""
    config = tmp_path / "floatkeyd.toml"
    text = (CONFIG / "floatkeyd.dev.toml").read_text().split("[console]")[0]
    config.write_text(
        text.replace('state_dir = "../state/dev"', f'state_dir = "{tmp_path / "state"}"')
        .replace(
            'admin_key_file = "dev-admin.key"', f'admin_key_file = "{CONFIG / "dev-admin.key"}"'
        )
        .replace('catalogue = "product.toml"', "")
        + console_table(tmp_path, **console)
    )
    return config


def test_floatkeyctl_console_user_add_list_remove(tmp_path):
    config = dev_config(tmp_path)

    def ctl(*args, password=None):
        return run("floatkeyctl", "console-user", *args, "--config", str(config), input=password)

    added = ctl("add", "alice", "--role", "admin", "--password-stdin", password="pw-of-alice-1\n")
    assert added.returncode == 0, added.stderr
    assert "Added alice (admin)" in added.stdout
    listing = ctl("list")
    assert listing.returncode == 0
    assert listing.stdout.split()[:2] == ["alice", "admin"]
    short = ctl("add", "bob", "--role", "viewer", "--password-stdin", password="short\n")
    assert short.returncode == 1
    assert "The password must have between 10" in short.stderr
    assert "Traceback" not in short.stderr
    no_tty = ctl("add", "bob", "--role", "viewer", password="")
    assert no_tty.returncode == 1
    assert "--password-stdin" in no_tty.stderr
    bad_role = ctl("add", "bob", "--role", "root", "--password-stdin", password="x" * 12)
    assert bad_role.returncode == 2
    assert ctl("remove", "alice").returncode == 0
    gone = ctl("remove", "alice")
    assert gone.returncode == 1
    assert "There is no console account 'alice'" in gone.stderr


# --- config ------------------------------------------------------------------------------


def write(tmp_path, console: str):
    path = tmp_path / "floatkeyd.toml"
    vendor = (CONFIG / "dev-vendor.key.pub").read_text().strip()
    path.write_text(f'server = "s"\nvendor_public_key = "{vendor}"\n{console}')
    return path


def test_the_console_config_defaults_and_its_refusals(tmp_path):
    loaded = load_config(write(tmp_path, ""))
    assert loaded.config.console.host == "127.0.0.1"
    assert loaded.config.console.listen_port == 8080
    tls = load_config(
        write(tmp_path, '[console]\nhost = "0.0.0.0"\ntls_cert = "c.pem"\ntls_key = "k.pem"\n')
    )
    assert tls.config.console.listen_port == 8443
    with pytest.raises(ConfigError, match="loopback address without TLS"):
        load_config(write(tmp_path, '[console]\nhost = "0.0.0.0"\n'))
    with pytest.raises(ConfigError, match=r"tls_cert and console\.tls_key go together"):
        load_config(write(tmp_path, '[console]\ntls_cert = "c.pem"\n'))
    with pytest.raises(ConfigError, match="session_idle_minutes must be between"):
        load_config(write(tmp_path, "[console]\nsession_idle_minutes = 0\n"))
    with pytest.raises(ConfigError, match="unknown field"):
        load_config(write(tmp_path, "[console]\nlisten = 1\n"))


def test_the_development_config_has_a_console():
    loaded = load_config(CONFIG / "floatkeyd.dev.toml")
    assert loaded.config.console.listen_port == 8080
    assert loaded.path_setting(loaded.config.console.users_file).name == "users.json"


@pytest.mark.skipif(os.geteuid() != 0, reason="only root may give a file to another user")
def test_root_adding_an_account_leaves_the_file_to_the_owner_of_its_directory(tmp_path):
    """As the console's state directory: owned by the service's user, which must read the
    file that root writes there."""
    state = tmp_path / "console-state"
    state.mkdir(mode=0o700)
    os.chown(state, 4242, 4343)
    config = dev_config(tmp_path, users_file=str(state / "accounts.json"))
    for name in ("alice", "bob"):  # made, then replaced
        added = run(
            "floatkeyctl",
            "console-user",
            "add",
            name,
            "--role",
            "admin",
            "--password-stdin",
            "--config",
            str(config),
            input="a-long-password\n",
        )
        assert added.returncode == 0, added.stderr
        info = (state / "accounts.json").stat()
        assert (info.st_uid, info.st_gid) == (4242, 4343)
        assert stat.S_IMODE(info.st_mode) == 0o600
    assert [p.name for p in state.iterdir()] == ["accounts.json"]  # no temporary file left
    # Likewise the session secret, when root runs the console by hand.
    session_secret(state / "session-secret")
    info = (state / "session-secret").stat()
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (4242, 4343, 0o600)


# The console's packages are an extra: without them, the console commands say so.
BLOCKER = """
import sys
blocked = {"starlette", "jinja2", "uvicorn", "argon2", "python_multipart", "multipart",
           "itsdangerous"}

class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, Blocker())
from floatkeyd.{module} import main
sys.exit(main(sys.argv[1:]))
"""


def without_console_packages(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    script = BLOCKER.replace("{module}", module)
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_without_the_console_extra_the_console_commands_say_what_to_install(tmp_path):
    config = str(dev_config(tmp_path))
    advice = "The console needs floatkey[console]"
    install = "pip install 'floatkey[console]'"
    for module, args in [
        ("_ctl", ("console-user", "list", "--config", config)),
        ("_ctl", ("console-user", "add", "alice", "--role", "admin", "--config", config)),
        ("_cli", ("console", "--config", config)),
    ]:
        result = without_console_packages(module, *args)
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        assert advice in result.stderr, result.stderr
        assert install in result.stderr
        assert "Traceback" not in result.stderr
    serve = without_console_packages("_cli", "console", "--config", config)
    assert "starlette, jinja2, uvicorn, argon2-cffi, python-multipart, itsdangerous" in serve.stderr
    # Everything else works without them (an agent-only machine has none of them).
    for module, args in [
        ("_ctl", ("--version",)),
        ("_ctl", ("console-user", "--help")),
        ("_cli", ("--version",)),
    ]:
        result = without_console_packages(module, *args)
        assert result.returncode == 0, (args, result.stderr)


def test_floatkeyd_console_help_names_the_default_config():
    result = run("floatkeyd", "console", "--help")
    assert result.returncode == 0
    assert "(default /etc/floatkey/floatkeyd.toml)" in " ".join(result.stdout.split())


def test_product_key_reasons_are_every_key_refusal_and_no_other():
    assert {
        "malformed",
        "mistyped",
        "unknown_format",
        "bad_signature",
        "wrong_product_version",
        "licensee_mismatch",
        "expired",
        "seats_out_of_range",
        "cleartext_key",
        "unreadable_key",
    } == PRODUCT_KEY_REASONS
