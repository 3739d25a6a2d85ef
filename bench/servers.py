"""The benchmark's TLS servers, one per process.

    python bench/servers.py NAME --port P --cert F --key F --workload W [--bulk-bytes N]

Every server listens on 127.0.0.1 with the same certificate and TLS 1.3 only, and prints
one line, ``PORT PID``, once it accepts connections: PID is the process that serves,
whose CPU time and memory the runner reads from /proc (for ``openssl`` it is the
``openssl s_server`` child of this script; for the others, this process). It then serves
until it is terminated.

The Python servers all speak the same small protocol, the one ``openssl s_server -WWW``
speaks, so that every workload works against every server:

- ``GET /bulk HTTP/1.0`` -> an HTTP/1.0 header, then ``--bulk-bytes`` zero bytes, sent in
  64 KiB writes; any other ``GET`` -> the header and ``ok\\n``; then close (close_notify).
- Anything else (an upload) is read and discarded until the client's close_notify or
  EOF; then close.
- Nothing at all (``s_time -new``, idle connections): wait for EOF; then close.

``--workload`` matters only to ``openssl s_server``: ``-WWW`` (serving files from a
temporary directory holding ``bulk`` and ``small``) for every workload but ``upload``,
for which it runs in its default mode (received data written to /dev/null).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import resource
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import FrameType
from typing import NoReturn

import anyio
import trio
import uvloop
from anyio.abc import AnyByteStream, SocketAttribute
from anyio.streams.tls import TLSListener, TLSStream

import trio_accept

SERVERS = ("trio_accept", "trio", "anyio", "asyncio", "uvloop", "openssl")
WORKLOADS = ("handshake", "bulk", "upload", "idle")

HOST = "127.0.0.1"
BACKLOG = 4096  # what trio, anyio and s_server use (SOMAXCONN); asyncio defaults to 100
CHUNK = 64 * 1024
BULK_PATH = b"/bulk"
RESPONSE_HEADER = b"HTTP/1.0 200 ok\r\nContent-type: text/plain\r\n\r\n"  # s_server -WWW's
SMALL_BODY = b"ok\n"
MAX_REQUEST = 4096
READY_TIMEOUT = 10.0

Receive = Callable[[], Awaitable[bytes | bytearray]]
Send = Callable[[bytes], Awaitable[None]]


def tls13_context(cert: str, key: str) -> ssl.SSLContext:
    """The one server context of the Python servers: TLS 1.3 only, otherwise defaults."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(cert, key)
    return context


def ready(port: int, pid: int) -> None:
    print(port, pid, flush=True)


async def speak(receive: Receive, send: Send, bulk_bytes: int) -> None:
    """The protocol of every Python server (see the module docstring)."""
    head = b""
    while b"\r\n\r\n" not in head:
        data = await receive()
        if not data:
            return
        head += data
        if not head.startswith(b"GET "[: len(head)]) or len(head) > MAX_REQUEST:
            while await receive():  # an upload: discard it
                pass
            return
    path = head.split(b" ", 2)[1]
    await send(RESPONSE_HEADER)
    if path != BULK_PATH:
        await send(SMALL_BODY)
        return
    chunk = bytes(CHUNK)
    full, rest = divmod(bulk_bytes, CHUNK)
    for _ in range(full):
        await send(chunk)
    if rest:
        await send(chunk[:rest])


# --- trio_accept -------------------------------------------------------------------------


async def serve_trio_accept(context: ssl.SSLContext, port: int, bulk_bytes: int) -> None:
    async def handler(stream: trio_accept.TLSStream) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await speak(stream.receive_some, stream.send_all, bulk_bytes)

    async with trio_accept.open_server(handler, port, host=HOST, ssl_context=context) as server:
        ready(server.addresses[0][1], os.getpid())
        await trio.sleep_forever()


# --- trio: serve_ssl_over_tcp, the handshake in the handler ----------------------------


async def serve_trio(context: ssl.SSLContext, port: int, bulk_bytes: int) -> None:
    async def handler(stream: trio.SSLStream[trio.SocketStream]) -> None:
        try:
            await stream.do_handshake()
            await speak(stream.receive_some, stream.send_all, bulk_bytes)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await stream.aclose()  # close_notify, like the others

    async with trio.open_nursery() as nursery:
        listeners: list[trio.SSLListener[trio.SocketStream]] = await nursery.start(
            functools.partial(trio.serve_ssl_over_tcp, handler, port, context, host=HOST)
        )
        transport = listeners[0].transport_listener
        assert isinstance(transport, trio.SocketListener)
        ready(transport.socket.getsockname()[1], os.getpid())


# --- anyio: TLSListener on the trio backend ----------------------------------------------


async def serve_anyio(context: ssl.SSLContext, port: int, bulk_bytes: int) -> None:
    async def handler(stream: TLSStream) -> None:
        async def receive() -> bytes:
            try:
                return await stream.receive()
            except anyio.EndOfStream:
                return b""

        try:
            await speak(receive, stream.send, bulk_bytes)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        finally:
            with contextlib.suppress(
                anyio.BrokenResourceError, anyio.ClosedResourceError, OSError
            ):
                await stream.aclose()

    class QuietTLSListener(TLSListener):
        # anyio logs a traceback for every handshake whose peer hung up early -- that is
        # every `s_time -new` connection (it closes before reading the session tickets).
        # Measure TLS, not logging: just close, as the other servers do.
        @staticmethod
        async def handle_handshake_error(exc: BaseException, stream: AnyByteStream) -> None:
            await anyio.aclose_forcefully(stream)
            if not isinstance(exc, Exception):
                raise exc

    tcp = await anyio.create_tcp_listener(local_host=HOST, local_port=port, backlog=BACKLOG)
    listener = QuietTLSListener(tcp, context)
    ready(tcp.extra(SocketAttribute.local_port), os.getpid())
    await listener.serve(handler)


# --- asyncio and uvloop: asyncio.start_server(ssl=...) ----------------------------------


async def serve_asyncio(context: ssl.SSLContext, port: int, bulk_bytes: int) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def send(data: bytes) -> None:
            writer.write(data)
            await writer.drain()

        try:
            await speak(functools.partial(reader.read, CHUNK), send, bulk_bytes)
        except OSError:  # ssl.SSLError included
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    server = await asyncio.start_server(handler, HOST, port, ssl=context, backlog=BACKLOG)
    ready(server.sockets[0].getsockname()[1], os.getpid())
    async with server:
        await server.serve_forever()


# --- openssl s_server --------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def listening(port: int) -> bool:
    """Whether 127.0.0.1:port is in LISTEN state, from /proc/net/tcp (no connection made)."""
    local = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as table:
        return any(
            fields[1] == local and fields[3] == "0A"
            for fields in (line.split() for line in table)
            if len(fields) > 3  # noqa: PLR2004
        )


def serve_openssl(args: argparse.Namespace) -> None:
    port = args.port or free_port()
    cert, key = str(Path(args.cert).resolve()), str(Path(args.key).resolve())
    docroot = Path(tempfile.mkdtemp(prefix="bench-s_server-"))
    with open(docroot / "bulk", "w+b") as bulk:
        bulk.truncate(args.bulk_bytes)  # sparse: zeros, like the Python servers send
        # Read it once, into the page cache: s_server's first read of a file would pay
        # for filling the cache (~1.5 ns/byte here), where the Python servers send from
        # memory.
        while bulk.read(CHUNK * 16):
            pass
    (docroot / "small").write_bytes(SMALL_BODY)
    mode = [] if args.workload == "upload" else ["-WWW"]
    command = [
        "openssl", "s_server", "-accept", f"{HOST}:{port}", "-cert", cert,
        "-key", key, "-tls1_3", "-quiet", *mode,
        # Without these it rescans the system CA store on every handshake.
        "-no-CAfile", "-no-CApath", "-no-CAstore",
    ]  # fmt: skip
    # stdin: a pipe never written to (at EOF, s_server's default mode would spin on it).
    child = subprocess.Popen(
        command, cwd=docroot, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL
    )

    def stop(signum: int, frame: FrameType | None) -> NoReturn:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while not listening(port):
            if child.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"openssl s_server did not start (exit code {child.poll()})")
            time.sleep(0.01)
        ready(port, child.pid)
        child.wait()
    finally:
        child.terminate()
        try:
            child.wait(5)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        for name in ("bulk", "small"):
            (docroot / name).unlink()
        docroot.rmdir()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", choices=SERVERS)
    parser.add_argument("--port", type=int, default=0, help="0: pick a free one")
    parser.add_argument("--cert", required=True, help="PEM certificate chain")
    parser.add_argument("--key", required=True, help="PEM private key")
    parser.add_argument("--workload", choices=WORKLOADS, default="handshake")
    parser.add_argument("--bulk-bytes", type=int, default=256 * 1024 * 1024)
    args = parser.parse_args()

    # Room for 10,000 idle connections and more.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    if args.name == "openssl":
        serve_openssl(args)
        return
    context = tls13_context(args.cert, args.key)
    serve_args = (context, args.port, args.bulk_bytes)
    if args.name == "trio_accept":
        trio.run(serve_trio_accept, *serve_args)
    elif args.name == "trio":
        trio.run(serve_trio, *serve_args)
    elif args.name == "anyio":
        anyio.run(serve_anyio, *serve_args, backend="trio")
    elif args.name == "asyncio":
        asyncio.run(serve_asyncio(*serve_args))
    else:
        uvloop.run(serve_asyncio(*serve_args))


if __name__ == "__main__":
    main()
