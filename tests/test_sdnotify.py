"""sd_notify by hand, tested against a real datagram socket (path and abstract)."""

from __future__ import annotations

import os
import socket

from floatkeyd.sdnotify import Notifier


def receive(sock: socket.socket) -> dict[str, str]:
    sock.settimeout(2)
    data = sock.recv(4096).decode()
    return dict(line.split("=", 1) for line in data.split("\n"))


def test_ready_status_watchdog_and_stopping_reach_a_path_socket(tmp_path):
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        notifier = Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "4000000"})
        assert notifier.enabled
        assert notifier.watchdog_interval == 2.0
        notifier.ready("Serving")
        assert receive(sock) == {"READY": "1", "STATUS": "Serving", "MAINPID": str(os.getpid())}
        notifier.watchdog()
        assert receive(sock) == {"WATCHDOG": "1"}
        notifier.stopping()
        assert receive(sock) == {"STOPPING": "1", "STATUS": "Stopping"}
        notifier.close()


def test_an_abstract_namespace_socket_works():
    name = f"floatkey-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name})
        notifier.status("Licensed: 3/10 seats in use")
        assert receive(sock) == {"STATUS": "Licensed: 3/10 seats in use"}
        notifier.close()


def test_without_systemd_nothing_happens():
    notifier = Notifier({})
    assert not notifier.enabled
    assert notifier.watchdog_interval is None
    notifier.ready("x")  # no error, no socket


def test_a_watchdog_meant_for_another_process_is_ignored():
    notifier = Notifier({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"})
    assert notifier.watchdog_interval is None


def test_a_receiver_that_does_not_read_never_blocks_the_sender(tmp_path):
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        notifier = Notifier({"NOTIFY_SOCKET": str(path)})
        for i in range(100_000):  # far more than the socket buffer holds
            notifier.status(f"retrying {i}")
        notifier.close()
