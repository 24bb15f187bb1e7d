"""The license file: the application checks the daemon's signed seat for itself.

Pure verification against envelopes signed here (no broker), then a real daemon with a
real ``floatkey-agent run`` for the file it writes and renews, and the example
application refusing what it cannot verify.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from structlog.testing import capture_logs

from conftest import REPO, command
from floatkey import LicenseFileInvalid, load_agent_config, protocol, verify_license_file
from floatkey.envelope import Signer, peek
from floatkey.licensefile import SignedSeat, trusted_server_key
from floatkey.pinning import KnownServers
from floatkey.signing import b64url_encode, key_id, public_key_text
from licensing import issue, unlock
from servers import eventually, make_agent, write_agent_config

CHILD = Path(__file__).with_name("child_app.py")
EXAMPLE = REPO / "clients" / "examples" / "flowdesigner.py"
TOPIC = "floatkey/srv1/clients/flowdesigner-host-1"
NOW = 1_795_000_000_000
LEASE = "lease-secret-1"
SERVER = Signer(Ed25519PrivateKey.generate())
SERVER_KEY = public_key_text(SERVER.public_key)


def granted(**overrides: object) -> protocol.SeatGranted:
    fields: dict[str, object] = {
        "nonce": "n1",
        "lease": LEASE,
        "generation": 3,
        "licensed": True,
        "features": ["dataflow", "subflow"],
        "expires_at": NOW + 30_000,
        "renew_after_s": 10.0,
        "ts": NOW,
    }
    fields.update(overrides)
    return protocol.SeatGranted(**fields)  # type: ignore[arg-type]


def renewed(**overrides: object) -> protocol.SeatRenewed:
    fields: dict[str, object] = {"lease": LEASE, "expires_at": NOW + 60_000, "ts": NOW + 30_000}
    fields.update(overrides)
    return protocol.SeatRenewed(**fields)  # type: ignore[arg-type]


def seal(body: protocol.DaemonToClient, topic: str = TOPIC, signer: Signer = SERVER) -> bytes:
    return signer.seal(topic, protocol.encode(body))


def write(
    path: Path,
    grant: bytes,
    renewal: bytes | None = None,
    *,
    topic: str = TOPIC,
    server_key: str = SERVER_KEY,
    **plain: object,
) -> Path:
    """A license file as floatkey-agent writes it, with ``plain`` over its unsigned fields."""
    seat = SignedSeat(server_key=server_key, topic=topic, grant=grant, renewal=renewal)
    peeked = peek(grant)
    body = protocol.decode_to_client(peeked[1]) if peeked else None
    is_grant = isinstance(body, protocol.SeatGranted)
    document: dict[str, object] = {
        "status": "licensed",
        "features": sorted(body.features) if is_grant else [],
        "generation": body.generation if is_grant else None,
        "signed": seat.section(),
    }
    document.update(plain)
    path.write_text(json.dumps(document))
    return path


def refused(path: Path, *, key: str = SERVER_KEY, now_ms: int = NOW) -> LicenseFileInvalid:
    with pytest.raises(LicenseFileInvalid) as caught:
        verify_license_file(path, key, now_ms=now_ms)
    assert caught.value.reason == "license_file_invalid"
    return caught.value


# --- verification, without a broker -----------------------------------------------------


def test_a_genuine_file_verifies_and_its_renewal_extends_the_lease(tmp_path):
    path = write(tmp_path / "license.json", seal(granted()))
    verified = verify_license_file(path, SERVER_KEY, now_ms=NOW)
    assert verified.features == {"dataflow", "subflow"}
    assert verified.generation == 3
    assert verified.client_id == "flowdesigner-host-1"
    assert verified.expires_at == NOW + 30_000

    write(path, seal(granted()), seal(renewed()))
    verified = verify_license_file(path, SERVER.public_key, now_ms=NOW + 45_000)
    assert verified.expires_at == NOW + 60_000
    # A renewal older than the grant does not shorten the lease.
    write(path, seal(granted()), seal(renewed(expires_at=NOW + 1)))
    assert verify_license_file(path, SERVER_KEY, now_ms=NOW).expires_at == NOW + 30_000


def test_a_file_whose_lease_has_ended_is_refused(tmp_path):
    path = write(tmp_path / "license.json", seal(granted()), seal(renewed()))
    assert verify_license_file(path, SERVER_KEY, now_ms=NOW + 60_000).features
    error = refused(path, now_ms=NOW + 60_001)
    assert error.problem == "lease_ended"
    assert "lease ended" in error.message


def test_a_file_signed_by_another_key_is_refused_even_if_it_names_that_key(tmp_path):
    forger = Signer(Ed25519PrivateKey.generate())
    forged = granted(features=["dataflow", "reporting", "scheduler", "subflow", "workflow"])
    path = write(
        tmp_path / "license.json",
        seal(forged, signer=forger),
        server_key=public_key_text(forger.public_key),
    )
    # Verified against the key the file names, it would pass: that key is the forger's.
    assert verify_license_file(path, public_key_text(forger.public_key), now_ms=NOW)
    error = refused(path)
    assert error.problem == "other_key"
    assert forger.kid in error.message
    assert key_id(SERVER.public_key) in error.message
    # A genuine grant with a renewal from another key: refused too.
    write(tmp_path / "mixed.json", seal(granted()), seal(renewed(), signer=forger))
    assert refused(tmp_path / "mixed.json").problem == "other_key"


def test_a_grant_moved_from_another_topic_or_edited_inside_is_refused(tmp_path):
    elsewhere = "floatkey/srv1/clients/someone-else"
    moved = write(tmp_path / "moved.json", seal(granted(), topic=elsewhere))
    error = refused(moved)
    assert error.problem == "bad_signature"
    assert "moved from another topic" in error.message
    # The body swapped for a richer one under the genuine signature.
    envelope = json.loads(seal(granted()))
    richer = granted(features=["dataflow", "reporting", "scheduler", "subflow", "workflow"])
    envelope["body"] = b64url_encode(protocol.encode(richer))
    edited = write(tmp_path / "edited.json", json.dumps(envelope).encode())
    assert refused(edited).problem == "bad_signature"
    # A renewal signed for another topic.
    write(tmp_path / "renewal.json", seal(granted()), seal(renewed(), topic=elsewhere))
    assert refused(tmp_path / "renewal.json").problem == "bad_signature"


def test_features_or_generation_edited_in_the_json_are_refused(tmp_path):
    path = tmp_path / "license.json"
    write(path, seal(granted()), features=["dataflow", "reporting", "subflow", "workflow"])
    error = refused(path)
    assert error.problem == "edited"
    assert "lists the features dataflow, reporting, subflow, workflow" in error.message
    assert "signed grant lists dataflow, subflow" in error.message
    write(path, seal(granted()), generation=4)
    assert refused(path).problem == "edited"


def test_an_unlicensed_session_and_a_renewal_of_another_lease_prove_nothing(tmp_path):
    path = tmp_path / "license.json"
    write(path, seal(granted(licensed=False, features=[])))
    error = refused(path)
    assert error.problem == "unlicensed"
    assert "no license yet" in error.message
    write(path, seal(granted()), seal(renewed(lease="another-lease")))
    assert refused(path).problem == "other_lease"
    write(path, seal(granted()), seal(granted()))
    assert refused(path).problem == "malformed"
    write(path, seal(renewed()))
    assert refused(path).problem == "malformed"


@pytest.mark.parametrize(
    ("contents", "problem"),
    [
        (None, "unreadable"),
        (b"", "malformed"),
        (b"not json {", "malformed"),
        (b"[1, 2, 3]", "malformed"),
        (b'{"signed": {"topic": 5}}', "malformed"),
        (b'{"signed": {"server_key": "k", "topic": "t", "grant": "g", "extra": 1}}', "malformed"),
        (b'{"status": "licensed", "features": ["dataflow"]}', "unsigned"),
        (b'{"signed": null}', "unsigned"),
        (b" " * (4 * 64 * 1024 + 1), "malformed"),
        (
            json.dumps(
                {"signed": {"server_key": "k", "topic": TOPIC, "grant": "{", "renewal": None}}
            ).encode(),
            "malformed",
        ),
        (
            json.dumps(
                {"signed": {"server_key": "k", "topic": "floatkey/srv1/state", "grant": "{}"}}
            ).encode(),
            "malformed",
        ),
    ],
)
def test_a_missing_or_malformed_file_is_one_sentence(tmp_path, contents, problem):
    path = tmp_path / "license.json"
    if contents is not None:
        path.write_bytes(contents)
    error = refused(path)
    assert error.problem == problem
    assert "license file" in error.message
    assert "Traceback" not in error.message
    assert error.__cause__ is None


def test_the_server_key_comes_from_the_agent_config_or_its_pinned_state_file(tmp_path):
    config = tmp_path / "agent.toml"
    config.write_text(f'server = "srv1"\nserver_key = "{SERVER_KEY}"\n')
    assert trusted_server_key(load_agent_config(config)) == SERVER_KEY
    config.write_text('server = "srv1"\nstate_file = "known.json"\n')
    loaded = load_agent_config(config)
    assert trusted_server_key(loaded) is None
    KnownServers(loaded.state_path()).pin("floatkey/srv1", SERVER.public_key)
    assert trusted_server_key(loaded) == SERVER_KEY


# --- the example application -------------------------------------------------------------


def run_example(tmp_path: Path, env: dict[str, str], *args: str) -> str:
    """Start flowdesigner.py, read its menu, stop it; return what it printed."""
    process = subprocess.Popen(
        [command("python"), str(EXAMPLE), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "FLOWDESIGNER_DOCUMENT": str(tmp_path / "doc.json"), **env},
    )
    assert process.stdout is not None
    lines = []
    try:
        for line in process.stdout:
            lines.append(line)
            if line.strip() == "Quit":
                break
    finally:
        process.send_signal(signal.SIGTERM)
        rest, _ = process.communicate(timeout=20)
    return "".join(lines) + rest


def test_the_example_believes_only_what_the_license_file_proves(tmp_path):
    config = tmp_path / "agent.toml"
    config.write_text(f'server = "srv1"\nserver_key = "{SERVER_KEY}"\n')
    everything = "dataflow,reporting,scheduler,subflow,workflow"
    forged_env = {"FLOATKEY_FEATURES": everything, "FLOATKEY_STATUS": "licensed"}

    # No agent at all: the environment alone proves nothing.
    screen = run_example(tmp_path, forged_env, "--agent-config", str(config))
    assert "license: not verified" in screen
    assert "was not started by floatkey-agent" in screen
    assert "New Dataflow   [disabled]" in screen

    # A file made up with its own key.
    forger = Signer(Ed25519PrivateKey.generate())
    forged = granted(features=everything.split(","), expires_at=protocol.now_ms() + 600_000)
    path = write(
        tmp_path / "forged.json",
        seal(forged, signer=forger),
        server_key=public_key_text(forger.public_key),
    )
    screen = run_example(
        tmp_path, {**forged_env, "FLOATKEY_LICENSE_FILE": str(path)}, "--agent-config", str(config)
    )
    assert "signed by another key" in screen
    assert "[enabled ]" not in screen

    # A genuine file for two features: the environment's extra ones stay disabled.
    genuine = granted(expires_at=protocol.now_ms() + 600_000)
    path = write(tmp_path / "genuine.json", seal(genuine))
    screen = run_example(
        tmp_path, {**forged_env, "FLOATKEY_LICENSE_FILE": str(path)}, "--agent-config", str(config)
    )
    assert "License check: verified, seat of flowdesigner-host-1" in screen
    assert "New Dataflow   [enabled ]" in screen
    assert "New Subflow    [enabled ]" in screen
    assert "New Reporting  [disabled]" in screen
    assert "New Workflow   [disabled]" in screen


# --- a real daemon and a real floatkey-agent run ----------------------------------------


def short_leases(server, seconds: int = 10) -> None:
    """Leases of ``seconds`` (renewed every third of it) instead of the tests' 30 s."""
    text = server.config_path.read_text()
    assert "lease_seconds = 30" in text
    server.config_path.write_text(text.replace("lease_seconds = 30", f"lease_seconds = {seconds}"))


def start_supervised(server, tmp_path: Path, name: str, *program: str) -> subprocess.Popen[bytes]:
    config = write_agent_config(server, tmp_path / f"{name}.toml")
    argv = [command("floatkey-agent"), "run", "--config", str(config), "--app", name, "--"]
    with (tmp_path / f"{name}.out").open("ab") as out:
        return subprocess.Popen(
            [*argv, *(program or (sys.executable, str(CHILD), str(tmp_path / name)))],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )


def read_json(path: Path) -> dict[str, object]:
    return json.loads(path.read_text())


def mode(path: Path) -> str:
    return oct(path.stat().st_mode & 0o777)


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)  # passed on to the application, which exits 0
    assert process.wait(20) == 0


async def test_the_agent_writes_a_file_that_verifies_and_renews_it(server_factory, tmp_path):
    server = server_factory("mosquitto")
    short_leases(server)
    server.start_daemon()
    assert (await asyncio.to_thread(unlock, server, issue(seats=2))).returncode == 0
    app = start_supervised(server, tmp_path, "app")
    try:
        await eventually((tmp_path / "app.env").exists, within=20)
        env = read_json(tmp_path / "app.env")
        path = Path(env["FLOATKEY_LICENSE_FILE"])
        assert mode(path) == "0o600"  # it holds the lease token
        key = server.server_key_text()
        first = verify_license_file(path, key)
        assert first.features == {"dataflow", "subflow", "workflow"}
        assert first.generation == 1
        assert first.client_id == env["FLOATKEY_CLIENT_ID"]
        document = read_json(path)
        assert document["signed"]["server_key"] == key
        assert document["signed"]["topic"] == server.topics.client(env["FLOATKEY_CLIENT_ID"])
        copy = Path(shutil.copy(path, tmp_path / "copy.json"))

        # Renewed (every third of the 10 s lease), the file proves a later end.
        await eventually(lambda: verify_license_file(path, key).expires_at > first.expires_at)
        assert read_json(path)["signed"]["renewal"] is not None
        # The copy taken before proves nothing once its lease has ended.
        assert refused(copy, key=key, now_ms=first.expires_at + 1).problem == "lease_ended"
        # Nor does the genuine file checked against another server's key.
        other = public_key_text(Ed25519PrivateKey.generate().public_key())
        assert refused(path, key=other, now_ms=first.expires_at).problem == "other_key"
    finally:
        await asyncio.to_thread(stop, app)


async def test_lease_listeners_hear_renewals_and_a_failing_one_is_counted(server_factory, tmp_path):
    server = server_factory("mosquitto")
    short_leases(server)
    server.start_daemon()
    assert (await asyncio.to_thread(unlock, server, issue())).returncode == 0
    async with make_agent(server, tmp_path, "listened") as agent:
        granted_seat = agent.signed_seat
        assert granted_seat is not None
        heard: list[SignedSeat] = []

        def broken_listener(_seat):
            raise OSError(28, "No space left on device")

        agent.on_lease_change(broken_listener)
        agent.on_lease_change(heard.append)
        with capture_logs() as logs:
            await eventually(lambda: heard, within=20)
        seat = heard[0]
        assert seat.grant == granted_seat.grant
        assert seat.renewal is not None
        path = tmp_path / "license.json"
        path.write_text(json.dumps({"signed": seat.section()}))
        verified = verify_license_file(path, server.server_key_text())
        assert verified.features == {"dataflow", "subflow", "workflow"}
        [(name, count)] = agent.listener_failures.items()
        assert name.endswith("broken_listener")
        assert count >= 1
        failure = next(e for e in logs if e["event"] == "lease listener failed")
        assert failure["listener"] == name
        assert agent.has_seat
        assert not agent.shutdown_requested.is_set()
    assert agent.signed_seat is None  # released: nothing to prove any more


async def test_the_example_under_the_agent_shows_the_verified_features(server_factory, tmp_path):
    server = server_factory("embedded")
    server.start_daemon()
    assert (await asyncio.to_thread(unlock, server, issue())).returncode == 0
    config = write_agent_config(server, tmp_path / "trusted.toml")
    app = start_supervised(
        server,
        tmp_path,
        "flowdesigner",
        command("python"),
        str(EXAMPLE),
        "--agent-config",
        str(config),
        "--document",
        str(tmp_path / "doc.json"),
    )
    try:
        out = tmp_path / "flowdesigner.out"
        screen = await eventually(
            lambda: "Quit" in (text := out.read_text(errors="replace")) and text, within=20
        )
        assert "License check: verified, seat of flowdesigner-" in screen
        for label in ("Dataflow", "Workflow", "Subflow"):
            assert f"New {label:<10} [enabled ]" in screen
        assert "New Reporting  [disabled]" in screen
    finally:
        await asyncio.to_thread(stop, app)
