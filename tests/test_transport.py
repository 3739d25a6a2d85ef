"""How the driver moves bytes (``_transport.py``): on real sockets, or through a stream."""

from __future__ import annotations

import socket
import struct

import pytest
import trio
import trio.testing
from helpers import tcp_stream_pair

from trio_accept._transport import (
    SOCKETS_ARE_FDS,
    SocketTransport,
    StreamTransport,
    transport_for,
)

#: The tests of the socket path (POSIX: elsewhere every stream goes through its methods).
SOCKET_PATH = pytest.mark.skipif(not SOCKETS_ARE_FDS, reason="sockets are not fds here")
#: More than a socket pair's buffers hold, so that sending it must wait for the reader.
LARGE: int = 8 * 1024 * 1024


async def receive_exactly(stream: trio.abc.ReceiveStream, size: int) -> bytes:
    received = bytearray()
    while len(received) < size:
        data = await stream.receive_some()
        assert data, "EOF before everything arrived"
        received += data
    return bytes(received)


def test_transport_for_picks_the_socket_path_for_tcp_only() -> None:
    left, _right = trio.testing.memory_stream_pair()
    assert isinstance(transport_for(left), StreamTransport)


@SOCKET_PATH
async def test_receive_what_is_there_then_wait_then_eof() -> None:
    server, client = await tcp_stream_pair()
    async with server, client:
        transport = transport_for(server)
        assert isinstance(transport, SocketTransport)
        assert transport.try_receive(100) is None  # nothing yet, and no waiting
        await client.send_all(b"hello")  # on loopback, in the server's buffer on return
        assert await transport.receive(100) == (b"hello", False)

        async def send_later() -> None:
            await trio.testing.wait_all_tasks_blocked()
            await client.send_all(b"later")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_later)
            with trio.fail_after(5):
                assert await transport.receive(100) == (b"later", True)
        await client.send_eof()
        with trio.fail_after(5):
            assert (await transport.receive(100))[0] == b""


@SOCKET_PATH
async def test_send_all_waits_for_a_slow_reader_and_delivers_everything() -> None:
    server, client = await tcp_stream_pair()
    payload = bytes(range(256)) * (LARGE // 256)
    async with server, client:
        transport = transport_for(server)
        assert await transport.send_all(b"small") is False  # the buffer took it at once
        assert await receive_exactly(client, 5) == b"small"
        received: list[bytes] = []

        async def read_everything() -> None:
            received.append(await receive_exactly(client, len(payload)))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_everything)
            with trio.fail_after(30):
                assert await transport.send_all(payload) is True
    assert received == [payload]


@SOCKET_PATH
async def test_reset_is_a_broken_resource_error() -> None:
    server, client = await tcp_stream_pair()
    async with server:
        # SO_LINGER with a zero timeout: close() sends a reset instead of a FIN.
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await client.aclose()
        transport = transport_for(server)
        with trio.fail_after(5), pytest.raises(trio.BrokenResourceError) as excinfo:
            await transport.receive(100)
        assert isinstance(excinfo.value.__cause__, ConnectionResetError)
        with pytest.raises(trio.BrokenResourceError):
            await transport.send_all(b"x" * 100_000)


@SOCKET_PATH
async def test_closed_under_us_is_a_closed_resource_error() -> None:
    server, client = await tcp_stream_pair()
    async with client:
        transport = transport_for(server)

        async def close_when_waiting() -> None:
            await trio.testing.wait_all_tasks_blocked()
            await server.aclose()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(close_when_waiting)
            with pytest.raises(trio.ClosedResourceError):
                await transport.receive(100)  # woken by trio's notify_closing
        # The socket's number is asked for on every call: -1 now, never a reused one.
        with pytest.raises(trio.ClosedResourceError):
            transport.try_receive(100)
        with pytest.raises(trio.ClosedResourceError):
            transport.try_send(b"x")


async def test_stream_transport_always_goes_through_the_stream() -> None:
    left, right = trio.testing.memory_stream_pair()
    transport = transport_for(left)
    assert transport.try_receive(10) is None
    assert transport.try_send(b"x") == 0
    assert await transport.send_all(b"abc") is True
    assert await right.receive_some() == b"abc"
    await right.send_all(b"def")
    assert await transport.receive(10) == (b"def", True)
