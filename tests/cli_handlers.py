"""Handlers for ``trio-accept serve --handler cli_handlers:NAME`` in the command's tests
(the tests put this directory on the subprocess's ``PYTHONPATH``)."""

from __future__ import annotations

import os
import socket
import time

import trio

import trio_accept


async def pid(stream: trio_accept.TLSStream) -> None:
    """Say which process (which worker) served the connection, then close."""
    await stream.send_all(f"{os.getpid()}\n".encode())


async def nodelay(stream: trio_accept.TLSStream) -> None:
    """Say whether the connection's socket has TCP_NODELAY, then close."""
    transport = stream.transport_stream
    assert isinstance(transport, trio.SocketStream)
    value = transport.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    await stream.send_all(f"{value}\n".encode())


class Callable:
    """An object whose ``__call__`` is async: a handler too."""

    async def __call__(self, stream: trio_accept.TLSStream) -> None:
        await stream.send_all(b"called\n")


callable_handler = Callable()

NOT_CALLABLE = 42


def not_async(stream: trio_accept.TLSStream) -> None:
    """A plain function: refused, since the server would never await it."""


async def stubborn_echo(stream: trio_accept.TLSStream) -> None:
    """Echo, ignoring a shutdown: only the end of the grace period (or a second signal)
    stops it."""
    async for data in stream:
        await stream.send_all(data)


async def environment(stream: trio_accept.TLSStream) -> None:
    """Say what the process's environment holds of systemd's socket activation."""
    values = " ".join(f"{name}={os.environ.get(name)}" for name in ("LISTEN_FDS", "LISTEN_PID"))
    await stream.send_all(f"{values}\n".encode())


async def blocking(stream: trio_accept.TLSStream) -> None:
    """Block the whole process (a handler bug): it cannot even see signals any more."""
    time.sleep(600)  # noqa: ASYNC251 - the bug being demonstrated
