"""accept(): deadlines, failure classification, alerts, transport failures and cancellation."""

from __future__ import annotations

import functools
import math
import ssl
from typing import TYPE_CHECKING, Any, Final, final

import pytest
import trio
import trio.testing
import trustme
from helpers import MALFORMED, Malformed, receive_until_eof, tls_pair
from trio.testing import lockstep_stream_pair, memory_stream_pair, wait_all_tasks_blocked

import trio_accept
from trio_accept import ErrorKind, HandshakeError, Reason
from trio_accept._handshake import (
    HANDSHAKE_TIMEOUT,
    HELLO_TIMEOUT,
    PLAIN_HTTP_RESPONSE,
    Handshake,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

#: A plaintext close_notify alert: warning (1), close_notify (0).
CLOSE_NOTIFY: Final = b"\x15\x03\x03\x00\x02\x01\x00"
VERSIONS: Final = [
    pytest.param(ssl.TLSVersion.TLSv1_3, id="tls1.3"),
    pytest.param(ssl.TLSVersion.TLSv1_2, id="tls1.2"),
]


@final
class BioClient:
    """A TLS client over memory BIOs, driven by hand: exact control of every byte."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.obj = context.wrap_bio(self.incoming, self.outgoing, server_hostname="localhost")

    def client_hello(self) -> bytes:
        with pytest.raises(ssl.SSLWantReadError):
            self.obj.do_handshake()
        return self.outgoing.read()

    async def handshake(self, transport: trio.abc.Stream) -> ssl.SSLError | None:
        """Run the client handshake; a failure is returned after its alert was sent."""
        while True:
            try:
                self.obj.do_handshake()
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError as exc:
                await transport.send_all(self.outgoing.read())
                return exc
            else:
                await transport.send_all(self.outgoing.read())
                return None
            await transport.send_all(self.outgoing.read())
            if data := await transport.receive_some():
                self.incoming.write(data)
            else:
                self.incoming.write_eof()


@final
class DripStream(trio.abc.Stream):
    """A slow client's transport: sends one byte per (virtual) second."""

    def __init__(self, transport: trio.abc.Stream) -> None:
        self.transport = transport
        self.bytes_sent = 0

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        for byte in bytes(data):
            await self.transport.send_all(bytes([byte]))
            self.bytes_sent += 1
            await trio.sleep(1)  # the client's slowness itself, on the mock clock

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.transport.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.transport.aclose()


async def expect_handshake_error(
    accept: Callable[[], Awaitable[trio_accept.TLSStream]],
    client: Callable[[], Awaitable[None]],
) -> HandshakeError:
    """Run ``accept`` against ``client`` (a task); return the error accept must raise."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client)
        with pytest.raises(HandshakeError) as excinfo:
            await accept()
    return excinfo.value


def check_error(
    error: HandshakeError,
    reason: Reason,
    *,
    code: int = -1,
    kind: ErrorKind = ErrorKind.SSL,
) -> None:
    assert isinstance(error, trio.BrokenResourceError)
    assert (error.reason, error.code, error.kind) == (reason, code, kind)
    assert reason.value in str(error)


async def assert_transport_closed(client_transport: trio.abc.Stream) -> None:
    """The server's end is closed: the client cannot send, and reads EOF."""
    with pytest.raises(trio.BrokenResourceError):
        await client_transport.send_all(b"x")  # never blocks on a memory stream
    assert await receive_until_eof(client_transport) == b""


# -- deadlines ---------------------------------------------------------------------


async def test_silent_client_times_out(
    autojump_clock: trio.testing.MockClock, server_context: ssl.SSLContext
) -> None:
    server_transport, client_transport = memory_stream_pair()
    with pytest.raises(HandshakeError) as excinfo:
        await trio_accept.accept(server_transport, server_context)
    error = excinfo.value
    check_error(error, Reason.TIMEOUT, kind=ErrorKind.SYSCALL)
    assert f"no complete ClientHello within {HELLO_TIMEOUT:g} s" in str(error)
    assert error.__cause__ is None
    await assert_transport_closed(client_transport)


async def test_client_stalling_after_hello_times_out(
    autojump_clock: trio.testing.MockClock,
    server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
) -> None:
    server_transport, client_transport = memory_stream_pair()
    await client_transport.send_all(BioClient(client_context).client_hello())
    with pytest.raises(HandshakeError) as excinfo:
        await trio_accept.accept(server_transport, server_context)
    check_error(excinfo.value, Reason.TIMEOUT, kind=ErrorKind.SYSCALL)
    assert f"handshake not finished within {HANDSHAKE_TIMEOUT:g} s" in str(excinfo.value)
    with pytest.raises(trio.BrokenResourceError):
        await client_transport.send_all(b"x")
    # The server's first flight (a handshake record), then EOF.
    assert (await receive_until_eof(client_transport)).startswith(b"\x16\x03\x03")


async def test_dripping_client_hello_times_out(
    autojump_clock: trio.testing.MockClock,
    server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
) -> None:
    server_transport, client_transport = memory_stream_pair()
    hello = BioClient(client_context).client_hello()
    dripping = DripStream(client_transport)

    async def drip() -> None:
        # Each byte is progress, but the hello as a whole is not in after 5 s; the
        # server then closes, which is how the client learns.
        with pytest.raises(trio.BrokenResourceError):
            await dripping.send_all(hello)

    error = await expect_handshake_error(
        functools.partial(trio_accept.accept, server_transport, server_context, hello_timeout=5),
        drip,
    )
    check_error(error, Reason.TIMEOUT, kind=ErrorKind.SYSCALL)
    assert "no complete ClientHello within 5 s" in str(error)
    assert 0 < dripping.bytes_sent < len(hello)
    assert await receive_until_eof(client_transport) == b""


async def test_infinite_timeouts_disable_the_deadlines(
    autojump_clock: trio.testing.MockClock,
    server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
) -> None:
    server_transport, client_transport = memory_stream_pair()
    client = trio.SSLStream(
        DripStream(client_transport), client_context, server_hostname="localhost"
    )
    with trio.fail_after(24 * 3600):  # a safety net on the mock clock, against a hang
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.do_handshake)
            server = await trio_accept.accept(
                server_transport,
                server_context,
                hello_timeout=math.inf,
                handshake_timeout=math.inf,
            )
    # The premise: at one byte per second, the defaults would have failed it.
    assert server.info.handshake_seconds > HANDSHAKE_TIMEOUT
    assert server.info.version == "TLSv1.3"


@pytest.mark.parametrize("name", ["hello_timeout", "handshake_timeout", "close_timeout"])
@pytest.mark.parametrize("value", [0, -1, math.nan], ids=["zero", "negative", "nan"])
async def test_invalid_timeouts(name: str, value: float, server_context: ssl.SSLContext) -> None:
    server_transport, _client_transport = memory_stream_pair()
    options: dict[str, Any] = {name: value}
    with pytest.raises(ValueError, match=name):
        await trio_accept.accept(server_transport, server_context, **options)


# -- failures: classified, and the client told why ------------------------------------


@pytest.mark.parametrize("case", MALFORMED, ids=lambda case: case.name)
async def test_malformed_first_flight(case: Malformed, server_context: ssl.SSLContext) -> None:
    server_transport, client_transport = memory_stream_pair()
    received: list[bytes] = []

    async def client() -> None:
        await client_transport.send_all(case.data)
        await client_transport.send_eof()
        received.append(await receive_until_eof(client_transport))
        await client_transport.aclose()

    error = await expect_handshake_error(
        functools.partial(trio_accept.accept, server_transport, server_context), client
    )
    check_error(error, case.reason, kind=case.kind)
    assert isinstance(error.__cause__, ssl.SSLError)
    # Whatever OpenSSL queued (an alert, or nothing for non-TLS bytes) arrived before
    # EOF; plain HTTP also gets a readable answer.
    expected = case.alert + (PLAIN_HTTP_RESPONSE if case.reason is Reason.PLAIN_HTTP else b"")
    assert received == [expected]


async def test_alert_flush_is_bounded(
    autojump_clock: trio.testing.MockClock, server_context: ssl.SSLContext
) -> None:
    # Over a lockstep transport the alert cannot leave while the client does not read:
    # close_timeout bounds the attempt (the guard fails the test otherwise).
    server_transport, client_transport = lockstep_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client_transport.send_all, b"\x16\x03\x01\x00\x10" + b"A" * 16)
        with trio.fail_after(60), pytest.raises(HandshakeError) as excinfo:
            await trio_accept.accept(server_transport, server_context, close_timeout=3)
    check_error(excinfo.value, Reason.PROTOCOL_ERROR)
    with pytest.raises(trio.BrokenResourceError):
        await client_transport.send_all(b"x")


async def test_eof_right_after_connect(server_context: ssl.SSLContext) -> None:
    server_transport, client_transport = memory_stream_pair()
    await client_transport.aclose()
    with pytest.raises(HandshakeError) as excinfo:
        await trio_accept.accept(server_transport, server_context)
    check_error(excinfo.value, Reason.EOF, kind=ErrorKind.SYSCALL)
    assert isinstance(excinfo.value.__cause__, ssl.SSLEOFError)


@pytest.mark.parametrize("version", VERSIONS)
async def test_close_notify_during_handshake(
    version: ssl.TLSVersion, server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    client_context.maximum_version = version
    server_transport, client_transport = memory_stream_pair()

    async def client() -> None:
        await client_transport.send_all(BioClient(client_context).client_hello())
        assert (await client_transport.receive_some()).startswith(b"\x16\x03\x03")
        # A plaintext close_notify, even in TLS 1.3 where the server already encrypts.
        await client_transport.send_all(CLOSE_NOTIFY)
        await receive_until_eof(client_transport)
        await client_transport.aclose()

    error = await expect_handshake_error(
        functools.partial(trio_accept.accept, server_transport, server_context), client
    )
    check_error(error, Reason.CLOSE_NOTIFY, code=0, kind=ErrorKind.ZERO_RETURN)
    assert isinstance(error.__cause__, ssl.SSLZeroReturnError)


@pytest.mark.parametrize("version", VERSIONS)
async def test_client_rejects_our_certificate(
    version: ssl.TLSVersion, server_context: ssl.SSLContext
) -> None:
    # The client trusts another CA: its verification fails with "unable to get local
    # issuer certificate" (X509_V_ERR 20), which OpenSSL's client reports with a fatal
    # unknown_ca alert; the server reads TLSV1_ALERT_UNKNOWN_CA.
    client_context = ssl.create_default_context()
    trustme.CA().configure_trust(client_context)
    client_context.maximum_version = version
    bio = BioClient(client_context)
    server_transport, client_transport = memory_stream_pair()
    client_errors: list[ssl.SSLError | None] = []

    async def client() -> None:
        client_errors.append(await bio.handshake(client_transport))
        await receive_until_eof(client_transport)
        await client_transport.aclose()

    error = await expect_handshake_error(
        functools.partial(trio_accept.accept, server_transport, server_context), client
    )
    check_error(error, Reason.UNKNOWN_CA)
    assert isinstance(error.__cause__, ssl.SSLError)
    assert error.__cause__.reason == "TLSV1_ALERT_UNKNOWN_CA"
    [client_error] = client_errors
    assert isinstance(client_error, ssl.SSLCertVerificationError)
    assert client_error.verify_code == 20


@pytest.mark.parametrize("version", VERSIONS)
async def test_mtls_without_client_certificate(
    version: ssl.TLSVersion,
    ca: trustme.CA,
    server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
) -> None:
    server_context.verify_mode = ssl.CERT_REQUIRED
    ca.configure_trust(server_context)
    client_context.maximum_version = version
    bio = BioClient(client_context)
    server_transport, client_transport = memory_stream_pair()

    async def client() -> None:
        await bio.handshake(client_transport)
        await receive_until_eof(client_transport)
        await client_transport.aclose()

    error = await expect_handshake_error(
        functools.partial(trio_accept.accept, server_transport, server_context), client
    )
    check_error(error, Reason.NO_CLIENT_CERT)
    assert isinstance(error.__cause__, ssl.SSLError)


# -- the transport fails ---------------------------------------------------------------


async def test_transport_broken_on_send(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    server_transport, client_transport = memory_stream_pair()
    await client_transport.send_all(BioClient(client_context).client_hello())
    await client_transport.receive_stream.aclose()  # our first flight cannot be delivered
    with pytest.raises(HandshakeError) as excinfo:
        await trio_accept.accept(server_transport, server_context)
    check_error(excinfo.value, Reason.RESET, kind=ErrorKind.SYSCALL)
    assert isinstance(excinfo.value.__cause__, trio.BrokenResourceError)
    with pytest.raises(trio.BrokenResourceError):
        await client_transport.send_all(b"x")


async def test_transport_broken_on_receive(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    server_transport, client_transport = memory_stream_pair()
    receives = 0
    reset = trio.BrokenResourceError("connection reset by peer")

    async def reset_after_hello() -> None:
        nonlocal receives
        receives += 1
        if receives > 1:
            raise reset

    server_transport.receive_stream.receive_some_hook = reset_after_hello
    await client_transport.send_all(BioClient(client_context).client_hello())
    with pytest.raises(HandshakeError) as excinfo:
        await trio_accept.accept(server_transport, server_context)
    check_error(excinfo.value, Reason.RESET, kind=ErrorKind.SYSCALL)
    assert excinfo.value.__cause__ is reset
    with pytest.raises(trio.BrokenResourceError):
        await client_transport.send_all(b"x")
    assert (await receive_until_eof(client_transport)).startswith(b"\x16\x03\x03")


# -- cancellation ------------------------------------------------------------------


async def test_cancelled_while_waiting_for_hello(server_context: ssl.SSLContext) -> None:
    server_transport, client_transport = memory_stream_pair()

    async def cancel_when_waiting(scope: trio.CancelScope) -> None:
        await wait_all_tasks_blocked()
        scope.cancel()

    async with trio.open_nursery() as nursery:
        with trio.CancelScope() as scope:
            nursery.start_soon(cancel_when_waiting, scope)
            await trio_accept.accept(server_transport, server_context)
    assert scope.cancelled_caught  # Cancelled reached the scope: nothing swallowed it
    await assert_transport_closed(client_transport)


async def test_cancelled_before_start(server_context: ssl.SSLContext) -> None:
    server_transport, client_transport = memory_stream_pair()
    with trio.CancelScope() as scope:
        scope.cancel()
        await trio_accept.accept(server_transport, server_context)
    assert scope.cancelled_caught
    # "On any exception, cancellation included, the transport is closed."
    with pytest.raises(trio.BrokenResourceError):
        await client_transport.send_all(b"x")


# -- success -----------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
async def test_handshake_completes(
    version: ssl.TLSVersion, server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    client_context.maximum_version = version
    server, client = await tls_pair(*memory_stream_pair(), server_context, client_context)
    expected = "TLSv1.3" if version is ssl.TLSVersion.TLSv1_3 else "TLSv1.2"
    assert server.info.version == expected == client.version()
    await client.send_all(b"ping")
    assert await server.receive_some() == b"ping"
    await server.send_all(b"pong")
    assert await client.receive_some() == b"pong"


# -- stopped from outside (a listener shedding it) -----------------------------------


async def test_stop_before_the_task_runs(server_context: ssl.SSLContext) -> None:
    server_transport, client_transport = memory_stream_pair()
    handshake = Handshake(server_transport, server_context)
    handshake.stop(Reason.EVICTED)
    await client_transport.send_all(b"\x16\x03\x01")  # bytes waiting change nothing
    with pytest.raises(HandshakeError) as excinfo:
        await handshake.run()
    check_error(excinfo.value, Reason.EVICTED, kind=ErrorKind.SYSCALL)
    assert handshake.failure is excinfo.value
    await assert_transport_closed(client_transport)


async def test_stop_mid_handshake_sends_nothing_more(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    server_transport, client_transport = memory_stream_pair()
    handshake = Handshake(server_transport, server_context)
    await client_transport.send_all(BioClient(client_context).client_hello())

    async def stop_when_waiting() -> None:
        await wait_all_tasks_blocked()  # our flight is out; waiting for the Finished
        handshake.stop(Reason.SHUTDOWN)
        handshake.stop(Reason.EVICTED)  # the first reason stands

    async with trio.open_nursery() as nursery:
        nursery.start_soon(stop_when_waiting)
        with pytest.raises(HandshakeError) as excinfo:
            await handshake.run()
    check_error(excinfo.value, Reason.SHUTDOWN, kind=ErrorKind.SYSCALL)
    # Our flight, and then only the end: no alert for a client that did nothing wrong.
    flight = await receive_until_eof(client_transport)
    assert flight.startswith(b"\x16\x03\x03")
    assert b"\x15\x03\x03" not in flight


async def test_stop_while_telling_the_client_keeps_the_reason(
    server_context: ssl.SSLContext,
) -> None:
    server_transport, client_transport = lockstep_stream_pair()
    handshake = Handshake(server_transport, server_context)

    async def plain_http_client() -> None:
        await client_transport.send_all(b"GET / HTTP/1.1\r\n\r\n")
        await wait_all_tasks_blocked()  # the server is stuck sending its 400 answer
        handshake.stop(Reason.SHUTDOWN)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(plain_http_client)
        with pytest.raises(HandshakeError) as excinfo:
            await handshake.run()
    check_error(excinfo.value, Reason.PLAIN_HTTP)


async def test_stop_after_completion_changes_nothing(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    server_transport, client_transport = memory_stream_pair()
    handshake = Handshake(server_transport, server_context)
    client = trio.SSLStream(client_transport, client_context, server_hostname="localhost")
    streams: list[trio_accept.TLSStream] = []

    async def serve() -> None:
        streams.append(await handshake.run())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        await client.do_handshake()
    handshake.stop(Reason.EVICTED)
    assert handshake.failure is None
    await client.send_all(b"ping")
    assert await streams[0].receive_some() == b"ping"
