"""TLSStream: trio's stream contract, checkpoints, misuse, closing, EOF and the handshake facts."""

from __future__ import annotations

import ssl
from typing import Final, TypeAlias, final

import pytest
import trio
import trio.lowlevel
import trio.testing
import trustme
from helpers import TransportPair, receive_until_eof, tcp_stream_pair, tls_pair
from trio.testing import (
    assert_checkpoints,
    lockstep_stream_pair,
    memory_stream_pair,
    wait_all_tasks_blocked,
)

import trio_accept
from trio_accept import ErrorKind, Reason
from trio_accept._handshake import CLOSE_TIMEOUT
from trio_accept._stream import _SendLock, close_at_end

# A safety net against check_two_way_stream hanging on a contract break (real clock);
# it runs in well under a second when all is well.
HANG_GUARD: Final = 60

TRANSPORTS: Final = [
    pytest.param(memory_stream_pair, id="memory"),
    pytest.param(lockstep_stream_pair, id="lockstep"),
]
VERSIONS: Final = [
    pytest.param(ssl.TLSVersion.TLSv1_3, id="tls1.3"),
    pytest.param(ssl.TLSVersion.TLSv1_2, id="tls1.2"),
]
VERSION_NAMES: Final = {ssl.TLSVersion.TLSv1_3: "TLSv1.3", ssl.TLSVersion.TLSv1_2: "TLSv1.2"}

Client: TypeAlias = trio.SSLStream[trio.abc.Stream]


async def memory_pair(
    server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
    *,
    tolerate_ragged_eof: bool = False,
) -> tuple[trio_accept.TLSStream, Client]:
    return await tls_pair(
        *memory_stream_pair(),
        server_context,
        client_context,
        tolerate_ragged_eof=tolerate_ragged_eof,
    )


async def lockstep_pair(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> tuple[trio_accept.TLSStream, Client]:
    return await tls_pair(*lockstep_stream_pair(), server_context, client_context)


# -- trio's generic stream checks ----------------------------------------------------


@pytest.mark.parametrize("transports", TRANSPORTS)
@pytest.mark.parametrize("server_first", [True, False], ids=["server-first", "client-first"])
@pytest.mark.parametrize("version", VERSIONS)
async def test_check_two_way_stream(
    transports: TransportPair,
    server_first: bool,
    version: ssl.TLSVersion,
    server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
) -> None:
    client_context.maximum_version = version

    lockstep = transports is lockstep_stream_pair
    # A lockstep transport has no buffer: send_all blocks until the peer receives. Then
    # a close_notify cannot get out while the peer is busy sending, and trio's SSLStream
    # waits for it without bound (its aclose would deadlock with our send_all). So over
    # lockstep both ends run HTTPS-style: the client closes without close_notify, we
    # take that as the end of the stream, and our own aclose gives up on its
    # close_notify quickly (the outcome is the same whether it gets through or not).
    close_timeout = 0.05 if lockstep else CLOSE_TIMEOUT

    async def stream_maker() -> tuple[trio.abc.Stream, trio.abc.Stream]:
        server, client = await tls_pair(
            *transports(),
            server_context,
            client_context,
            https_compatible=lockstep,
            tolerate_ragged_eof=lockstep,
            close_timeout=close_timeout,
        )
        assert server.info.version == VERSION_NAMES[version]
        return (server, client) if server_first else (client, server)

    # Lockstep streams are "clogged" in check_two_way_stream's sense.
    clogged = stream_maker if lockstep else None
    with trio.fail_after(HANG_GUARD):
        await trio.testing.check_two_way_stream(stream_maker, clogged)


async def tcp_pair(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> tuple[trio_accept.TLSStream, Client]:
    """Over real TCP: the driver's socket path (bytes read and written on the fd)."""
    return await tls_pair(*await tcp_stream_pair(), server_context, client_context)


@pytest.mark.parametrize("server_first", [True, False], ids=["server-first", "client-first"])
@pytest.mark.parametrize("version", VERSIONS)
async def test_check_two_way_stream_over_tcp(
    server_first: bool,
    version: ssl.TLSVersion,
    server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
) -> None:
    client_context.maximum_version = version

    async def stream_maker() -> tuple[trio.abc.Stream, trio.abc.Stream]:
        server, client = await tcp_pair(server_context, client_context)
        assert server.info.version == VERSION_NAMES[version]
        return (server, client) if server_first else (client, server)

    with trio.fail_after(HANG_GUARD):
        await trio.testing.check_two_way_stream(stream_maker, None)


# -- checkpoints -------------------------------------------------------------------


async def test_every_method_is_a_checkpoint_over_tcp(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    """Over a socket, bytes that are already there and a send buffer with room make the
    calls return without waiting: they must still be checkpoints."""
    server, client = await tcp_pair(server_context, client_context)
    await client.send_all(b"abc")
    await trio.testing.wait_all_tasks_blocked()
    with assert_checkpoints():
        assert await server.receive_some(1) == b"a"  # read at once from the socket
    with assert_checkpoints():
        assert await server.receive_some() == b"bc"  # already decrypted
    with assert_checkpoints():
        await server.send_all(b"data")  # the send buffer takes it at once
    with assert_checkpoints():
        await server.send_all(b"")
    assert await client.receive_some() == b"data"
    with assert_checkpoints():
        await server.aclose()
    assert await client.receive_some() == b""  # our close_notify
    await client.aclose()


async def test_a_cancelled_call_over_tcp_raises_before_touching_anything(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    server, client = await tcp_pair(server_context, client_context)
    await client.send_all(b"abc")
    await trio.testing.wait_all_tasks_blocked()
    with trio.CancelScope() as scope:
        scope.cancel()
        await server.receive_some()
    assert scope.cancelled_caught
    with trio.CancelScope() as scope:
        scope.cancel()
        await server.send_all(b"x")
    assert scope.cancelled_caught
    assert await server.receive_some() == b"abc"  # nothing was lost
    await server.send_all(b"y")
    assert await client.receive_some() == b"y"  # nothing was sent by the cancelled call
    await server.aclose()
    await client.aclose()


async def test_accept_is_a_checkpoint(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    server_transport, client_transport = memory_stream_pair()
    client = trio.SSLStream(client_transport, client_context, server_hostname="localhost")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.do_handshake)
        with assert_checkpoints():
            server = await trio_accept.accept(server_transport, server_context)
    assert server.info.version == "TLSv1.3"


async def test_receive_some_with_buffered_data_is_a_checkpoint(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    server, client = await memory_pair(server_context, client_context)
    await client.send_all(b"abc")
    assert await server.receive_some(1) == b"a"
    # The rest of the record is decrypted and waiting in the engine: no transport call.
    with assert_checkpoints():
        assert await server.receive_some(1) == b"b"
    with assert_checkpoints():
        assert await server.receive_some() == b"c"


async def test_send_methods_are_checkpoints(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    server, client = await memory_pair(server_context, client_context)
    with assert_checkpoints():
        await server.send_all(b"")
    with assert_checkpoints():
        await server.send_all(b"data")
    with assert_checkpoints():
        await server.wait_send_all_might_not_block()
    assert await client.receive_some() == b"data"


async def test_aclose_is_a_checkpoint_every_time(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    server, _client = await memory_pair(server_context, client_context)
    with assert_checkpoints():
        await server.aclose()
    with assert_checkpoints():
        await server.aclose()


# -- concurrent misuse ---------------------------------------------------------------


async def test_two_receivers_are_busy(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    server, client = await memory_pair(server_context, client_context)
    received: list[bytes] = []

    async def receive() -> None:
        received.append(await server.receive_some())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receive)
        await wait_all_tasks_blocked()
        with pytest.raises(trio.BusyResourceError):
            await server.receive_some()
        await client.send_all(b"still usable")
    assert received == [b"still usable"]


async def test_two_senders_are_busy(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    server, client = await lockstep_pair(server_context, client_context)
    async with trio.open_nursery() as nursery:
        # Blocks on the lockstep transport until the client reads.
        nursery.start_soon(server.send_all, b"first")
        await wait_all_tasks_blocked()
        with pytest.raises(trio.BusyResourceError):
            await server.send_all(b"second")
        with pytest.raises(trio.BusyResourceError):
            await server.wait_send_all_might_not_block()
        assert await client.receive_some() == b"first"
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.send_all, b"third")
        assert await client.receive_some() == b"third"


# -- closing -------------------------------------------------------------------------


async def test_aclose_sends_close_notify(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    server, client = await memory_pair(server_context, client_context)
    await server.send_all(b"last words")
    await server.aclose()
    assert await client.receive_some() == b"last words"
    # A clean EOF: trio's SSLStream raises BrokenResourceError on a ragged one.
    assert await client.receive_some() == b""


async def test_aclose_is_bounded_when_the_peer_does_not_read(
    autojump_clock: trio.testing.MockClock,
    server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
) -> None:
    server, client = await tls_pair(
        *lockstep_stream_pair(), server_context, client_context, close_timeout=3
    )
    # The client never reads, so the close_notify cannot leave the lockstep transport;
    # only close_timeout lets aclose() return (the guard fails the test otherwise).
    with trio.fail_after(60):
        await server.aclose()
        # The transport is closed: the client reaches EOF (after what the abandoned
        # send_all left in the lockstep queue), instead of waiting forever.
        await receive_until_eof(client.transport_stream)
    with pytest.raises(trio.ClosedResourceError):
        await server.send_all(b"x")


async def test_calls_after_aclose_are_closed(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    server, _client = await memory_pair(server_context, client_context)
    await server.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await server.send_all(b"x")
    with pytest.raises(trio.ClosedResourceError):
        await server.send_all(b"")
    with pytest.raises(trio.ClosedResourceError):
        await server.receive_some()
    with pytest.raises(trio.ClosedResourceError):
        await server.wait_send_all_might_not_block()


async def test_send_all_cancelled_mid_send_breaks_the_stream(
    autojump_clock: trio.testing.MockClock,
    server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
) -> None:
    server, client = await lockstep_pair(server_context, client_context)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.send_all, b"x" * 100)
        await wait_all_tasks_blocked()  # the bytes are on their way, nobody reads them
        nursery.cancel_scope.cancel()
    with pytest.raises(trio.BrokenResourceError):
        await server.send_all(b"y")
    with pytest.raises(trio.BrokenResourceError):
        await server.receive_some()
    # A broken stream closes its transport at once, without trying to say goodbye.
    with trio.fail_after(60):
        await server.aclose()
        await receive_until_eof(client.transport_stream)


# -- end of stream -------------------------------------------------------------------


async def test_ragged_eof_is_an_error(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    server, client = await memory_pair(server_context, client_context)
    await client.transport_stream.aclose()  # no close_notify
    with pytest.raises(trio_accept.TLSError) as excinfo:
        await server.receive_some()
    error = excinfo.value
    assert isinstance(error, trio.BrokenResourceError)
    assert not isinstance(error, trio_accept.HandshakeError)
    assert error.reason == Reason.EOF
    assert error.code == -1
    assert error.kind is ErrorKind.SYSCALL
    assert isinstance(error.__cause__, ssl.SSLError)
    with pytest.raises(trio.BrokenResourceError):
        await server.receive_some()
    with pytest.raises(trio.BrokenResourceError):
        await server.send_all(b"x")
    await server.aclose()


async def test_ragged_eof_tolerated(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    server, client = await memory_pair(server_context, client_context, tolerate_ragged_eof=True)
    await client.send_all(b"data")
    await client.transport_stream.aclose()  # no close_notify
    assert await server.receive_some() == b"data"
    assert await server.receive_some() == b""
    assert await server.receive_some() == b""
    # The TLS session is over (OpenSSL failed it): sending is not possible any more.
    with pytest.raises(trio.BrokenResourceError):
        await server.send_all(b"x")
    with assert_checkpoints():
        await server.aclose()


async def test_close_notify_is_a_clean_eof(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    server, client = await memory_pair(server_context, client_context)
    await client.send_all(b"bye")
    await client.aclose()
    assert await server.receive_some() == b"bye"
    assert await server.receive_some() == b""
    assert await server.receive_some() == b""
    await server.aclose()


# -- TLS 1.3 session tickets (trio issue #819) -------------------------------------------


async def test_client_speaks_first_on_lockstep_transport(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    client_context.minimum_version = ssl.TLSVersion.TLSv1_3
    # If the server sent its session tickets when the handshake completes, it would
    # block on the lockstep transport while the client blocks sending: a deadlock.
    with trio.fail_after(HANG_GUARD):
        server, client = await lockstep_pair(server_context, client_context)
        assert not client.session.has_ticket
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.send_all, b"ping")
            assert await server.receive_some() == b"ping"
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.send_all, b"pong")
            assert await client.receive_some() == b"pong"
    # The tickets came with the first reply.
    assert client.session.has_ticket


# -- stream.info -------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
async def test_info_version_and_cipher(
    version: ssl.TLSVersion, server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    client_context.maximum_version = version
    server, client = await memory_pair(server_context, client_context)
    info = server.info
    assert info.version == VERSION_NAMES[version] == client.version()
    cipher = client.cipher()
    assert cipher is not None
    assert info.cipher == cipher[0]
    assert info.handshake_seconds >= 0
    assert info.peer_address is None  # memory streams have no socket
    assert info.alpn_protocol is None
    assert info.peer_certificate is None


async def test_info_server_name(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    server, _client = await memory_pair(server_context, client_context)
    assert server.info.server_name == "localhost"


async def test_info_without_sni(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    client_context.check_hostname = False
    server, _client = await tls_pair(
        *memory_stream_pair(), server_context, client_context, server_hostname=None
    )
    assert server.info.server_name is None


async def test_info_alpn(server_context: ssl.SSLContext, client_context: ssl.SSLContext) -> None:
    server_context.set_alpn_protocols(["h2", "http/1.1"])
    client_context.set_alpn_protocols(["http/1.1", "h2"])
    server, client = await memory_pair(server_context, client_context)
    # OpenSSL picks by the server's preference.
    assert server.info.alpn_protocol == "h2" == client.selected_alpn_protocol()


@pytest.mark.parametrize("version", VERSIONS)
async def test_info_peer_certificate_with_mtls(
    version: ssl.TLSVersion,
    ca: trustme.CA,
    server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
) -> None:
    server_context.verify_mode = ssl.CERT_REQUIRED
    ca.configure_trust(server_context)
    ca.issue_cert("client@example.com").configure_cert(client_context)
    client_context.maximum_version = version
    server, client = await memory_pair(server_context, client_context)
    # In TLS 1.3 the client is done before the server has checked its certificate: the
    # exchange proves the server accepted it.
    await client.send_all(b"hi")
    assert await server.receive_some() == b"hi"
    certificate = server.info.peer_certificate
    assert certificate is not None
    assert certificate["subjectAltName"] == (("email", "client@example.com"),)


async def test_info_peer_address_given(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    server_transport, client_transport = memory_stream_pair()
    client = trio.SSLStream(client_transport, client_context, server_hostname="localhost")
    address = ("203.0.113.7", 50000)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.do_handshake)
        server = await trio_accept.accept(server_transport, server_context, peer_address=address)
    assert server.info.peer_address == address
    await client.transport_stream.aclose()
    with pytest.raises(trio_accept.TLSError, match=r"\[peer 203\.0\.113\.7:50000\]") as excinfo:
        await server.receive_some()
    assert excinfo.value.peer_address == address


# -- the send lock -------------------------------------------------------------------


async def test_send_lock_is_strict_fifo_and_survives_a_cancelled_waiter() -> None:
    lock = _SendLock()
    order: list[str] = []

    async def sender(name: str, scope: trio.CancelScope | None = None) -> None:
        with scope or trio.CancelScope():
            async with lock:
                order.append(name)
                await trio.lowlevel.checkpoint()

    lock.acquire_nowait()  # held: everyone below queues
    cancelled = trio.CancelScope()
    async with trio.open_nursery() as nursery:
        for name in ("first", "second"):
            nursery.start_soon(sender, name)
            await wait_all_tasks_blocked()
        nursery.start_soon(sender, "cancelled", cancelled)
        await wait_all_tasks_blocked()
        nursery.start_soon(sender, "third")
        await wait_all_tasks_blocked()
        cancelled.cancel()  # leaves the queue without ever holding the lock
        await wait_all_tasks_blocked()
        with pytest.raises(trio.WouldBlock):
            lock.acquire_nowait()  # a newcomer cannot jump the queue
        lock.release()  # hands the lock to the longest waiter
    assert order == ["first", "second", "third"]
    lock.acquire_nowait()  # free again once the queue is empty


# -- the listener's close -----------------------------------------------------------


@final
class StepCounter(trio.abc.Instrument):
    """Counts the times a task yields to the scheduler (steps it ends)."""

    def __init__(self, task: trio.lowlevel.Task) -> None:
        self.task = task
        self.count = 0

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self.task:
            self.count += 1


async def test_close_at_end_says_goodbye_without_a_checkpoint_over_tcp(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    server, client = await tcp_pair(server_context, client_context)
    steps = StepCounter(trio.lowlevel.current_task())
    trio.lowlevel.add_instrument(steps)
    try:
        await close_at_end(server)  # close_notify fits in the send buffer: no waiting
    finally:
        trio.lowlevel.remove_instrument(steps)
    assert steps.count == 0  # never gave the scheduler a turn (aclose() would have)
    assert await client.receive_some() == b""  # it was a close_notify, not a bare EOF
    with pytest.raises(trio.ClosedResourceError):
        await server.send_all(b"x")
    await client.aclose()


async def test_close_at_end_when_cancelled_sends_no_goodbye(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    server, client = await tcp_pair(server_context, client_context)
    with trio.CancelScope() as scope:
        scope.cancel()
        await close_at_end(server)
    assert scope.cancelled_caught
    with pytest.raises(trio.BrokenResourceError):  # EOF without close_notify
        await client.receive_some()
    await trio.aclose_forcefully(client)
