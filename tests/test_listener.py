"""The listener: admission, eviction, limits, handler errors, accept errors, shutdown.

Deadlines, eviction ages and grace periods run on trio's MockClock over memory streams
(``MemoryListener`` below is a test double for the transport only: the TLS is real).
Tests over real sockets use the real clock and assert outcomes, never durations.
"""

from __future__ import annotations

import errno
import functools
import logging
import math
import os
import shutil
import socket
import ssl
import struct
from typing import TYPE_CHECKING, Final, final

import pytest
import trio
import trio.testing
from helpers import MALFORMED, Malformed, receive_until_eof
from trio.testing import lockstep_stream_pair, memory_stream_pair, wait_all_tasks_blocked

from trio_accept import (
    HandshakeError,
    Reason,
    Server,
    TLSListener,
    TLSStream,
    current_server,
    open_server,
    open_tls_listeners,
    serve_tls,
)
from trio_accept._handshake import PLAIN_HTTP_RESPONSE
from trio_accept._listener import ACCEPT_CAPACITY_ERRNOS, PROGRESS_CREDIT

if TYPE_CHECKING:
    from collections.abc import Callable
    from contextlib import AbstractAsyncContextManager
    from pathlib import Path

    import trustme

#: A safety net on the mock clock: a deadlock shows up as TooSlowError, not a hang.
DEADLOCK_GUARD: Final = 24 * 3600


@final
class MemoryListener(trio.abc.Listener[trio.abc.Stream]):
    """A transport listener over memory streams: :meth:`connect` makes a stream pair and
    queues its server end for :meth:`accept`. It can be told to fail the next accept."""

    def __init__(self) -> None:
        self._send, self._receive = trio.open_memory_channel[trio.abc.Stream](math.inf)
        self._errors: list[OSError] = []

    def fail_next_accept(self, error: OSError) -> None:
        self._errors.append(error)

    async def connect(self) -> trio.abc.HalfCloseableStream:
        """A new connection's client end; raises BrokenResourceError once closed."""
        client, server = memory_stream_pair()
        await self._send.send(server)
        return client

    async def connect_lockstep(self) -> trio.abc.Stream:
        """Like :meth:`connect`, over a lockstep pair: sends wait for the other side."""
        client, server = lockstep_stream_pair()
        await self._send.send(server)
        return client

    async def accept(self) -> trio.abc.Stream:
        if self._errors:
            await trio.lowlevel.checkpoint()
            raise self._errors.pop(0)
        try:
            return await self._receive.receive()
        except trio.EndOfChannel:  # pragma: no cover - the send side is never closed
            raise trio.ClosedResourceError from None

    async def aclose(self) -> None:
        await self._receive.aclose()


@final
class HookLog:
    """An ``on_handshake_error`` hook that records every failure."""

    def __init__(self) -> None:
        self.errors: list[HandshakeError] = []
        self.event = trio.Event()

    def __call__(self, error: HandshakeError) -> None:
        self.errors.append(error)
        self.event.set()

    @property
    def reasons(self) -> list[Reason]:
        return [error.reason for error in self.errors]


def client_hello(context: ssl.SSLContext) -> bytes:
    """A real ClientHello from ``context``, as bytes."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


async def memory_client(
    listener: MemoryListener, client_context: ssl.SSLContext
) -> trio.SSLStream[trio.abc.HalfCloseableStream]:
    """Connect through ``listener`` and finish a TLS handshake."""
    client = trio.SSLStream(await listener.connect(), client_context, server_hostname="localhost")
    await client.do_handshake()
    return client


async def tcp_client(
    port: int, client_context: ssl.SSLContext, host: str = "127.0.0.1"
) -> trio.SSLStream[trio.SocketStream]:
    """Connect over TCP and finish a TLS handshake."""
    transport = await trio.open_tcp_stream(host, port)
    client = trio.SSLStream(transport, client_context, server_hostname="localhost")
    await client.do_handshake()
    return client


async def echo(stream: TLSStream) -> None:
    async for data in stream:
        await stream.send_all(data)


def port_of(server: Server) -> int:
    port: int = server.addresses[0][1]
    return port


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def count_tasks() -> int:
    """Every task in this run, walking the tree from the root task."""

    def walk(task: trio.lowlevel.Task) -> int:
        return 1 + sum(
            walk(child) for nursery in task.child_nurseries for child in nursery.child_tasks
        )

    root = trio.lowlevel.current_root_task()
    assert root is not None
    return walk(root)


# -- the accept loop never waits for a handshake -------------------------------------


async def test_stalled_and_dripping_clients_delay_nobody(
    autojump_clock: trio.testing.MockClock,
    server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
) -> None:
    listener = MemoryListener()
    hello = client_hello(client_context)
    dripped = 0

    async def drip(transport: trio.abc.Stream) -> None:
        nonlocal dripped
        for byte in hello:
            await transport.send_all(bytes([byte]))
            dripped += 1
            await trio.sleep(0.001)  # the client's slowness, on the mock clock

    async with (
        open_server(echo, listeners=[listener], ssl_context=server_context) as server,
        trio.open_nursery() as nursery,
    ):
        stalled = [await listener.connect() for _ in range(3)]
        nursery.start_soon(drip, await listener.connect())
        await wait_all_tasks_blocked()
        client = await memory_client(listener, client_context)
        await client.send_all(b"ping")
        assert await client.receive_some() == b"ping"
        stats = server.stats
        # Nobody had to time out for the newcomer to get through: the four slow ones are
        # all still handshaking, the dripper mid-ClientHello.
        assert stats.failed == {}
        assert stats.completed == 1
        assert stats.handshakes_in_flight == 4
        assert 0 < dripped < len(hello)
        await client.aclose()
        nursery.cancel_scope.cancel()  # the dripper gives up; the server shuts down
    assert server.stats.failed == {Reason.SHUTDOWN: 4}
    for transport in stalled:
        assert await transport.receive_some() == b""


# -- deadlines ------------------------------------------------------------------------


async def test_hello_and_handshake_deadlines(
    autojump_clock: trio.testing.MockClock,
    server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
) -> None:
    listener = MemoryListener()
    hook = HookLog()
    failed_at: list[float] = []

    def on_error(error: HandshakeError) -> None:
        failed_at.append(trio.current_time())
        hook(error)

    async with open_server(
        echo,
        listeners=[listener],
        ssl_context=server_context,
        hello_timeout=3,
        handshake_timeout=7,
        on_handshake_error=on_error,
    ) as server:
        start = trio.current_time()
        silent = await listener.connect()
        stuck_after_hello = await listener.connect()
        await stuck_after_hello.send_all(client_hello(client_context))
        with trio.fail_after(DEADLOCK_GUARD):
            assert await receive_until_eof(silent) == b""
            await receive_until_eof(stuck_after_hello)  # our ServerHello, then EOF
        await wait_all_tasks_blocked()
        assert server.stats.timed_out == 2
        assert server.stats.handshakes_in_flight == 0
    assert hook.reasons == [Reason.TIMEOUT, Reason.TIMEOUT]
    assert "no complete ClientHello within 3 s" in str(hook.errors[0])
    assert "handshake not finished within 7 s" in str(hook.errors[1])
    assert failed_at == [pytest.approx(start + 3), pytest.approx(start + 7)]


# -- eviction ------------------------------------------------------------------------


async def test_max_handshakes_sheds_stalled_talkers(
    autojump_clock: trio.testing.MockClock,
    server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
) -> None:
    listener = MemoryListener()
    hook = HookLog()
    async with open_server(
        echo,
        listeners=[listener],
        ssl_context=server_context,
        max_handshakes=2,
        hello_timeout=math.inf,
        on_handshake_error=hook,
    ) as server:
        # Five clients that start a ClientHello and stop: two fit, three are shed.
        stalled = [await listener.connect() for _ in range(5)]
        for transport in stalled:
            await transport.send_all(client_hello(client_context)[:10])
            await trio.sleep(1)  # each one older than the next
        await wait_all_tasks_blocked()
        assert server.stats.evicted == 3
        assert server.stats.handshakes_in_flight == 2
        client = await memory_client(listener, client_context)
        await client.send_all(b"ping")
        assert await client.receive_some() == b"ping"
        assert server.stats.evicted == 4
        assert server.stats.completed == 1
        await client.aclose()
    # The last stalled client was shed by the shutdown.
    assert hook.reasons == [Reason.EVICTED] * 4 + [Reason.SHUTDOWN]
    for transport in stalled:
        assert await receive_until_eof(transport) == b""


async def test_silent_connections_are_never_shed_for_talkers(
    autojump_clock: trio.testing.MockClock,
    server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
) -> None:
    # Connections that never send a byte cost a socket and a task: they do not count
    # against max_handshakes, so a crowd of them cannot churn against newcomers (nor
    # against each other). hello_timeout ends them.
    listener = MemoryListener()
    hook = HookLog()
    async with open_server(
        echo,
        listeners=[listener],
        ssl_context=server_context,
        max_handshakes=1,
        hello_timeout=5,
        on_handshake_error=hook,
    ) as server:
        silent = [await listener.connect() for _ in range(10)]
        await wait_all_tasks_blocked()
        assert server.stats.handshakes_in_flight == server.stats.silent == 10
        for _ in range(3):
            client = await memory_client(listener, client_context)
            await client.send_all(b"ping")
            assert await client.receive_some() == b"ping"
            await client.aclose()
        assert hook.reasons == []
        assert server.stats.completed == 3
        for transport in silent:
            assert await receive_until_eof(transport) == b""
        assert trio.current_time() == pytest.approx(5)
    assert hook.reasons == [Reason.TIMEOUT] * 10
    assert all("no complete ClientHello within 5 s" in str(e) for e in hook.errors)


async def test_eviction_picks_the_worst_progress_rate(
    autojump_clock: trio.testing.MockClock,
    server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
) -> None:
    listener = MemoryListener()
    hook = HookLog()
    hello, fresh_hello = client_hello(client_context), client_hello(client_context)
    async with open_server(
        echo,
        listeners=[listener],
        ssl_context=server_context,
        max_handshakes=2,
        hello_timeout=math.inf,
        handshake_timeout=math.inf,
        on_handshake_error=hook,
    ) as server:
        # An old client that drips: 100 bytes in 10 s, (100 + 512) / 10 = 61 bytes/s.
        dripper = await listener.connect()
        for byte in hello[:100]:
            await dripper.send_all(bytes([byte]))
            await trio.sleep(0.1)
        # A fresh one that has sent 10 bytes in 1 s: (10 + 512) / 1 = 522 bytes/s. It has
        # sent fewer bytes, and it is younger: a rule ranking by either would shed it.
        fresh = await listener.connect()
        await fresh.send_all(fresh_hello[:10])
        await trio.sleep(1)
        assert (100 + PROGRESS_CREDIT) / 11 < (10 + PROGRESS_CREDIT) / 1
        newcomer = await memory_client(listener, client_context)
        assert hook.reasons == [Reason.EVICTED]
        # The fresh client was not shed: the rest of its hello gets a ServerHello.
        # The dripper was: it sees the server close.
        await fresh.send_all(fresh_hello[10:])
        assert (await fresh.receive_some())[:1] == b"\x16"  # a handshake record
        with trio.fail_after(DEADLOCK_GUARD):
            assert await receive_until_eof(dripper) == b""
        assert server.stats.completed == 1
        assert server.stats.evicted == 1
        await newcomer.aclose()
        await fresh.aclose()


async def test_eviction_takes_the_oldest_of_equals(
    mock_clock: trio.testing.MockClock,
    server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
) -> None:
    # A MockClock that never moves: every handshake is 0 s old, so all rank alike.
    listener = MemoryListener()
    hook = HookLog()
    hellos = [client_hello(client_context) for _ in range(3)]
    async with open_server(
        echo,
        listeners=[listener],
        ssl_context=server_context,
        max_handshakes=2,
        on_handshake_error=hook,
    ) as server:
        transports = [await listener.connect() for _ in hellos]
        for transport, hello in zip(transports, hellos, strict=True):
            await transport.send_all(hello[:10])
            await wait_all_tasks_blocked()
        assert hook.reasons == [Reason.EVICTED]
        assert server.stats.handshakes_in_flight == 2
        # The two younger ones were not shed: the rest of their hellos get answers.
        # The oldest was: it sees the server close.
        for transport, hello in zip(transports[1:], hellos[1:], strict=True):
            await transport.send_all(hello[10:])
            assert (await transport.receive_some())[:1] == b"\x16"
            await transport.aclose()
        assert await transport_eof(transports[0])
        await wait_all_tasks_blocked()
    assert hook.reasons[0] == Reason.EVICTED


async def transport_eof(transport: trio.abc.ReceiveStream) -> bool:
    return await receive_until_eof(transport) == b""


# -- max_connections and idle_timeout ------------------------------------------------


async def test_max_connections_applies_backpressure_when_all_are_established(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    listener = MemoryListener()
    release = {1: trio.Event(), 2: trio.Event()}

    async def handler(stream: TLSStream) -> None:
        number = int(await stream.receive_some())
        await stream.send_all(b"started")
        if number in release:
            await release[number].wait()
        else:
            await echo(stream)

    async def third_client(done: trio.Event) -> None:
        client = await memory_client(listener, client_context)
        await client.send_all(b"3")
        assert await client.receive_some() == b"started"
        done.set()
        await client.aclose()

    async with (
        trio.open_nursery() as nursery,
        open_server(
            handler, listeners=[listener], ssl_context=server_context, max_connections=2
        ) as server,
    ):
        clients: list[trio.SSLStream[trio.abc.HalfCloseableStream]] = []
        for number in (1, 2):
            client = await memory_client(listener, client_context)
            await client.send_all(b"%d" % number)
            assert await client.receive_some() == b"started"
            clients.append(client)
        third_done = trio.Event()
        nursery.start_soon(third_client, third_done)
        await wait_all_tasks_blocked()
        # Full of established connections: the third is not even accepted.
        assert server.stats.accepted == 2
        assert server.stats.active_connections == 2
        assert not third_done.is_set()
        release[1].set()
        assert await clients[0].receive_some() == b""  # close_notify
        await third_done.wait()
        assert server.stats.accepted == 3
        release[2].set()
        for client in clients:
            await client.aclose()


async def test_max_connections_sheds_a_handshake_for_a_newcomer(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    listener = MemoryListener()
    hook = HookLog()
    async with open_server(
        echo,
        listeners=[listener],
        ssl_context=server_context,
        max_connections=2,
        on_handshake_error=hook,
    ) as server:
        established = await memory_client(listener, client_context)
        stalled = await listener.connect()
        newcomer = await memory_client(listener, client_context)
        await newcomer.send_all(b"ping")
        assert await newcomer.receive_some() == b"ping"
        assert hook.reasons == [Reason.EVICTED]
        assert await stalled.receive_some() == b""
        assert server.stats.active_connections == 2
        await established.aclose()
        await newcomer.aclose()


async def test_idle_timeout_closes_silent_connections_only(
    autojump_clock: trio.testing.MockClock,
    server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
) -> None:
    listener = MemoryListener()
    ended: dict[bytes, str] = {}

    async def handler(stream: TLSStream) -> None:
        name = await stream.receive_some()
        try:
            async for _ in stream:
                pass
        except trio.Cancelled:
            ended[name] = "cancelled"
            raise
        ended[name] = "eof"

    async with open_server(
        handler, listeners=[listener], ssl_context=server_context, idle_timeout=10
    ) as server:
        silent = await memory_client(listener, client_context)
        await silent.send_all(b"silent")
        chatty = await memory_client(listener, client_context)
        await chatty.send_all(b"chatty")
        with trio.fail_after(DEADLOCK_GUARD):
            for _ in range(10):  # 30 s: three idle timeouts' worth, but never 10 s quiet
                await trio.sleep(3)
                await chatty.send_all(b".")
            assert server.stats.idle_closed == 1
            assert ended == {b"silent": "cancelled"}
            assert await silent.receive_some() == b""  # close_notify
            await chatty.aclose()
            await wait_all_tasks_blocked()
        assert ended == {b"silent": "cancelled", b"chatty": "eof"}
        assert server.stats.idle_closed == 1
        assert server.stats.closed == 2


# -- handler errors --------------------------------------------------------------------


async def test_handler_exception_is_logged_and_ends_only_its_connection(
    caplog: pytest.LogCaptureFixture,
    server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
) -> None:
    async def handler(stream: TLSStream) -> None:
        async for data in stream:
            if data == b"boom":
                raise ValueError("boom")
            await stream.send_all(data)

    async with open_server(handler, host="127.0.0.1", ssl_context=server_context) as server:
        port = port_of(server)
        good = await tcp_client(port, client_context)
        bad = await tcp_client(port, client_context)
        peer = bad.transport_stream.socket.getsockname()  # the server's view of the peer
        await bad.send_all(b"boom")
        assert await bad.receive_some() == b""  # close_notify: closed cleanly
        await good.send_all(b"still here")
        assert await good.receive_some() == b"still here"
        late = await tcp_client(port, client_context)
        await late.send_all(b"hello")
        assert await late.receive_some() == b"hello"
        assert server.stats.handler_errors == 1
        for client in (good, bad, late):
            await client.aclose()
    [record] = [r for r in caplog.records if r.name == "trio_accept" and r.exc_info]
    assert record.levelno == logging.ERROR
    assert str(peer) in record.getMessage()
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], ValueError)


async def test_handler_keyboard_interrupt_propagates(
    autojump_clock: trio.testing.MockClock,
    server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
) -> None:
    listener = MemoryListener()

    servers: list[Server] = []

    async def handler(stream: TLSStream) -> None:
        servers.append(current_server())
        await stream.receive_some()
        raise KeyboardInterrupt

    # The handler runs in open_server's nursery, whose strict exception group carries the
    # KeyboardInterrupt out; nothing counts it as a handler error or swallows it.
    with pytest.RaisesGroup(KeyboardInterrupt):
        async with open_server(handler, listeners=[listener], ssl_context=server_context):
            client = await memory_client(listener, client_context)
            await client.send_all(b"x")
            with trio.fail_after(DEADLOCK_GUARD):  # were it swallowed: TooSlowError
                await trio.sleep_forever()
    [server] = servers
    assert server.stats.handler_errors == 0


async def test_cancellation_reaches_handlers_and_is_not_an_error(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    listener = MemoryListener()
    cancelled = trio.Event()
    running = trio.Event()

    servers: list[Server] = []

    async def handler(stream: TLSStream) -> None:
        servers.append(current_server())
        running.set()
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            cancelled.set()
            raise

    with trio.CancelScope() as scope:
        async with open_server(handler, listeners=[listener], ssl_context=server_context):
            await memory_client(listener, client_context)
            await running.wait()
            scope.cancel()
            await trio.sleep_forever()
    assert scope.cancelled_caught
    assert cancelled.is_set()
    [server] = servers
    assert server.stats.handler_errors == 0
    assert server.stats.closed == 1


# -- accept() errors -------------------------------------------------------------------


@pytest.mark.parametrize("code", sorted(ACCEPT_CAPACITY_ERRNOS), ids=errno.errorcode.get)
async def test_accept_out_of_resources_backs_off_and_keeps_serving(
    code: int,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
    server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
) -> None:
    listener = MemoryListener()
    listener.fail_next_accept(OSError(code, os.strerror(code)))
    listener.fail_next_accept(OSError(code, os.strerror(code)))
    async with open_server(echo, listeners=[listener], ssl_context=server_context) as server:
        client = await memory_client(listener, client_context)
        await client.send_all(b"ping")
        assert await client.receive_some() == b"ping"
        assert server.stats.accept_errors == 2
        await client.aclose()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert errno.errorcode[code] in warnings[0].getMessage()


@pytest.mark.parametrize("code", [errno.EMFILE, errno.ENFILE], ids=errno.errorcode.get)
async def test_out_of_fds_sheds_the_oldest_silent_connection(
    code: int,
    autojump_clock: trio.testing.MockClock,
    server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
) -> None:
    listener = MemoryListener()
    hook = HookLog()
    async with open_server(
        echo, listeners=[listener], ssl_context=server_context, on_handshake_error=hook
    ) as server:
        silent = [await listener.connect() for _ in range(2)]
        await wait_all_tasks_blocked()
        for _ in range(2):
            listener.fail_next_accept(OSError(code, os.strerror(code)))
        newest = await listener.connect()  # accepted; the next two accepts fail
        # Each failure frees the fd of the connection silent for longest.
        for transport in silent:
            assert await receive_until_eof(transport) == b""
        await wait_all_tasks_blocked()
        assert hook.reasons == [Reason.EVICTED, Reason.EVICTED]
        assert server.stats.accept_errors == 2
        assert server.stats.silent == 1
        client = await memory_client(listener, client_context)
        await client.send_all(b"ping")
        assert await client.receive_some() == b"ping"
        await client.aclose()
        await newest.aclose()


async def test_other_accept_errors_propagate(
    autojump_clock: trio.testing.MockClock, server_context: ssl.SSLContext
) -> None:
    listener = MemoryListener()
    listener.fail_next_accept(OSError(errno.EBADF, os.strerror(errno.EBADF)))
    # Accept loops run in a service nursery inside the server's nursery: two strict
    # exception groups around the error.
    with pytest.RaisesGroup(
        pytest.RaisesGroup(pytest.RaisesExc(OSError, check=lambda exc: exc.errno == errno.EBADF))
    ):
        async with open_server(echo, listeners=[listener], ssl_context=server_context):
            with trio.fail_after(DEADLOCK_GUARD):  # were it retried: TooSlowError
                await trio.sleep_forever()


# -- failed handshakes are classified and counted ------------------------------------


@pytest.mark.parametrize("case", MALFORMED, ids=lambda case: case.name)
async def test_garbage_is_classified_and_counted(
    case: Malformed, autojump_clock: trio.testing.MockClock, server_context: ssl.SSLContext
) -> None:
    listener = MemoryListener()
    hook = HookLog()
    async with open_server(
        echo, listeners=[listener], ssl_context=server_context, on_handshake_error=hook
    ) as server:
        client = await listener.connect()
        if case.data:
            await client.send_all(case.data)
        else:
            await client.send_eof()  # the "eof" case: a half-close, not a byte
        answer = await receive_until_eof(client)
        await client.aclose()
        await hook.event.wait()
        assert server.stats.failed == {case.reason: 1}
    assert hook.reasons == [case.reason]
    if case.reason is Reason.PLAIN_HTTP:
        assert answer == PLAIN_HTTP_RESPONSE
        assert answer.startswith(b"HTTP/1.1 400 ")
    else:
        assert answer == case.alert


async def test_a_failure_still_flushing_its_alert_at_shutdown_keeps_its_reason(
    server_context: ssl.SSLContext,
) -> None:
    # Over a lockstep transport the server's alert waits until the client reads, and this
    # client never does: the shutdown lands while the handshake, already failed, is still
    # telling the client why. The failure is counted for what it was, not as "shutdown".
    listener = MemoryListener()
    hook = HookLog()
    async with open_server(
        echo,
        listeners=[listener],
        ssl_context=server_context,
        on_handshake_error=hook,
        close_timeout=600,  # only the shutdown ends the flush
    ) as server:
        client = await listener.connect_lockstep()
        await client.send_all(b"\x16\x03\x01\x00\x10" + b"A" * 16)  # a record of garbage
        await trio.testing.wait_all_tasks_blocked()  # the alert is waiting for the client
        await server.shutdown(grace=0)
        assert server.stats.failed == {Reason.PROTOCOL_ERROR: 1}
    assert hook.reasons == [Reason.PROTOCOL_ERROR]
    await client.aclose()


async def raw_tcp_socket(port: int) -> trio.socket.SocketType:
    sock = trio.socket.socket()
    await sock.connect(("127.0.0.1", port))
    return sock


@pytest.mark.parametrize(
    ("reset", "reason"),
    [
        # A reset: the kernel hands us the bytes that arrived first, then ECONNRESET on
        # the next recv -- a transport failure, "reset".
        pytest.param(True, Reason.RESET, id="reset"),
        # A plain close (FIN): recv returns b"" mid-ClientHello, which OpenSSL calls an
        # unexpected EOF -- "eof".
        pytest.param(False, Reason.EOF, id="close"),
    ],
)
async def test_client_vanishing_mid_handshake_is_counted(
    reset: bool,
    reason: Reason,
    server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
) -> None:
    hook = HookLog()
    async with open_server(
        echo, host="127.0.0.1", ssl_context=server_context, on_handshake_error=hook
    ) as server:
        with await raw_tcp_socket(port_of(server)) as sock:
            await sock.send(client_hello(client_context)[:20])
            # Loopback delivers during send(): once every task is blocked, the server has
            # read those 20 bytes and waits for more.
            await wait_all_tasks_blocked()
            assert server.stats.handshakes_in_flight == 1
            if reset:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await hook.event.wait()
        assert server.stats.failed == {reason: 1}
    assert hook.reasons == [reason]


# -- graceful shutdown and the hard stop ---------------------------------------------


async def test_graceful_shutdown(
    autojump_clock: trio.testing.MockClock,
    server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
) -> None:
    listener = MemoryListener()
    hook = HookLog()
    events: list[tuple[str, float]] = []

    async def handler(stream: TLSStream) -> None:
        server = current_server()
        name = await stream.receive_some()
        if name == b"polite":
            await server.wait_shutting_down()
            assert server.shutting_down
            await stream.send_all(b"bye")
            events.append(("polite returned", trio.current_time()))
            return
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            events.append(("stubborn cancelled", trio.current_time()))
            raise

    baseline = count_tasks()
    async with open_server(
        handler, listeners=[listener], ssl_context=server_context, on_handshake_error=hook
    ) as server:
        polite = await memory_client(listener, client_context)
        await polite.send_all(b"polite")
        stubborn = await memory_client(listener, client_context)
        await stubborn.send_all(b"stubborn")
        stalled = await listener.connect()
        await wait_all_tasks_blocked()
        assert server.stats.active_connections == 2
        assert server.stats.handshakes_in_flight == 1
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(functools.partial(server.shutdown, grace=10))
            await wait_all_tasks_blocked()
            # At once: no more accepting, the handshake shed, the polite handler done.
            assert server.shutting_down
            with pytest.raises(trio.BrokenResourceError):
                await listener.connect()
            assert hook.reasons == [Reason.SHUTDOWN]
            assert await stalled.receive_some() == b""
            assert await polite.receive_some() == b"bye"
            assert await polite.receive_some() == b""  # close_notify
            assert events == [("polite returned", start)]
            assert server.stats.active_connections == 1
        # shutdown() has returned: the stubborn handler was cancelled when the grace
        # period ended, and still said goodbye.
        name, when = events[1]
        assert name == "stubborn cancelled"
        assert when == pytest.approx(start + 10)
        assert await stubborn.receive_some() == b""  # close_notify
        stats = server.stats
        assert stats.active_connections == stats.handshakes_in_flight == 0
        assert (stats.completed, stats.closed, stats.handler_errors) == (2, 2, 0)
        assert stats.failed == {Reason.SHUTDOWN: 1}
        assert count_tasks() == baseline  # nothing left in the server's nursery
    assert count_tasks() == baseline


async def test_current_server_and_start_shutdown_from_a_handler(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    listener = MemoryListener()
    seen: list[Server] = []

    async def handler(stream: TLSStream) -> None:
        server = current_server()
        seen.append(server)
        await stream.receive_some()
        server.start_shutdown(grace=0)
        assert server.shutting_down

    with pytest.raises(RuntimeError, match="only available inside a handler"):
        current_server()
    async with open_server(handler, listeners=[listener], ssl_context=server_context) as server:
        client = await memory_client(listener, client_context)
        await client.send_all(b"stop, please")
        await server.wait_shutting_down()
        assert await client.receive_some() == b""  # close_notify
    assert seen == [server]
    with pytest.raises(RuntimeError, match="only available inside a handler"):
        current_server()


async def test_serve_tls_returns_after_a_shutdown_started_by_a_handler(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    async def handler(stream: TLSStream) -> None:
        await stream.send_all(b"bye")
        current_server().start_shutdown()

    async with trio.open_nursery() as nursery:
        listeners: list[trio.SocketListener] = await nursery.start(
            functools.partial(serve_tls, handler, 0, host="127.0.0.1", ssl_context=server_context)
        )
        client = await tcp_client(listeners[0].socket.getsockname()[1], client_context)
        assert await client.receive_some() == b"bye"
        assert await client.receive_some() == b""
        await client.aclose()
    # The nursery exited by itself: serve_tls returned.


async def test_shutdown_refuses_new_tcp_connections_and_leaves_no_fd_or_task(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    async def handler(stream: TLSStream) -> None:
        await stream.send_all(b"hi")
        await current_server().wait_shutting_down()

    fds, tasks = open_fds(), count_tasks()
    hello = client_hello(client_context)
    hook = HookLog()
    async with open_server(
        handler, host="127.0.0.1", ssl_context=server_context, on_handshake_error=hook
    ) as server:
        port = port_of(server)
        stalled = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(3)]
        await stalled[0].send_all(hello[:50])
        clients = [await tcp_client(port, client_context) for _ in range(3)]
        for client in clients:
            assert await client.receive_some() == b"hi"
        await wait_all_tasks_blocked()
        # The stalled ones delayed nobody.
        assert server.stats.failed == {}
        assert server.stats.handshakes_in_flight == 3
        assert server.stats.active_connections == 3
    assert server.stats.failed == {Reason.SHUTDOWN: 3}
    with trio.socket.socket() as sock, pytest.raises(ConnectionRefusedError):
        await sock.connect(("127.0.0.1", port))
    for client in clients:
        assert await client.receive_some() == b""  # close_notify
        await client.aclose()
    for transport in stalled:
        assert await transport.receive_some() == b""
        await transport.aclose()
    assert count_tasks() == tasks
    assert open_fds() == fds


async def test_cancelling_serve_tls_leaves_no_fd_or_task(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    running = trio.Event()
    cancelled = trio.Event()

    async def handler(stream: TLSStream) -> None:
        running.set()
        try:
            await trio.sleep_forever()
        finally:
            cancelled.set()

    fds, tasks = open_fds(), count_tasks()
    async with trio.open_nursery() as nursery:
        listeners: list[trio.SocketListener] = await nursery.start(
            functools.partial(serve_tls, handler, 0, host="127.0.0.1", ssl_context=server_context)
        )
        port = listeners[0].socket.getsockname()[1]
        stalled = await trio.open_tcp_stream("127.0.0.1", port)
        client = await tcp_client(port, client_context)
        await running.wait()
        await wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert cancelled.is_set()
    assert count_tasks() == tasks
    for transport in (stalled, client.transport_stream):
        assert await transport.receive_some() == b""  # the server closed it
        await transport.aclose()
    assert open_fds() == fds


# -- serve_tls over real TCP -------------------------------------------------------------


def blocking_echo(address: tuple[str, int], context: ssl.SSLContext, message: bytes) -> bytes:
    """A plain Python ``ssl`` client, for a thread: send, read the echo, close cleanly."""
    with (
        socket.create_connection(address, timeout=10) as sock,
        context.wrap_socket(sock, server_hostname="localhost") as tls,
    ):
        tls.sendall(message)
        received = b""
        while len(received) < len(message) and (chunk := tls.recv(1024)):
            received += chunk
        tls.unwrap()  # our close_notify, and the server's in answer
        return received


async def test_serve_tls_port_zero_and_a_python_ssl_client(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    async with trio.open_nursery() as nursery:
        listeners: list[trio.SocketListener] = await nursery.start(
            functools.partial(serve_tls, echo, 0, host="127.0.0.1", ssl_context=server_context)
        )
        assert listeners
        assert all(isinstance(listener, trio.SocketListener) for listener in listeners)
        host, port = listeners[0].socket.getsockname()
        assert host == "127.0.0.1"
        assert port != 0
        echoed = await trio.to_thread.run_sync(
            blocking_echo, (host, port), client_context, b"hello from ssl"
        )
        assert echoed == b"hello from ssl"
        nursery.cancel_scope.cancel()


@pytest.mark.interop
@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl program")
async def test_serve_tls_and_openssl_s_client(
    tmp_path: Path, ca: trustme.CA, server_context: ssl.SSLContext
) -> None:
    ca_path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))

    async def handler(stream: TLSStream) -> None:
        await stream.send_all(await stream.receive_some())  # one echo, then close_notify

    async with trio.open_nursery() as nursery:
        listeners: list[trio.SocketListener] = await nursery.start(
            functools.partial(serve_tls, handler, 0, host="127.0.0.1", ssl_context=server_context)
        )
        port = listeners[0].socket.getsockname()[1]
        with trio.fail_after(30):  # a safety net against a hang, not a measurement
            result = await trio.run_process(
                [
                    "openssl",
                    "s_client",
                    "-connect",
                    f"127.0.0.1:{port}",
                    "-servername",
                    "localhost",
                    "-verify_hostname",
                    "localhost",
                    "-CAfile",
                    str(ca_path),
                    "-verify_return_error",
                    "-quiet",  # also -ign_eof: read on until our close_notify
                ],
                stdin=b"ping from s_client\n",
                capture_stdout=True,
                capture_stderr=True,
            )
        assert result.stdout == b"ping from s_client\n"
        nursery.cancel_scope.cancel()


def ipv6_available() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


async def test_serve_tls_on_every_interface(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    async with trio.open_nursery() as nursery:
        listeners: list[trio.SocketListener] = await nursery.start(
            functools.partial(serve_tls, echo, 0, ssl_context=server_context)
        )
        ports = {
            listener.socket.family: listener.socket.getsockname()[1] for listener in listeners
        }
        expected = {socket.AF_INET, socket.AF_INET6} if ipv6_available() else {socket.AF_INET}
        assert set(ports) == expected
        for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
            if family in ports:
                client = await tcp_client(ports[family], client_context, host=host)
                await client.send_all(host.encode())
                assert await client.receive_some() == host.encode()
                await client.aclose()
        nursery.cancel_scope.cancel()
    # The hard stop closed every listener, not just the first.
    assert [listener.socket.fileno() for listener in listeners] == [-1] * len(listeners)


# -- TLSListener -----------------------------------------------------------------------------


async def test_tls_listener_with_a_nursery_returns_finished_handshakes_only(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    transport_listener = MemoryListener()
    hook = HookLog()
    async with trio.open_nursery() as nursery:
        listener = TLSListener(
            transport_listener, server_context, nursery=nursery, on_handshake_error=hook
        )
        garbage = await transport_listener.connect()
        await garbage.send_all(b"SSH-2.0-OpenSSH_9.6\r\n")
        assert await receive_until_eof(garbage) == b""
        stalled = await transport_listener.connect()

        async def client_side() -> None:
            client = await memory_client(transport_listener, client_context)
            await client.send_all(b"ping")
            assert await client.receive_some() == b"ping"
            await client.aclose()

        nursery.start_soon(client_side)
        stream = await listener.accept()
        assert isinstance(stream, TLSStream)
        await stream.send_all(await stream.receive_some())
        assert await stream.receive_some() == b""
        await stream.aclose()
        assert listener.stats.failed == {Reason.WRONG_VERSION: 1}
        assert listener.stats.completed == 1
        assert hook.reasons == [Reason.WRONG_VERSION]
        await listener.aclose()
        assert await stalled.receive_some() == b""  # shed by aclose()
        with pytest.raises(trio.ClosedResourceError):
            await listener.accept()


async def test_tls_listener_as_a_context_manager_closes_unclaimed_streams(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    transport_listener = MemoryListener()
    async with TLSListener(transport_listener, server_context) as listener:
        claimed = await memory_client(transport_listener, client_context)
        stream = await listener.accept()
        unclaimed = await memory_client(transport_listener, client_context)
        await wait_all_tasks_blocked()
        assert listener.stats.completed == 2
    # Closed without ever being accepted (no close_notify: forcefully).
    await receive_until_eof(unclaimed.transport_stream)
    with pytest.raises(trio.BrokenResourceError):
        await unclaimed.receive_some()
    # A stream that was accepted is its owner's: still open.
    await claimed.send_all(b"still mine")
    assert await stream.receive_some() == b"still mine"
    await stream.aclose()
    assert await claimed.receive_some() == b""
    with pytest.raises(trio.ClosedResourceError):
        await listener.accept()


async def test_open_tls_listeners_with_a_real_client(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    async with trio.open_nursery() as nursery:
        listeners = await open_tls_listeners(0, server_context, nursery=nursery, host="127.0.0.1")
        [listener] = listeners
        transport_listener = listener.transport_listener
        assert isinstance(transport_listener, trio.SocketListener)
        port = transport_listener.socket.getsockname()[1]

        async def client_side() -> None:
            client = await tcp_client(port, client_context)
            await client.send_all(b"ping")
            assert await client.receive_some() == b"ping"
            await client.aclose()

        nursery.start_soon(client_side)
        stream = await listener.accept()
        assert stream.info.peer_address[0] == "127.0.0.1"
        await stream.send_all(await stream.receive_some())
        assert await stream.receive_some() == b""
        await stream.aclose()
        await listener.aclose()


@pytest.mark.parametrize(
    ("option", "open_bad_server"),
    [
        pytest.param(
            "max_handshakes",
            functools.partial(open_server, echo, 0, host="127.0.0.1", max_handshakes=0),
            id="max_handshakes",
        ),
        pytest.param(
            "max_connections",
            functools.partial(open_server, echo, 0, host="127.0.0.1", max_connections=0),
            id="max_connections",
        ),
        pytest.param(
            "idle_timeout",
            functools.partial(open_server, echo, 0, host="127.0.0.1", idle_timeout=0),
            id="idle_timeout",
        ),
        pytest.param(
            "shutdown_grace",
            functools.partial(open_server, echo, 0, host="127.0.0.1", shutdown_grace=-1),
            id="shutdown_grace",
        ),
    ],
)
async def test_invalid_options_leave_no_listener_open(
    option: str, open_bad_server: Callable[[], AbstractAsyncContextManager[Server]]
) -> None:
    # The TCP listeners are open before the options are checked: they must be closed.
    fds = open_fds()
    with pytest.raises(ValueError, match=f"^{option} must be"):
        async with open_bad_server():
            pass  # pragma: no cover
    assert open_fds() == fds
