"""The example applications, started through the agent, show the seed's experience."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import REPO, command
from licensing import ctl, issue, unlock
from servers import clients, write_agent_config
from xscreen import VirtualDisplay, keep, require_tk, wait_for_change

pytestmark = pytest.mark.broker
EXAMPLES = REPO / "clients" / "examples"
EXAMPLE = EXAMPLES / "flowdesigner.py"
EMBEDDED = EXAMPLES / "embedded.py"


def start(
    server, tmp_path, name: str, *args: str, agent: tuple[str, ...] = ()
) -> subprocess.Popen[bytes]:
    """flowdesigner.py under ``floatkey-agent run [AGENT...]``, as the README starts it.

    In ``tmp_path / "cwd"``, with the user's data directory in ``tmp_path / "data"``.
    """
    config = write_agent_config(server, tmp_path / f"{name}.toml")
    (tmp_path / "cwd").mkdir(exist_ok=True)
    with (tmp_path / f"{name}.out").open("ab") as out:
        return subprocess.Popen(
            [
                command("floatkey-agent"),
                "run",
                "--config",
                str(config),
                "--app",
                "flowdesigner",
                *agent,
                "--",
                command("python"),
                str(EXAMPLE),
                *args,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp_path / "cwd",
            env={"XDG_DATA_HOME": str(tmp_path / "data"), "PATH": "/usr/bin:/bin"},
        )


def wait_for(path, text: str, within: float = 20, after: int = 0) -> str:
    """The content of ``path`` once ``text`` is in it (past its first ``after`` characters)."""
    deadline = time.monotonic() + within
    content = ""
    while time.monotonic() < deadline:
        content = path.read_text(errors="replace") if path.exists() else ""
        if text in content[after:]:
            return content[after:]
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in {path}:\n{content}")


def document_line(screen: str) -> tuple[str, int]:
    """The document an instance opened, and the edits it found in it."""
    found = re.search(r"Document: (\S+) \((\d+) edits so far\)", screen)
    assert found, screen
    return found[1], int(found[2])


@pytest.fixture
def started():
    """Processes a test starts; any still running when it ends (it failed) are killed."""
    processes: list[subprocess.Popen[bytes]] = []
    yield processes
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait(20)


def test_two_example_clients_shut_down_on_unlock_and_restart_with_features(
    server_factory, tmp_path, started
):
    server = server_factory("embedded")
    server.start_daemon()
    first = [start(server, tmp_path, name) for name in ("one", "two")]
    started += first
    opened = {}
    for name in ("one", "two"):
        menu = wait_for(tmp_path / f"{name}.out", "Quit")
        assert "New Dataflow   [disabled]" in menu
        assert "license: unlicensed" in menu
        opened[name] = document_line(menu)
    # Each instance has a document of its own in the user's data directory.
    data = tmp_path / "data" / "flowdesigner"
    assert {path for path, _ in opened.values()} == {
        str(data / "document-1.json"),
        str(data / "document-2.json"),
    }
    assert all(edits == 0 for _, edits in opened.values())

    result = unlock(server, issue())
    assert "2 connected clients were told to shut down" in result.stdout
    saved = {}
    for name, process in zip(("one", "two"), first, strict=True):
        assert process.wait(20) == 75
        output = wait_for(tmp_path / f"{name}.out", "closing.")
        assert "Closing because: A new license was activated" in output
        document = json.loads((data / opened[name][0]).read_text())
        assert document["edits"] >= 1
        saved[opened[name][0]] = document["edits"]
    assert list((tmp_path / "cwd").iterdir()) == []  # nothing written where it was started

    # Restarted (the service manager does it), each finds a document and its work again.
    offsets = {name: len((tmp_path / f"{name}.out").read_text()) for name in ("one", "two")}
    again = [start(server, tmp_path, name) for name in ("one", "two")]
    started += again
    reopened = {}
    for name in ("one", "two"):
        menu = wait_for(tmp_path / f"{name}.out", "Quit", after=offsets[name])
        assert "license: licensed, licensed to Ada Lovelace" in menu
        for label in ("Dataflow", "Workflow", "Subflow"):
            assert f"New {label:<10} [enabled ]" in menu
        assert "New Reporting  [disabled]" in menu
        path, edits = document_line(menu)
        reopened[path] = edits
    assert reopened == saved
    for process in again:
        process.terminate()
        assert process.wait(20) == 0
    assert list((tmp_path / "cwd").iterdir()) == []


def test_the_example_shows_the_idle_warning(server_factory, tmp_path, started):
    server = server_factory("mosquitto", extra="idle_timeout = 60\nidle_warning = 59")
    server.start_daemon()
    assert unlock(server, issue(seats=1)).returncode == 0
    activity = tmp_path / "activity"
    started.append(start(server, tmp_path, "idle", agent=("--activity-file", str(activity))))
    # Idle for a second: the server warns; the application shows it.
    screen = wait_for(tmp_path / "idle.out", "Flow Designer notice: ", within=30)
    assert re.search(
        r"Flow Designer notice: Your seat will be released in \d+ seconds unless you continue",
        screen,
    ), screen
    started[0].terminate()
    assert started[0].wait(20) == 0


def test_a_document_named_on_the_command_line_is_used_by_one_instance_at_a_time(tmp_path):
    document = tmp_path / "designs" / "plant.json"
    env = {"PATH": "/usr/bin:/bin", "XDG_DATA_HOME": str(tmp_path / "data")}
    argv = [command("python"), str(EXAMPLE), "--document", str(document)]
    first = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path
    )
    try:
        assert first.stdout is not None
        lines = [first.stdout.readline() for _ in range(3)]
        assert lines[2] == f"Document: {document} (0 edits so far)\n", lines
        second = subprocess.run(
            argv, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=20, check=False
        )
        assert second.returncode == 78
        assert f"The document {document} is open in another Flow Designer" in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        rest, _ = first.communicate(timeout=20)
    assert first.returncode == 0
    assert f"edits to {document}; closing." in rest
    assert json.loads(document.read_text())["edits"] >= 1
    assert not (tmp_path / "data").exists()


# --- embedded.py ------------------------------------------------------------------------


def test_the_embedded_example_runs_as_documented_and_releases_its_seat_on_sigterm(
    server_factory, tmp_path
):
    # A will keeps the seat for will_grace_seconds (the agent may be back); as long as
    # the lease here, so that only a release frees it while the test looks.
    server = server_factory("embedded", extra="will_grace_seconds = 30")
    daemon = server.start_daemon()
    config = write_agent_config(server, tmp_path / "embedded.toml")
    documented = re.search(r"^ {4}(\.venv/bin/python \S+)", EMBEDDED.read_text(), re.MULTILINE)
    assert documented, "embedded.py's docstring gives no command"
    assert documented[1] == ".venv/bin/python clients/examples/embedded.py"
    assert documented[1] in (REPO / "README.md").read_text()
    python = REPO / ".venv" / "bin" / "python"
    if not python.exists():  # a test run from an environment of its own, not scripts/test
        python = command("python")
    out = tmp_path / "embedded.out"
    with out.open("wb") as log:
        # A fresh shell in the checkout: no PYTHONPATH, nothing but the .venv.
        process = subprocess.Popen(
            [str(python), "clients/examples/embedded.py", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        )
    try:
        screen = wait_for(out, "Holding a seat as ")
        client = re.search(r"Holding a seat as (\S+)\.", screen)
        assert client, screen
        assert [c["client"] for c in clients(server)] == [client[1]]
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0
    finally:
        if process.poll() is None:
            process.kill()
    screen = out.read_text()
    assert "Saving work before stopping (asked to stop)." in screen
    assert "Traceback" not in screen
    # Released, not left to the will: gone from the daemon's list long before the grace.
    deadline = time.monotonic() + 20
    while clients(server):
        assert time.monotonic() < deadline, "the seat was not released"
        time.sleep(0.1)
    events = [json.loads(line) for line in daemon.log().splitlines() if line.startswith("{")]
    mine = [e["event"] for e in events if e.get("client") == client[1]]
    assert "seat released" in mine, mine
    assert "client gone (will)" not in mine, mine


def test_the_embedded_example_released_by_an_administrator_ends_with_77(server_factory, tmp_path):
    """75 would have a unit start it again at once, taking the seat straight back."""
    server = server_factory("embedded")
    server.start_daemon()
    config = write_agent_config(server, tmp_path / "embedded.toml")
    out = tmp_path / "embedded.out"
    with out.open("wb") as log:
        process = subprocess.Popen(
            [command("python"), str(EMBEDDED), str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "HOME": str(tmp_path)},
        )
    try:
        client = re.search(r"Holding a seat as (\S+)\.", wait_for(out, "Holding a seat as "))
        assert client, out.read_text()
        released = ctl(server, "release", client[1])
        assert released.returncode == 0, released.stderr
        assert process.wait(20) == 77, out.read_text()
    finally:
        if process.poll() is None:
            process.kill()
    assert "Traceback" not in out.read_text()


def test_the_embedded_example_says_why_it_cannot_start(tmp_path):
    missing = tmp_path / "nowhere.toml"
    result = subprocess.run(
        [command("python"), str(EMBEDDED), str(missing)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={**os.environ, "PYTHONPATH": ""},
    )
    assert result.returncode == 78
    assert result.stderr.startswith("embedded: ")
    assert "Traceback" not in result.stderr


# --- flowdesigner_tk.py: the window -----------------------------------------------------

WINDOW = EXAMPLES / "flowdesigner_tk.py"
FILE_MENU = (18, 14)  # where the File menu's title is: the window is at 0,0, no manager
MENU_BOX = (0, 28, 140, 270)  # where the File menu drops down
LABELS = {"dataflow", "workflow", "subflow", "reporting", "scheduler"}


def window_report(path, after: int) -> dict[str, object]:
    """The application's ``Flow Designer window: {...}`` line, once it has drawn."""
    screen = wait_for(path, "Flow Designer window: ", after=after)
    while "\n" not in screen.split("Flow Designer window: ", 1)[1]:
        screen = wait_for(path, "Flow Designer window: ", after=after)
    line = screen.split("Flow Designer window: ", 1)[1].split("\n", 1)[0]
    return json.loads(line)


def screenshot(display, tmp_path, name: str) -> None:
    path = display.screenshot(tmp_path / name)
    keep(path)  # to $FLOATKEY_SCREENSHOTS too, when set


def open_file_menu(display) -> None:
    closed = display.region(MENU_BOX)
    display.xdotool("mousemove", *map(str, FILE_MENU), "click", "1")
    wait_for_change(display, MENU_BOX, closed)


def close_file_menu(display) -> None:
    shown = display.region(MENU_BOX)
    display.xdotool("mousemove", "500", "250", "click", "1")  # beside the menu
    wait_for_change(display, MENU_BOX, shown)


def start_window(display, config, tmp_path) -> subprocess.Popen[bytes]:
    """flowdesigner_tk.py under ``floatkey-agent run`` on ``display``."""
    with (tmp_path / "window.out").open("ab") as log:
        return subprocess.Popen(
            [
                command("floatkey-agent"),
                "run",
                "--config",
                str(config),
                "--app",
                "flowdesigner",
                "--",
                command("python"),
                str(WINDOW),
                "--agent-config",
                str(config),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tmp_path / "cwd",
            env={
                "DISPLAY": display.display,
                "XDG_DATA_HOME": str(tmp_path / "data"),
                "PATH": "/usr/bin:/bin",
            },
        )


@pytest.fixture
def display(tmp_path):
    """A virtual X display of its own (and Tk, to draw on it)."""
    require_tk()
    screen = VirtualDisplay(tmp_path)
    screen.start()
    yield screen
    screen.stop()


def test_the_window_greys_out_what_the_license_lacks_and_restarts_with_the_new_features(
    server_factory, tmp_path, display
):
    server = server_factory("embedded")
    server.start_daemon()
    config = write_agent_config(server, tmp_path / "window.toml")
    out = tmp_path / "window.out"
    (tmp_path / "cwd").mkdir()

    window = start_window(display, config, tmp_path)
    try:
        report = window_report(out, 0)
        assert report["file_menu"] == dict.fromkeys(LABELS, "disabled")
        assert str(report["status"]).startswith("Unlicensed")
        screenshot(display, tmp_path, "window-1-unlicensed.png")
        open_file_menu(display)
        screenshot(display, tmp_path, "window-2-unlicensed-file-menu.png")
        close_file_menu(display)

        key = issue()
        # floatkeyctl unlock returns once the window has closed: the notice is looked at
        # while it waits.
        with ThreadPoolExecutor(1) as pool:
            unlocking = pool.submit(unlock, server, key)
            notice = (
                "Flow Designer notice: A new license was activated; the application will restart."
            )
            wait_for(out, notice)
            screenshot(display, tmp_path, "window-3-new-license-notice.png")
            result = unlocking.result()
        assert "1 connected client was told to shut down" in result.stdout, result.stdout
        assert window.wait(20) == 75  # floatkey-agent@.service starts it again
    finally:
        if window.poll() is None:
            window.kill()
            window.wait(20)
    document = json.loads((tmp_path / "data" / "flowdesigner" / "document-1.json").read_text())
    assert document["edits"] >= 1

    offset = len(out.read_text())
    window = start_window(display, config, tmp_path)  # what the service manager does on 75
    try:
        report = window_report(out, offset)
        assert report["file_menu"] == {
            "dataflow": "normal",
            "workflow": "normal",
            "subflow": "normal",
            "reporting": "disabled",
            "scheduler": "disabled",
        }
        assert report["status"] == "Licensed to Ada Lovelace, Analytical Engines Ltd — 10 seats"
        screenshot(display, tmp_path, "window-4-licensed.png")
        open_file_menu(display)
        screenshot(display, tmp_path, "window-5-licensed-file-menu.png")
        window.terminate()  # passed on: it saves and closes at once, no notice
        assert window.wait(20) == 0
    finally:
        if window.poll() is None:
            window.kill()
            window.wait(20)
    restarted = out.read_text()[offset:]
    assert f"edits to {tmp_path / 'data' / 'flowdesigner' / 'document-1.json'}" in restarted
    assert "Flow Designer notice" not in restarted
    assert list((tmp_path / "cwd").iterdir()) == []


def test_the_window_without_a_display_says_what_to_run_instead(tmp_path):
    require_tk()
    result = subprocess.run(
        [command("python"), str(WINDOW)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={"PATH": "/usr/bin:/bin", "XDG_DATA_HOME": str(tmp_path / "data")},
    )
    assert result.returncode == 78  # not restarted by floatkey-agent@.service
    assert "cannot open a window" in result.stderr
    assert "clients/examples/flowdesigner.py in a terminal" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "data").exists()


def test_an_instance_with_a_stable_client_id_finds_its_own_document_again(tmp_path, request):
    def start_alone(client_id: str) -> subprocess.Popen[str]:
        env = {
            "PATH": "/usr/bin:/bin",
            "XDG_DATA_HOME": str(tmp_path / "data"),
            "FLOATKEY_CLIENT_ID": client_id,  # floatkey-agent run --client-id ID
        }
        process = subprocess.Popen(
            [command("python"), str(EXAMPLE)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=tmp_path,
        )
        request.addfinalizer(lambda: process.poll() is None and process.kill())
        return process

    def opened(process: subprocess.Popen[str]) -> str:
        assert process.stdout is not None
        lines = [process.stdout.readline() for _ in range(3)]
        return document_line(lines[2])[0]

    def stop(process: subprocess.Popen[str]) -> None:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=20)
        assert process.returncode == 0

    first, second = start_alone("designer-a"), start_alone("designer-b")
    mine = {"designer-a": opened(first), "designer-b": opened(second)}
    stop(first)
    stop(second)
    # Started again alone, "designer-b" takes its own, not the first free one.
    again = start_alone("designer-b")
    assert opened(again) == mine["designer-b"]
    stop(again)
