"""What a server process does with the operating system before it serves (the command's
production hygiene): listening sockets -- bound, shared with ``SO_REUSEPORT``, or
inherited --, the private key's password, the key file's permissions, and dropping root.

All of it is synchronous and runs before ``trio.run``: binding is done while the process
may still be root, and dropping privileges in a single-threaded process is the only way
that is sure to reach every thread.
"""

from __future__ import annotations

import errno
import grp
import logging
import os
import pwd
import socket
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol, final

logger = logging.getLogger("trio_accept")

#: The listen backlog when none is given: as large as the kernel allows (Linux caps it
#: at ``net.core.somaxconn``), like trio's ``open_tcp_listeners``. A burst of clients
#: waits in the kernel instead of being refused.
DEFAULT_BACKLOG: Final = 0xFFFF
#: The key-file permission bit warned about: every user of the machine can read the key.
#: Its group may (0640): a group is how an operator shares a key with the service's user
#: on purpose -- Debian's ``ssl-cert``, certbot's ``chgrp``, a unit's ``Group=``.
READABLE_BY_OTHERS: Final = stat.S_IROTH


class SetupError(Exception):
    """A setting cannot be applied (a user that does not exist, a file descriptor that is
    not a listening socket, ...); the message says which and why."""


def bind(
    host: str | None,
    port: int,
    *,
    backlog: int | None = None,
    reuse_port: bool = False,
    listen: bool = True,
) -> list[socket.socket]:
    """Bind TCP sockets on every address ``host`` resolves to (all interfaces for None).

    With port 0 the first socket picks a free port and the others take the same one, so
    that ``localhost`` is one port on IPv4 and IPv6. IPv6 sockets are IPv6-only (the
    IPv4 address has its own socket), and ``SO_REUSEADDR`` is set, as trio does.

    Args:
        host: Address or name to bind.
        port: TCP port, 0 for a free one.
        backlog: The listen backlog; :data:`DEFAULT_BACKLOG` when None.
        reuse_port: Set ``SO_REUSEPORT``: several processes (of the same user) bind the
            same port and the kernel spreads connections among them.
        listen: False to bind only -- which reserves the port (for processes that then
            bind it with ``reuse_port``) without accepting connections.

    Raises:
        OSError: The address cannot be resolved or bound.
    """
    infos = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP, flags=socket.AI_PASSIVE
    )
    # getaddrinfo may list an address more than once; the order is the resolver's.
    unique = list(dict.fromkeys((info[0], info[4][:2]) for info in infos))
    sockets: list[socket.socket] = []
    try:
        for family, (address, given_port) in unique:
            try:
                sock = socket.socket(family, socket.SOCK_STREAM)
            except OSError as exc:
                if exc.errno == errno.EAFNOSUPPORT:  # an IPv6 address on an IPv4-only host
                    continue
                raise
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            # Port 0: the first socket picks, the others follow.
            same_port = given_port == 0 and len(sockets) > 1
            sock.bind((address, sockets[0].getsockname()[1] if same_port else given_port))
            if listen:
                sock.listen(DEFAULT_BACKLOG if backlog is None else backlog)
        if not sockets:
            raise OSError(errno.EAFNOSUPPORT, f"no usable address for {host!r}")
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def inherited(fd: int, *, source: str) -> socket.socket:
    """The listening stream socket at file descriptor ``fd`` (``--fd``, ``LISTEN_FDS``).

    Args:
        fd: The file descriptor, which the returned socket now owns.
        source: Where the descriptor came from, for the error message.

    Raises:
        SetupError: ``fd`` is not open, not a socket, not a stream socket, or not
            listening.
    """
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        reason = "not a socket" if exc.errno == errno.ENOTSOCK else exc.strerror
        raise SetupError(f"{source}: file descriptor {fd}: {reason}") from None
    try:
        if sock.type != socket.SOCK_STREAM:
            raise SetupError(f"{source}: file descriptor {fd} is not a stream (TCP) socket")
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            raise SetupError(
                f"{source}: file descriptor {fd} is not listening (call listen() on it "
                "before passing it, as systemd does)"
            )
    except BaseException:
        sock.detach()  # not ours to close: leave the descriptor as it was
        raise
    os.set_inheritable(fd, False)
    return sock


class _BoundSocket(Protocol):
    """A stdlib or a trio socket: what :func:`describe_address` needs of it."""

    @property
    def family(self) -> int: ...
    def getsockname(self) -> Any: ...


def describe_address(sock: _BoundSocket) -> tuple[str, str]:
    """``(host, port)`` of a listening socket, for banners (``[v6]`` in brackets)."""
    name = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return f"unix:{name}", ""
    host = f"[{name[0]}]" if sock.family == socket.AF_INET6 else name[0]
    return host, str(name[1])


# -- the private key -----------------------------------------------------------------


def key_password(*, env: str | None, file: Path | None) -> str | None:
    """The private key's password, from an environment variable or a file -- never from
    the command line, where every user of the machine can read it (``ps``).

    A file's trailing newline is not part of the password.

    Raises:
        SetupError: The variable is not set, or the file cannot be read.
    """
    if env is not None:
        try:
            return os.environ[env]
        except KeyError:
            raise SetupError(
                f"key_password_env: the environment variable {env} is not set"
            ) from None
    if file is not None:
        try:
            text = file.read_text()
        except OSError as exc:
            raise SetupError(f"key_password_file: {file}: {exc.strerror}") from None
        return text.removesuffix("\n").removesuffix("\r")
    return None


def check_key_permissions(paths: Iterable[Path]) -> list[str]:
    """Warn (log) about private key files that every user of the machine can read.

    A key its group can read (0640) is not warned about: see :data:`READABLE_BY_OTHERS`.

    Returns:
        The warnings, as logged.
    """
    warnings: list[str] = []
    for path in dict.fromkeys(paths):
        try:
            mode = path.stat().st_mode
        except OSError:
            continue  # loading it will say what is wrong
        if mode & READABLE_BY_OTHERS:
            message = (
                f"{path}: the private key is readable by every user (mode "
                f"{stat.S_IMODE(mode):04o}); make it readable by its owner only "
                f"(chmod 600 {path}) or also by the server's group (chmod 640 {path})"
            )
            logger.warning("%s", message)
            warnings.append(message)
    return warnings


# -- privileges ----------------------------------------------------------------------


@final
@dataclass(frozen=True, slots=True)
class Identity:
    """Who to become: a user id and a group id, and the user's name for its groups."""

    uid: int
    gid: int
    user: str | None

    def is_current(self) -> bool:
        """Whether this process is that user and group already (real and effective)."""
        return (os.getuid(), os.geteuid(), os.getgid(), os.getegid()) == (
            self.uid,
            self.uid,
            self.gid,
            self.gid,
        )


def identity(user: str | None, group: str | None) -> Identity | None:
    """Resolve ``--user``/``--group`` (names or numbers); None when neither is given.

    Only ``--user``: the user's primary group. Only ``--group``: keep the user.

    Raises:
        SetupError: No such user or group.
    """
    if user is None and group is None:
        return None
    uid, gid, name = os.getuid(), os.getgid(), None
    if user is not None:
        try:
            entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
        except KeyError:
            raise SetupError(f"user: no such user {user!r}") from None
        uid, gid, name = entry.pw_uid, entry.pw_gid, entry.pw_name
    if group is not None:
        try:
            entry_gid = grp.getgrgid(int(group)) if group.isdigit() else grp.getgrnam(group)
            gid = entry_gid.gr_gid
        except KeyError:
            raise SetupError(f"group: no such group {group!r}") from None
    return Identity(uid, gid, name)


def drop_privileges(who: Identity) -> None:
    """Become ``who`` for good: supplementary groups, then group, then user (the order in
    which each step is still allowed).

    Raises:
        SetupError: Not root (and not ``who`` already), or the switch failed.
    """
    if who.is_current():
        return
    if os.geteuid() != 0:
        raise SetupError(
            f"user/group: switching to uid {who.uid}, gid {who.gid} needs root "
            f"(running as uid {os.geteuid()})"
        )
    try:
        if who.user is not None:
            os.initgroups(who.user, who.gid)
        else:
            os.setgroups([who.gid])
        os.setgid(who.gid)
        os.setuid(who.uid)  # as root: real, effective and saved ids alike
    except OSError as exc:
        raise SetupError(f"user/group: cannot switch to uid {who.uid}: {exc}") from None
    if who.uid != 0:
        try:
            os.setuid(0)
        except PermissionError:
            pass
        else:  # pragma: no cover - a kernel that lets us back is no place to serve from
            raise SetupError("user/group: the switch is reversible; refusing to go on")
    logger.info("running as uid %d, gid %d", who.uid, who.gid)
