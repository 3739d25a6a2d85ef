"""systemd integration without libsystemd: readiness notifications and socket activation.

Both protocols are small and stable, and documented as interfaces that services may
implement themselves (``sd_notify(3)``, ``sd_listen_fds(3)``):

- **Notifications.** When systemd starts a ``Type=notify`` service it sets
  ``NOTIFY_SOCKET`` to the path of a UNIX datagram socket (``@`` first for an abstract
  one). The service sends newline-separated ``KEY=VALUE`` fields to it: ``READY=1`` once
  it serves, ``RELOADING=1`` (with ``MONOTONIC_USEC``) then ``READY=1`` around a reload,
  ``STOPPING=1`` when it begins to shut down, ``STATUS=...`` for ``systemctl status``.
  Without the variable, :func:`notify` does nothing: the same command runs anywhere.
- **Socket activation.** systemd binds the sockets of a ``.socket`` unit, starts the
  service with them as file descriptors 3, 4, ... and sets ``LISTEN_FDS`` (how many)
  and ``LISTEN_PID`` (whose they are: a variable inherited by a child is not meant
  for it). :func:`listen_fds` takes them, once, and removes the variables.

The command's worker supervisor uses the notification protocol too: its workers send
their ``READY=1`` to a socket of the supervisor's, which tells systemd once all are.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Final

logger = logging.getLogger("trio_accept")

#: The first file descriptor systemd passes (after stdin, stdout and stderr).
LISTEN_FDS_START: Final = 3
#: The environment variables of socket activation, removed once read (sd_listen_fds(3)
#: does the same with ``unset_environment``), so that no child process takes them.
LISTEN_VARIABLES: Final = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


class SystemdError(ValueError):
    """The environment systemd set up is unusable; the message says which part."""


def notify_address(value: str | None = None) -> str | None:
    """The socket address :func:`notify` sends to, from ``NOTIFY_SOCKET``, or None.

    ``@name`` is the abstract socket ``\\0name``; other values must be absolute paths
    (systemd's ``vsock:`` addresses, for virtual machines, are not supported).
    """
    if value is None:
        value = os.environ.get("NOTIFY_SOCKET")
    if not value:
        return None
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None


def notify(*fields: str) -> bool:
    """Send notification fields (``"READY=1"``, ``"STATUS=..."``) to the service manager.

    Returns:
        Whether they were sent: False without ``NOTIFY_SOCKET``, or when sending failed
        (logged as a warning; a service manager that stopped listening must not stop
        the server).
    """
    address = notify_address()
    if address is None:
        if os.environ.get("NOTIFY_SOCKET"):
            logger.warning(
                "NOTIFY_SOCKET=%s: unsupported address, not notifying",
                os.environ["NOTIFY_SOCKET"],
            )
        return False
    message = "\n".join(fields).encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        # Never block the event loop: the manager reads at once, or something is wrong.
        sock.setblocking(False)
        try:
            sock.sendto(message, address)
        except OSError as exc:
            logger.warning("cannot notify the service manager (%s): %s", fields[0], exc)
            return False
    return True


def reloading_fields() -> tuple[str, str]:
    """``RELOADING=1`` with the ``MONOTONIC_USEC`` timestamp systemd expects with it."""
    return "RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"


def listen_fds() -> list[int]:
    """The listening sockets systemd passed (socket activation), taken once.

    Reads ``LISTEN_FDS`` and ``LISTEN_PID`` and removes them (and ``LISTEN_FDNAMES``)
    from the environment, so that a second call, or a child process, finds nothing.
    The descriptors are made close-on-exec.

    Returns:
        The file descriptors (3, 4, ...), empty when the variables are absent or meant
        for another process.

    Raises:
        SystemdError: The variables are set but malformed.
    """
    pid, count = os.environ.get("LISTEN_PID"), os.environ.get("LISTEN_FDS")
    for name in LISTEN_VARIABLES:
        os.environ.pop(name, None)
    if pid is None or count is None:
        return []
    try:
        pid_number, how_many = int(pid), int(count)
    except ValueError:
        raise SystemdError(
            f"LISTEN_PID={pid!r} LISTEN_FDS={count!r}: expected two numbers"
        ) from None
    if pid_number != os.getpid():
        return []
    if how_many < 0:
        raise SystemdError(f"LISTEN_FDS={count!r}: expected a number of sockets, >= 0")
    fds = list(range(LISTEN_FDS_START, LISTEN_FDS_START + how_many))
    for fd in fds:
        try:
            os.set_inheritable(fd, False)
        except OSError as exc:
            raise SystemdError(
                f"LISTEN_FDS={count}: file descriptor {fd} is not open ({exc.strerror})"
            ) from None
    return fds
