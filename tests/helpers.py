"""Helpers shared by the driver tests (test_stream, test_handshake, test_interop) and the
hostile suite (tests/hostile)."""

from __future__ import annotations

import re
import ssl
import subprocess
from collections.abc import AsyncGenerator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import trio

import trio_accept
from trio_accept import ErrorKind, Reason, ServerStats
from trio_accept._handshake import CLOSE_TIMEOUT

if TYPE_CHECKING:
    from pathlib import Path

    import trustme

#: A factory of two connected transport streams: memory_stream_pair or lockstep_stream_pair.
TransportPair = Callable[[], tuple[trio.abc.Stream, trio.abc.Stream]]

#: The alert OpenSSL sends for a record it cannot use: fatal (2) unexpected_message (10).
UNEXPECTED_MESSAGE_ALERT: Final = b"\x15\x03\x03\x00\x02\x02\x0a"
#: Fatal (2) record_overflow (22).
RECORD_OVERFLOW_ALERT: Final = b"\x15\x03\x03\x00\x02\x02\x16"
#: Fatal (2) decode_error (50): OpenSSL 3's answer to EOF in the middle of a record.
DECODE_ERROR_ALERT: Final = b"\x15\x03\x03\x00\x02\x02\x32"


@dataclass(frozen=True, slots=True)
class Malformed:
    """A first flight that is not a usable ClientHello, and what OpenSSL makes of it.

    The client sends ``data``, then shuts down its sending side.
    """

    name: str
    data: bytes
    reason: Reason
    alert: bytes  # what the server sends back before closing (b"": nothing)
    kind: ErrorKind = ErrorKind.SSL


# OpenSSL sends no alert for bytes that do not look like TLS at all ("Doesn't look like
# TLS - don't send an alert", ssl3_get_record), and a fatal alert for broken TLS.
# Each input is exactly what OpenSSL reads before it gives up (a whole record, or a
# bare header when the header alone is fatal), so a peer that closes its socket does
# not turn unread bytes into a TCP reset.
MALFORMED: Final = (
    Malformed("plain-http", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", Reason.PLAIN_HTTP, b""),
    # OpenSSL knows only GET/POST/HEAD/PUT/CONNECT; the engine recognises the rest.
    Malformed("plain-http-options", b"OPTIONS * HTTP/1.1\r\n\r\n", Reason.PLAIN_HTTP, b""),
    Malformed(
        "garbage", bytes.fromhex("deadbeef0badf00d5ca1ab1e00112233"), Reason.WRONG_VERSION, b""
    ),
    Malformed("ssh-banner", b"SSH-2.0-OpenSSH_9.6\r\n", Reason.WRONG_VERSION, b""),
    Malformed(
        "record-garbage-body",
        b"\x16\x03\x01\x00\x10" + b"A" * 16,
        Reason.PROTOCOL_ERROR,
        UNEXPECTED_MESSAGE_ALERT,
    ),
    Malformed(
        "oversized-record", b"\x16\x03\x01\xff\xff", Reason.OVERSIZED, RECORD_OVERFLOW_ALERT
    ),
    # Not a byte: OpenSSL still queues an alert, which a half-closed client can read.
    Malformed("eof", b"", Reason.EOF, DECODE_ERROR_ALERT, ErrorKind.SYSCALL),
)


def server_stats(
    accepted: int,
    completed: int,
    failed: Mapping[Reason, int],
    active: int = 0,
    broken: Mapping[Reason, int] | None = None,
) -> ServerStats:
    """A consistent :class:`ServerStats` from the few counts a test cares about."""
    return ServerStats(
        accepted=accepted,
        handshakes_in_flight=accepted - completed - sum(failed.values()),
        silent=0,
        completed=completed,
        failed=dict(failed),
        active_connections=active,
        closed=completed - active,
        idle_closed=0,
        handler_errors=0,
        accept_errors=0,
        broken=dict(broken or {}),
    )


async def tcp_stream_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    """Two connected TCP streams on 127.0.0.1 (server end, client end): real sockets with
    real kernel buffers, for the driver's socket path."""
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    async with listener:
        port = listener.socket.getsockname()[1]
        client = await trio.open_tcp_stream("127.0.0.1", port)
        server = await listener.accept()
    return server, client


async def tls_pair(
    server_transport: trio.abc.Stream,
    client_transport: trio.abc.Stream,
    server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
    *,
    server_hostname: str | None = "localhost",
    https_compatible: bool = False,
    tolerate_ragged_eof: bool = False,
    close_timeout: float = CLOSE_TIMEOUT,
) -> tuple[trio_accept.TLSStream, trio.SSLStream[trio.abc.Stream]]:
    """Run ``accept()`` and a trio client handshake concurrently; return both ends."""
    client = trio.SSLStream(
        client_transport,
        client_context,
        server_hostname=server_hostname,
        https_compatible=https_compatible,
    )
    servers: list[trio_accept.TLSStream] = []

    async def serve() -> None:
        servers.append(
            await trio_accept.accept(
                server_transport,
                server_context,
                tolerate_ragged_eof=tolerate_ragged_eof,
                close_timeout=close_timeout,
            )
        )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        await client.do_handshake()
    [server] = servers
    return server, client


async def receive_until_eof(stream: trio.abc.ReceiveStream) -> bytes:
    """Everything the peer sends until it closes; a broken transport counts as closed."""
    received = bytearray()
    try:
        while data := await stream.receive_some():
            received += data
    except trio.BrokenResourceError:
        pass
    return bytes(received)


def replace_certificate(leaf: trustme.LeafCert, cert: Path, key: Path) -> None:
    """Put a new certificate chain and key in place, each file replaced atomically (as a
    deployment tool would), for the reload tests."""
    for path, data in (
        (cert, b"".join(blob.bytes() for blob in leaf.cert_chain_pems)),
        (key, leaf.private_key_pem.bytes()),
    ):
        temporary = path.with_suffix(".new")
        temporary.write_bytes(data)
        temporary.replace(path)


async def reap(process: trio.Process) -> None:
    """Kill ``process`` if it still runs, wait for it, close its pipes."""
    with trio.CancelScope(shield=True):
        if process.returncode is None:
            process.kill()
        await process.wait()
        for pipe in (process.stdin, process.stdout, process.stderr):
            if pipe is not None:
                await pipe.aclose()


#: A safety net for openssl s_server to start listening (it takes milliseconds).
S_SERVER_START_GUARD: Final = 20
_S_SERVER_ACCEPT: Final = re.compile(rb"^ACCEPT .*:(\d+)\r?$", re.MULTILINE)


@asynccontextmanager
async def open_s_server(pem: Path, *options: str) -> AsyncGenerator[int]:
    """Run ``openssl s_server`` on 127.0.0.1 with the key and certificate chain in
    ``pem`` (and ``options``); yields its port.

    It picks a free port itself (``-accept 127.0.0.1:0``) and names it in its ``ACCEPT``
    line, so there is neither a port race nor readiness polling. Its output is drained
    while it runs (a few lines per connection), its stdin stays open (at EOF it would
    drop its connection), and it is killed and reaped on the way out.
    """
    process = await trio.lowlevel.open_process(
        [
            "openssl", "s_server",
            "-accept", "127.0.0.1:0",
            "-cert", str(pem),
            "-key", str(pem),
            "-no-CAfile", "-no-CApath", "-no-CAstore",
            *options,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        stdout = process.stdout
        assert stdout is not None
        output = bytearray()
        with trio.fail_after(S_SERVER_START_GUARD):
            while (match := _S_SERVER_ACCEPT.search(output)) is None:
                data = await stdout.receive_some()
                assert data, f"openssl s_server exited: {output.decode(errors='replace')}"
                output += data
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_drain, stdout)
            yield int(match.group(1))
            nursery.cancel_scope.cancel()
    finally:
        await reap(process)


async def _drain(stream: trio.abc.ReceiveStream) -> None:
    while await stream.receive_some():
        pass
