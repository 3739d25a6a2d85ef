"""The TLS-terminating proxy: address parsing, the pumps' logic over lockstep and memory
streams, then real sockets -- a real upstream (a trio TCP server, Python's http.server),
real clients (trio's SSLStream, a hand-driven SSLObject for half-close, curl)."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import shutil
import socket
import ssl
import struct
import subprocess
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import pytest
import trio
import trio.testing
from helpers import receive_until_eof, tls_pair
from trio.testing import lockstep_stream_pair, memory_stream_pair, wait_all_tasks_blocked

import trio_accept
from trio_accept import TLSStream, open_server, parse_host_port, relay_handler
from trio_accept._relay import CHUNK_SIZE, _Pipe

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from pathlib import Path

    import trustme

# Safety net against a hung peer (real clock); every exchange takes milliseconds.
GUARD: Final = 20
#: Bulk transfers: several MiB, far more than the socket buffers we set.
TOTAL: Final = 16 * 1024 * 1024
#: Socket buffer size for the test's own sockets (the kernel doubles it).
SMALL_BUFFER: Final = 65536


# -- parse_host_port -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("localhost:8080", ("localhost", 8080)),
        ("127.0.0.1:1", ("127.0.0.1", 1)),
        ("[::1]:65535", ("::1", 65535)),
        ("[fe80::1%eth0]:443", ("fe80::1%eth0", 443)),
        ("backend-1.internal.example:80", ("backend-1.internal.example", 80)),
        ("_service.example.:80", ("_service.example.", 80)),
    ],
)
def test_parse_host_port(text: str, expected: tuple[str, int]) -> None:
    assert parse_host_port(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [("example.org", ("example.org", 443)), ("[::1]", ("::1", 443)), ("a:80", ("a", 80))],
)
def test_parse_host_port_default(text: str, expected: tuple[str, int]) -> None:
    assert parse_host_port(text, default_port=443) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty address"),
        ("localhost", "missing port"),
        ("[::1]", "missing port"),
        ("localhost:", "the port '' is not a number"),
        ("localhost:http", "the port 'http' is not a number"),
        ("localhost:+80", "the port '+80' is not a number"),
        ("localhost:0", "the port must be 1-65535, got 0"),
        ("localhost:65536", "the port must be 1-65535, got 65536"),
        ("::1:8080", "IPv6 address in brackets"),
        ("[::1:8080", "missing ']'"),
        ("[::1]8080", "expected ':PORT' after the ']'"),
        ("[localhost]:80", "'localhost' is not an IPv6 address"),
        (":80", "'' is not a host name"),
        ("local host:80", "'local host' is not a host name"),
        ("user@host:80", "'user@host' is not a host name"),
        ("-bad:80", "'-bad' is not a host name"),
        ("http://host:80", "IPv6 address in brackets"),
    ],
)
def test_parse_host_port_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match="^.*" + message.replace("[", r"\[").replace("+", r"\+")):
        parse_host_port(text)


def test_parse_host_port_bad_default() -> None:
    with pytest.raises(ValueError, match="default_port must be 1-65535"):
        parse_host_port("a", default_port=0)


@pytest.mark.parametrize(
    ("port", "timeout", "message"),
    [(0, 1.0, "port must be"), (70000, 1.0, "port must be"), (80, 0.0, "connect_timeout")],
)
def test_relay_handler_arguments(port: int, timeout: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        relay_handler("localhost", port, connect_timeout=timeout)


# -- the pumps, deterministic ----------------------------------------------------------


async def test_backpressure_one_chunk_in_hand() -> None:
    """Over lockstep streams (no buffering anywhere), a client that does not read stops
    the upstream after the one chunk the relay holds: nothing piles up in between."""
    client_end, relay_client_side = lockstep_stream_pair()
    relay_upstream_side, upstream_end = lockstep_stream_pair()
    pipe = _Pipe(relay_client_side, relay_upstream_side, "client", "upstream")
    data = os.urandom(8 * CHUNK_SIZE)
    sent = 0

    async def upstream() -> None:
        nonlocal sent
        for start in range(0, len(data), CHUNK_SIZE):
            await upstream_end.send_all(data[start : start + CHUNK_SIZE])
            sent += CHUNK_SIZE
        await upstream_end.aclose()

    with trio.fail_after(GUARD):  # a hang shows up as TooSlowError
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pipe.run)
            nursery.start_soon(upstream)
            await wait_all_tasks_blocked()
            assert sent == CHUNK_SIZE  # taken by the relay, which waits for the client
            received = bytearray()
            while chunk := await client_end.receive_some(1000):  # a slow reader
                received += chunk
                assert sent - len(received) <= 2 * CHUNK_SIZE
    assert received == data  # and the upstream's EOF closed the client's side


async def test_client_eof_half_closes_the_upstream() -> None:
    client_end, relay_client_side = memory_stream_pair()
    relay_upstream_side, upstream_end = memory_stream_pair()
    pipe = _Pipe(relay_client_side, relay_upstream_side, "client", "upstream")
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pipe.run)
            await client_end.send_all(b"request")
            await client_end.send_eof()
            assert await upstream_end.receive_some() == b"request"
            assert await upstream_end.receive_some() == b""  # the client's EOF, passed on
            # The other direction still flows...
            await upstream_end.send_all(b"answer")
            assert await client_end.receive_some() == b"answer"
            await upstream_end.send_all(b" and more")
            assert await client_end.receive_some() == b" and more"
            # ...until the upstream's EOF, which ends the connection.
            await upstream_end.send_eof()
            assert await client_end.receive_some() == b""


@pytest.mark.parametrize("side", ["client", "upstream"])
async def test_a_broken_side_closes_both(side: str, caplog: pytest.LogCaptureFixture) -> None:
    client_end, relay_client_side = memory_stream_pair()
    relay_upstream_side, upstream_end = memory_stream_pair()
    pipe = _Pipe(relay_client_side, relay_upstream_side, "client-name", "upstream-name")
    broken = relay_client_side if side == "client" else relay_upstream_side

    async def reset() -> None:
        raise trio.BrokenResourceError("connection reset")

    caplog.set_level(logging.INFO, logger="trio_accept")
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pipe.run)
            await wait_all_tasks_blocked()
            broken.receive_stream.receive_some_hook = reset
            # The receive in progress gets this; the next one fails.
            await (client_end if side == "client" else upstream_end).send_all(b"x")
    # The client's side was closed (its end sees EOF); the upstream is the caller's.
    assert await receive_until_eof(client_end) == (b"" if side == "client" else b"x")
    [record] = caplog.records
    assert record.getMessage() == (f"relay client-name -> upstream-name: {side}: connection reset")
    assert record.exc_info is None


# -- real sockets ----------------------------------------------------------------------


async def start_upstream(
    nursery: trio.Nursery, handler: Callable[[trio.SocketStream], Awaitable[object]]
) -> int:
    """A plain TCP server on 127.0.0.1; returns its port."""
    listeners: list[trio.SocketListener] = await nursery.start(
        functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1")
    )
    port: int = listeners[0].socket.getsockname()[1]
    return port


async def echo_upstream(stream: trio.SocketStream) -> None:
    async with stream:
        try:
            while data := await stream.receive_some(CHUNK_SIZE):
                await stream.send_all(data)
            await stream.send_eof()
        except trio.BrokenResourceError:
            pass


async def open_relay_listeners() -> list[trio.SocketListener]:
    """Listeners whose accepted sockets have small buffers (inherited from the
    listening socket), so that TCP flow control engages early."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    for listener in listeners:
        listener.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)
        listener.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)
    return listeners


async def connect_tls(
    port: int, client_context: ssl.SSLContext, *, small_buffers: bool = False
) -> trio.SSLStream[trio.SocketStream]:
    sock = trio.socket.socket()
    if small_buffers:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)
    await sock.connect(("127.0.0.1", port))
    tls = trio.SSLStream(trio.SocketStream(sock), client_context, server_hostname="localhost")
    await tls.do_handshake()
    return tls


async def receive_exactly(stream: trio.abc.ReceiveStream, size: int) -> bytes:
    received = bytearray()
    while len(received) < size:
        data = await stream.receive_some()
        assert data, f"EOF after {len(received)} of {size} bytes"
        received += data
    return bytes(received)


async def test_large_transfer_both_ways_through_an_echo_upstream(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    data = os.urandom(TOTAL // 2)
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            upstream_port = await start_upstream(nursery, echo_upstream)
            async with open_server(
                relay_handler("127.0.0.1", upstream_port),
                listeners=await open_relay_listeners(),
                ssl_context=server_context,
            ) as server:
                tls = await connect_tls(server.addresses[0][1], client_context)
                async with trio.open_nursery() as both:
                    both.start_soon(tls.send_all, data)
                    echoed = await receive_exactly(tls, len(data))
                await tls.aclose()
            nursery.cancel_scope.cancel()
    assert hashlib.sha256(echoed).digest() == hashlib.sha256(data).digest()
    assert server.stats.handler_errors == 0
    assert server.stats.closed == 1


@dataclass
class Progress:
    sent: int = 0
    received: int = 0


async def test_backpressure_upstream_to_slow_client(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    """An upstream sending far more than a client reads: once every task waits, the
    upstream is stuck well short of the end (flow control reached it through the relay);
    then a slow reader gets every byte, in order."""
    progress = Progress()
    block = os.urandom(CHUNK_SIZE)

    async def upstream(stream: trio.SocketStream) -> None:
        stream.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)
        async with stream:
            while progress.sent < TOTAL:
                await stream.send_all(block)
                progress.sent += len(block)

    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            upstream_port = await start_upstream(nursery, upstream)
            async with open_server(
                relay_handler("127.0.0.1", upstream_port),
                listeners=await open_relay_listeners(),
                ssl_context=server_context,
            ) as server:
                tls = await connect_tls(server.addresses[0][1], client_context, small_buffers=True)
                await wait_all_tasks_blocked()
                stuck = progress.sent
                digest = hashlib.sha256()
                while data := await tls.receive_some(16384):
                    digest.update(data)
                    progress.received += len(data)
                await tls.aclose()
            nursery.cancel_scope.cancel()
    print(f"upstream stuck after {stuck} of {TOTAL} bytes")
    assert 0 < stuck < TOTAL // 2
    assert progress.received == TOTAL
    assert digest.digest() == hashlib.sha256(block * (TOTAL // CHUNK_SIZE)).digest()


async def test_backpressure_client_to_slow_upstream(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    """The other way: a client sending far more than the upstream reads is stuck well
    short of the end; then the upstream reads every byte, in order."""
    progress = Progress()
    block = os.urandom(CHUNK_SIZE)
    start_reading, done = trio.Event(), trio.Event()
    digest = hashlib.sha256()

    async def upstream(stream: trio.SocketStream) -> None:
        stream.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)
        async with stream:
            await start_reading.wait()
            while data := await stream.receive_some(16384):
                digest.update(data)
                progress.received += len(data)
        done.set()

    async def client(tls: trio.SSLStream[trio.SocketStream]) -> None:
        while progress.sent < TOTAL:
            await tls.send_all(block)
            progress.sent += len(block)
        await tls.aclose()

    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            upstream_port = await start_upstream(nursery, upstream)
            async with open_server(
                relay_handler("127.0.0.1", upstream_port),
                listeners=await open_relay_listeners(),
                ssl_context=server_context,
            ) as server:
                tls = await connect_tls(server.addresses[0][1], client_context, small_buffers=True)
                async with trio.open_nursery() as sending:
                    sending.start_soon(client, tls)
                    await wait_all_tasks_blocked()
                    stuck = progress.sent
                    start_reading.set()
                await done.wait()  # the client's close_notify reached the upstream as EOF
            nursery.cancel_scope.cancel()
    print(f"client stuck after {stuck} of {TOTAL} bytes")
    assert 0 < stuck < TOTAL // 2
    assert progress.received == TOTAL
    assert digest.digest() == hashlib.sha256(block * (TOTAL // CHUNK_SIZE)).digest()


@pytest.fixture
def relay_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="trio_accept")
    return caplog


def relay_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage().startswith("relay ")]


class HalfClosingClient:
    """A TLS client driven by hand (SSLObject over memory BIOs on a TCP stream), for
    what trio's SSLStream cannot do: send close_notify, then keep reading."""

    def __init__(self, transport: trio.SocketStream, context: ssl.SSLContext) -> None:
        self.transport = transport
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname="localhost")

    async def _flush(self) -> None:
        if data := self.outgoing.read():
            await self.transport.send_all(data)

    async def _fill(self) -> None:
        data = await self.transport.receive_some()
        if data:
            self.incoming.write(data)
        else:
            self.incoming.write_eof()

    async def handshake(self) -> None:
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                await self._flush()
                await self._fill()
        await self._flush()

    async def send(self, data: bytes) -> None:
        self.tls.write(data)
        await self._flush()

    async def send_close_notify(self) -> None:
        with contextlib.suppress(ssl.SSLWantReadError):  # sent ours; the peer's comes later
            self.tls.unwrap()
        await self._flush()

    async def receive_until_close_notify(self) -> bytes:
        """Everything until the peer's close_notify; a bare TCP EOF raises SSLEOFError."""
        received = bytearray()
        while True:
            try:
                data = self.tls.read(65536)
            except ssl.SSLWantReadError:
                await self._fill()
                continue
            except ssl.SSLZeroReturnError:
                return bytes(received)
            if not data:
                return bytes(received)
            received += data


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
async def test_half_close_client_close_notify_then_the_answer(
    version: ssl.TLSVersion, server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    """The client sends its request and close_notify; the upstream reads to EOF, then
    answers; the client gets the whole answer, then close_notify."""
    client_context.maximum_version = version
    answer = os.urandom(3 * CHUNK_SIZE + 17)
    requests: list[bytes] = []

    async def upstream(stream: trio.SocketStream) -> None:
        async with stream:
            requests.append(await receive_until_eof(stream))  # until the relayed FIN
            await stream.send_all(answer)

    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            upstream_port = await start_upstream(nursery, upstream)
            async with open_server(
                relay_handler("127.0.0.1", upstream_port),
                host="127.0.0.1",
                ssl_context=server_context,
            ) as server:
                transport = await trio.open_tcp_stream("127.0.0.1", server.addresses[0][1])
                async with transport:
                    client = HalfClosingClient(transport, client_context)
                    await client.handshake()
                    await client.send(b"the whole request")
                    await client.send_close_notify()
                    received = await client.receive_until_close_notify()
            nursery.cancel_scope.cancel()
    assert requests == [b"the whole request"]
    assert received == answer
    assert server.stats.handler_errors == 0


@pytest.mark.parametrize("connections", [1, 3])
async def test_upstream_refused(
    connections: int,
    server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
    relay_logs: pytest.LogCaptureFixture,
) -> None:
    """Nothing listens upstream: each client gets close_notify at once, and each
    connection is one log line; nothing counts as a handler error or a failed handshake."""
    with socket.socket() as bound_not_listening:
        bound_not_listening.bind(("127.0.0.1", 0))
        dead_port = bound_not_listening.getsockname()[1]
        with trio.fail_after(GUARD):
            async with open_server(
                relay_handler("127.0.0.1", dead_port),
                host="127.0.0.1",
                ssl_context=server_context,
            ) as server:
                local_ports: list[int] = []
                for _ in range(connections):
                    tls = await connect_tls(server.addresses[0][1], client_context)
                    local_ports.append(tls.transport_stream.socket.getsockname()[1])
                    assert await tls.receive_some() == b""  # close_notify, not a reset
                    await tls.aclose()
    records = relay_records(relay_logs)
    assert len(records) == connections
    for record, local_port in zip(records, local_ports, strict=True):
        assert record.levelno == logging.WARNING
        assert record.getMessage().startswith(
            f"relay 127.0.0.1:{local_port} -> 127.0.0.1:{dead_port}: cannot connect"
        )
        assert "Connection refused" in record.getMessage()
        assert record.exc_info is None
    stats = server.stats
    assert (stats.completed, stats.closed, stats.handler_errors) == (connections,) * 2 + (0,)
    assert stats.failed == {}


async def test_upstream_that_never_answers_times_out(
    autojump_clock: trio.testing.MockClock,
    server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
    relay_logs: pytest.LogCaptureFixture,
) -> None:
    """A listener whose accept queue is full drops our SYN: connect_timeout decides
    (on the mock clock; the TLS side runs over memory streams)."""
    with socket.socket() as full, socket.socket() as filler:
        full.bind(("127.0.0.1", 0))
        full.listen(0)  # Linux queues backlog + 1 connections: the filler takes it
        filler.connect(full.getsockname())
        port = full.getsockname()[1]
        server_transport, client_transport = memory_stream_pair()
        server, client = await tls_pair(
            server_transport, client_transport, server_context, client_context
        )
        start = trio.current_time()
        with trio.fail_after(3600):  # on the mock clock: a hang shows up as TooSlowError
            async with trio.open_nursery() as nursery:
                nursery.start_soon(relay_handler("127.0.0.1", port, connect_timeout=7), server)
                assert await client.receive_some() == b""
        assert trio.current_time() - start == pytest.approx(7)
    [record] = relay_records(relay_logs)
    assert record.getMessage() == (
        f"relay unknown -> 127.0.0.1:{port}: cannot connect to the upstream: no answer within 7 s"
    )


async def test_upstream_reset_mid_stream(
    server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
    relay_logs: pytest.LogCaptureFixture,
) -> None:
    part = os.urandom(100_000)
    delivered = trio.Event()

    async def upstream(stream: trio.SocketStream) -> None:
        await stream.send_all(part)
        await delivered.wait()
        stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await stream.aclose()  # with SO_LINGER 0: a reset, not a FIN

    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            upstream_port = await start_upstream(nursery, upstream)
            async with open_server(
                relay_handler("127.0.0.1", upstream_port),
                host="127.0.0.1",
                ssl_context=server_context,
            ) as server:
                tls = await connect_tls(server.addresses[0][1], client_context)
                assert await receive_exactly(tls, len(part)) == part
                delivered.set()
                assert await tls.receive_some() == b""  # close_notify: a clean close
                await tls.aclose()
            nursery.cancel_scope.cancel()
    [record] = relay_records(relay_logs)
    assert record.levelno == logging.INFO
    assert record.getMessage().endswith(
        f"-> 127.0.0.1:{upstream_port}: upstream: socket connection broken: "
        "[Errno 104] Connection reset by peer"
    )
    assert record.exc_info is None
    assert server.stats.handler_errors == 0


async def test_client_reset_mid_stream(
    server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
    relay_logs: pytest.LogCaptureFixture,
) -> None:
    """The client resets while the upstream streams: the upstream's connection is
    closed too, and the relay logs one line."""
    upstream_ended = trio.Event()

    async def upstream(stream: trio.SocketStream) -> None:
        block = b"u" * CHUNK_SIZE
        async with stream:
            try:
                for _ in range(10_000):  # far more than the client will read
                    await stream.send_all(block)
            except trio.BrokenResourceError:
                upstream_ended.set()

    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            upstream_port = await start_upstream(nursery, upstream)
            async with open_server(
                relay_handler("127.0.0.1", upstream_port),
                host="127.0.0.1",
                ssl_context=server_context,
            ) as server:
                tls = await connect_tls(server.addresses[0][1], client_context)
                await receive_exactly(tls, 100_000)
                sock = tls.transport_stream.socket
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                await tls.transport_stream.aclose()
                await upstream_ended.wait()
            nursery.cancel_scope.cancel()
    [record] = relay_records(relay_logs)
    assert ": client: " in record.getMessage()
    assert record.exc_info is None
    assert server.stats.handler_errors == 0


async def test_shutdown_lets_relayed_connections_finish(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    """A graceful shutdown does not cut a relayed connection: it keeps relaying until
    the client is done, and the handler returns on its own."""
    outcomes: list[str] = []
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            relay = relay_handler("127.0.0.1", await start_upstream(nursery, echo_upstream))

            async def handler(stream: TLSStream) -> None:
                try:
                    await relay(stream)
                except trio.Cancelled:
                    outcomes.append("cancelled")
                    raise
                outcomes.append("returned")

            async with open_server(
                handler, host="127.0.0.1", ssl_context=server_context, shutdown_grace=3600
            ) as server:
                tls = await connect_tls(server.addresses[0][1], client_context)
                await tls.send_all(b"before")
                assert await receive_exactly(tls, 6) == b"before"
                server.start_shutdown()
                await tls.send_all(b"during the shutdown")
                assert await receive_exactly(tls, 19) == b"during the shutdown"
                await tls.aclose()
            nursery.cancel_scope.cancel()
    assert outcomes == ["returned"]


async def test_shutdown_grace_over_closes_both_sides(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    upstream_saw: list[bytes] = []
    hello, done = trio.Event(), trio.Event()

    async def upstream(stream: trio.SocketStream) -> None:
        async with stream:
            upstream_saw.append(await receive_exactly(stream, 5))
            hello.set()
            upstream_saw.append(await receive_until_eof(stream))
        done.set()

    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            upstream_port = await start_upstream(nursery, upstream)
            async with open_server(
                relay_handler("127.0.0.1", upstream_port),
                host="127.0.0.1",
                ssl_context=server_context,
            ) as server:
                tls = await connect_tls(server.addresses[0][1], client_context)
                await tls.send_all(b"hello")
                await hello.wait()
                await server.shutdown(grace=0)
                assert await tls.receive_some() == b""  # close_notify from the server
                await tls.aclose()
            await done.wait()  # the upstream saw its connection end
            nursery.cancel_scope.cancel()
    assert upstream_saw == [b"hello", b""]
    assert server.stats.handler_errors == 0


# -- curl and a real HTTP server -------------------------------------------------------

CURL = shutil.which("curl")


@pytest.mark.interop
@pytest.mark.skipif(CURL is None, reason="curl is not installed")
async def test_curl_through_the_relay_to_http_server(
    ca: trustme.CA, server_context: ssl.SSLContext, tmp_path: Path
) -> None:
    """curl -> TLS -> relay -> TCP -> Python's http.server: curl gets the file."""
    assert CURL is not None
    served = tmp_path / "served"
    served.mkdir()
    (served / "file.bin").write_bytes(content := os.urandom(3 * 1024 * 1024 + 5))
    ca_file, output = tmp_path / "ca.pem", tmp_path / "output.bin"
    ca.cert_pem.write_to_path(ca_file)
    with trio.fail_after(GUARD):
        http_server = await trio.lowlevel.open_process(
            [sys.executable, "-u", "-m", "http.server", "--bind", "127.0.0.1",
             "--directory", str(served), "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            assert http_server.stdout is not None
            banner = await http_server.stdout.receive_some()  # "Serving HTTP on ... port N"
            upstream_port = int(banner.split(b" port ")[1].split()[0])
            async with open_server(
                relay_handler("127.0.0.1", upstream_port),
                host="127.0.0.1",
                ssl_context=server_context,
            ) as server:
                port = server.addresses[0][1]
                result = await trio.run_process(
                    [CURL, "--silent", "--show-error", "--verbose", "--cacert", str(ca_file),
                     "--max-time", str(GUARD), "--output", str(output),
                     f"https://localhost:{port}/file.bin"],
                    capture_stderr=True,
                    check=False,
                )  # fmt: skip
        finally:
            http_server.kill()
            await http_server.wait()
    stderr = result.stderr.decode()
    assert result.returncode == 0, stderr
    assert "< HTTP/1.0 200 OK" in stderr
    assert "SimpleHTTP" in stderr  # the upstream's Server header
    assert output.read_bytes() == content
    assert server.stats.handler_errors == 0


def test_public_names() -> None:
    for name in ("relay_handler", "parse_host_port", "info_handler"):
        assert getattr(trio_accept, name).__module__ == "trio_accept"


# -- the PROXY protocol header to the upstream ----------------------------------------------


async def read_proxy_header(stream: trio.abc.ReceiveStream) -> trio_accept.ProxyHeader:
    """The PROXY header the upstream received (nothing else is read)."""
    received = bytearray()
    while (parsed := trio_accept.parse_proxy_header(received)) is None:
        data = await stream.receive_some(1)  # byte by byte: nothing past the header
        assert data, f"EOF after {bytes(received)!r}"
        received += data
    return parsed[0]


async def test_upstream_proxy_header_is_local_when_addresses_do_not_fit(
    server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
    relay_logs: pytest.LogCaptureFixture,
) -> None:
    """A caller that accepts on a UNIX socket and names the client by an IP address: one
    PROXY header cannot carry an IP source and a UNIX destination, so the upstream is told
    LOCAL (no client address), and the log says so."""
    headers: list[trio_accept.ProxyHeader] = []

    async def upstream(stream: trio.SocketStream) -> None:
        async with stream:
            headers.append(await read_proxy_header(stream))
            await stream.send_all(b"hello from upstream\n")

    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            port = await start_upstream(nursery, upstream)
            ours, theirs = trio.socket.socketpair(socket.AF_UNIX)
            client = trio.SSLStream(
                trio.SocketStream(theirs), client_context, server_hostname="localhost"
            )
            servers: list[TLSStream] = []

            async def accept() -> None:
                transport = trio.SocketStream(ours)
                peer = ("203.0.113.7", 4242)
                servers.append(
                    await trio_accept.accept(transport, server_context, peer_address=peer)
                )

            async with trio.open_nursery() as handshakes:  # both ends, then on
                handshakes.start_soon(accept)
                await client.do_handshake()
            nursery.start_soon(relay_handler("127.0.0.1", port, proxy_protocol=True), servers[0])
            assert await receive_until_eof(client) == b"hello from upstream\n"
            await client.aclose()
            nursery.cancel_scope.cancel()
    (header,) = headers
    assert (header.command, header.source, header.destination) == ("LOCAL", None, None)
    (record,) = [r for r in relay_records(relay_logs) if "LOCAL" in r.getMessage()]
    assert record.levelname == "WARNING"
    assert record.getMessage().startswith(
        f"relay 203.0.113.7:4242 -> 127.0.0.1:{port}: sending a LOCAL PROXY header "
        "(no client address): cannot describe ('203.0.113.7', 4242) -> '': "
    )
