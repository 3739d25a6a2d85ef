"""The command's dealings with the operating system: sockets, key files, users."""

from __future__ import annotations

import errno
import os
import pwd
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from trio_accept._process import (
    SetupError,
    bind,
    check_key_permissions,
    describe_address,
    drop_privileges,
    identity,
    inherited,
    key_password,
)


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    """Sockets a test made, closed at the end."""
    made: list[socket.socket] = []
    yield made
    for sock in made:
        sock.close()


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


def test_bind_every_address_of_a_name_on_one_port(
    sockets: list[socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    if not ipv6_loopback():
        pytest.skip("no IPv6 loopback")
    # A name for both loopback addresses (this machine's "localhost" has one only).
    real = socket.getaddrinfo

    def both(host: str, port: int, *args: object, **kwargs: object) -> list[object]:
        assert host == "both-loopbacks"
        return [*real("127.0.0.1", port, *args, **kwargs), *real("::1", port, *args, **kwargs)]  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "getaddrinfo", both)
    sockets += bind("both-loopbacks", 0)
    assert [sock.family for sock in sockets] == [socket.AF_INET, socket.AF_INET6]
    assert len({sock.getsockname()[1] for sock in sockets}) == 1  # port 0: one port
    for sock in sockets:
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    assert sockets[1].getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
    assert describe_address(sockets[1])[0] == "[::1]"


def test_reuse_port_shares_and_a_reservation_holds(sockets: list[socket.socket]) -> None:
    sockets += bind("127.0.0.1", 0, reuse_port=True, listen=False)
    (reservation,) = sockets
    port = reservation.getsockname()[1]
    assert not reservation.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    sockets += bind("127.0.0.1", port, reuse_port=True)
    sockets += bind("127.0.0.1", port, reuse_port=True)
    # A program that does not share cannot take the port.
    with pytest.raises(OSError, match="Address already in use") as info:
        bind("127.0.0.1", port)
    assert info.value.errno == errno.EADDRINUSE
    assert describe_address(sockets[1]) == ("127.0.0.1", str(port))


def test_inherited_takes_a_listening_socket(sockets: list[socket.socket]) -> None:
    (original,) = bind("127.0.0.1", 0)
    fd = original.detach()
    os.set_inheritable(fd, True)
    sock = inherited(fd, source="test")
    sockets.append(sock)
    assert sock.fileno() == fd
    assert not os.get_inheritable(fd)


@pytest.mark.parametrize(
    ("kind", "complaint"),
    [
        (socket.SOCK_DGRAM, "is not a stream (TCP) socket"),
        (socket.SOCK_STREAM, "is not listening (call listen() on it before passing it"),
    ],
)
def test_inherited_refuses_other_sockets(kind: int, complaint: str) -> None:
    with socket.socket(socket.AF_INET, kind) as sock:
        with pytest.raises(SetupError) as info:
            inherited(sock.fileno(), source="fd (--fd)")
        assert str(info.value).startswith(
            f"fd (--fd): file descriptor {sock.fileno()} {complaint}"
        )
        os.fstat(sock.fileno())  # left open: not ours to close


def test_inherited_refuses_what_is_not_a_socket() -> None:
    read, write = os.pipe()
    try:
        with pytest.raises(SetupError, match=f"file descriptor {read}: not a socket"):
            inherited(read, source="LISTEN_FDS")
        os.fstat(read)
    finally:
        os.close(read)
        os.close(write)
    with pytest.raises(SetupError, match=f"file descriptor {read}: Bad file descriptor"):
        inherited(read, source="LISTEN_FDS")


def test_key_password_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert key_password(env=None, file=None) is None
    monkeypatch.setenv("TEST_KEY_PASSWORD", "from the environment")
    assert key_password(env="TEST_KEY_PASSWORD", file=None) == "from the environment"
    path = tmp_path / "password"
    path.write_text("from a file\n")
    assert key_password(env=None, file=path) == "from a file"
    path.write_text("  spaces kept\r\n")
    assert key_password(env=None, file=path) == "  spaces kept"
    with pytest.raises(SetupError, match="the environment variable NOPE_NOT_SET is not set"):
        key_password(env="NOPE_NOT_SET", file=None)
    with pytest.raises(SetupError, match=r"key_password_file: .*missing: No such file"):
        key_password(env=None, file=tmp_path / "missing")


@pytest.mark.parametrize(
    ("mode", "warned"),
    [
        (0o600, False),
        (0o400, False),
        (0o640, False),  # shared with the server's group (Debian's ssl-cert): on purpose
        (0o440, False),
        (0o604, True),
        (0o644, True),
    ],
)
def test_key_permissions(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, mode: int, warned: bool
) -> None:
    key = tmp_path / "key.pem"
    key.write_text("secret")
    key.chmod(mode)
    warnings = check_key_permissions([key, key, tmp_path / "missing.pem"])
    if not warned:
        assert warnings == []
        assert caplog.records == []
    else:
        assert warnings == [
            f"{key}: the private key is readable by every user (mode "
            f"{stat.S_IMODE(mode):04o}); make it readable by its owner only "
            f"(chmod 600 {key}) or also by the server's group (chmod 640 {key})"
        ]
        assert [record.levelname for record in caplog.records] == ["WARNING"]


def test_identity() -> None:
    nobody = pwd.getpwnam("nobody")
    assert identity(None, None) is None
    who = identity("nobody", None)
    assert who is not None
    assert (who.uid, who.gid, who.user) == (nobody.pw_uid, nobody.pw_gid, "nobody")
    assert identity(str(nobody.pw_uid), "0") == type(who)(nobody.pw_uid, 0, "nobody")
    only_group = identity(None, "0")
    assert only_group is not None
    assert (only_group.uid, only_group.gid) == (os.getuid(), 0)
    with pytest.raises(SetupError, match="user: no such user 'no-such-user'"):
        identity("no-such-user", None)
    with pytest.raises(SetupError, match="group: no such group 'no-such-group'"):
        identity(None, "no-such-group")


def test_dropping_to_who_we_are_is_nothing() -> None:
    who = identity(str(os.getuid()), str(os.getgid()))
    assert who is not None
    drop_privileges(who)  # no error, no change
    assert os.geteuid() == who.uid
