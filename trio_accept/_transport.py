"""How the driver moves bytes: straight on the socket for TCP, through the stream otherwise.

The handshake loop and :class:`~trio_accept.TLSStream` need three things of a transport:
take what has arrived, send some bytes in full, and wait while neither is possible.
:class:`trio.SocketStream` offers them wrapped for public use: every call goes through a
conflict detector, a context manager that translates socket errors, and trio's
cancellation sandwich -- a trip through the scheduler even when the bytes were there or
the send buffer had room. The driver already provides each of those itself (its own
:exc:`trio.BusyResourceError` detectors, one error mapping, and the checkpoint rule of its
public methods), so for a socket stream it reads and writes the socket's file descriptor
directly -- non-blocking, as trio keeps it -- and waits with
:func:`trio.lowlevel.wait_readable` / :func:`~trio.lowlevel.wait_writable`. That saves two
scheduler trips per handshake and the wrapping on every record of bulk data (measured in
``docs/performance.rst``). Any other stream (memory streams in tests, a user's transport)
goes through its own methods, and so does every stream on Windows, where a socket is not
a file descriptor.

Contract of both implementations:

- :meth:`try_receive` and :meth:`try_send` never wait: the bytes already there (``b""``
  at EOF) or ``None`` when nothing has arrived; the number of bytes the send buffer took.
- :meth:`receive` and :meth:`send_all` return whether they waited. A wait is a full trio
  checkpoint (``wait_readable`` / ``wait_writable`` / the stream's own call); a call that
  did not wait did not check for cancellation either, so the caller knows when it still
  owes its caller a checkpoint.
- Failures are trio's: :exc:`trio.BrokenResourceError` (chained to the ``OSError``) for a
  broken connection, :exc:`trio.ClosedResourceError` for a transport closed under us.

Only the fd's *current* number is ever used (``socket.fileno()`` on every call, ``-1``
once closed): a number cached across a close could by then belong to another connection.
"""

from __future__ import annotations

import errno
import os
from typing import Final, final

import trio

# errno values that mean "this socket was closed" rather than "the connection broke"
# (the same set trio's SocketStream uses).
_CLOSED_ERRNOS: Final = frozenset({errno.EBADF, errno.ENOTSOCK})


def _stream_error(exc: OSError) -> trio.BrokenResourceError | trio.ClosedResourceError:
    if exc.errno in _CLOSED_ERRNOS:
        return trio.ClosedResourceError("this socket was already closed")
    return trio.BrokenResourceError(f"socket connection broken: {exc}")


@final
class SocketTransport:
    """Non-blocking reads and writes on the socket of a :class:`trio.SocketStream`."""

    __slots__ = ("_socket",)

    def __init__(self, stream: trio.SocketStream) -> None:
        self._socket = stream.socket

    def try_receive(self, max_bytes: int) -> bytes | None:
        try:
            return os.read(self._socket.fileno(), max_bytes)
        except BlockingIOError:
            return None
        except OSError as exc:
            raise _stream_error(exc) from exc

    async def receive(self, max_bytes: int) -> tuple[bytes | bytearray, bool]:
        """The next bytes (``b""`` at EOF), and whether it had to wait for them."""
        data = self.try_receive(max_bytes)
        if data is not None:
            return data, False
        while True:
            await trio.lowlevel.wait_readable(self._socket)
            data = self.try_receive(max_bytes)
            if data is not None:
                return data, True

    def try_send(self, data: bytes | memoryview) -> int:
        """Send what the socket's buffer takes now; the number of bytes sent."""
        try:
            return os.write(self._socket.fileno(), data)
        except BlockingIOError:
            return 0
        except OSError as exc:
            raise _stream_error(exc) from exc

    async def send_all(self, data: bytes) -> bool:
        """Send all of ``data``; return whether the send buffer made it wait."""
        sent = self.try_send(data)
        if sent == len(data):
            return False
        with memoryview(data) as view:
            while sent < len(view):
                await trio.lowlevel.wait_writable(self._socket)
                with view[sent:] as rest:
                    sent += self.try_send(rest)
        return True


@final
class StreamTransport:
    """Any :class:`trio.abc.Stream`, through its own methods (each one a checkpoint)."""

    __slots__ = ("_stream",)

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream

    def try_receive(self, max_bytes: int) -> bytes | None:
        return None  # a stream can only be asked with a call that may wait

    def try_send(self, data: bytes) -> int:
        return 0  # likewise

    async def receive(self, max_bytes: int) -> tuple[bytes | bytearray, bool]:
        return await self._stream.receive_some(max_bytes), True

    async def send_all(self, data: bytes) -> bool:
        await self._stream.send_all(data)
        return True


Transport = SocketTransport | StreamTransport


#: Whether a socket is a file descriptor that ``os.read``/``os.write`` accept: on POSIX
#: systems; on Windows a socket is a handle, and streams go through their own methods.
SOCKETS_ARE_FDS: Final = os.name == "posix"


def transport_for(stream: trio.abc.Stream) -> Transport:
    """The fastest way to move bytes on ``stream``."""
    if SOCKETS_ARE_FDS and isinstance(stream, trio.SocketStream):
        return SocketTransport(stream)
    return StreamTransport(stream)
