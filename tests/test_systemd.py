"""systemd's notification and socket-activation protocols (the command runs them end to
end in test_cli; these are the edges)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from trio_accept._systemd import SystemdError, listen_fds, notify, notify_address


def test_notify_address() -> None:
    assert notify_address("") is None
    assert notify_address("/run/systemd/notify") == "/run/systemd/notify"
    assert notify_address("@abstract/name") == "\0abstract/name"
    assert notify_address("vsock:2:1234") is None


def test_notify(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not notify("READY=1")
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert notify("READY=1", "STATUS=serving")
        assert manager.recv(4096) == b"READY=1\nSTATUS=serving"
    # The manager went away: a warning, not an exception.
    assert not notify("STOPPING=1")
    assert "cannot notify the service manager (STOPPING=1)" in caplog.text
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1")
    assert not notify("READY=1")
    assert "NOTIFY_SOCKET=vsock:2:1: unsupported address" in caplog.text


def test_abstract_notify_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"trio-accept-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify("READY=1")
        assert manager.recv(4096) == b"READY=1"


def test_listen_fds_are_taken_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LISTEN_PID", raising=False)
    monkeypatch.delenv("LISTEN_FDS", raising=False)
    assert listen_fds() == []
    # Meant for another process (a parent that did not unset them): not ours.
    monkeypatch.setenv("LISTEN_PID", str(os.getpid() + 1))
    monkeypatch.setenv("LISTEN_FDS", "1")
    monkeypatch.setenv("LISTEN_FDNAMES", "https")
    assert listen_fds() == []
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        assert name not in os.environ
    monkeypatch.setenv("LISTEN_PID", str(os.getpid()))
    monkeypatch.setenv("LISTEN_FDS", "0")
    assert listen_fds() == []


@pytest.mark.parametrize(
    ("pid", "count", "message"),
    [
        ("x", "1", "expected two numbers"),
        ("self", "-1", "expected a number of sockets"),
    ],
)
def test_malformed_listen_fds(
    monkeypatch: pytest.MonkeyPatch, pid: str, count: str, message: str
) -> None:
    monkeypatch.setenv("LISTEN_PID", str(os.getpid()) if pid == "self" else pid)
    monkeypatch.setenv("LISTEN_FDS", count)
    with pytest.raises(SystemdError, match=message):
        listen_fds()
