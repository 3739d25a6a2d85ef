"""Real sockets on 127.0.0.1, real peers: Python's ssl module and the openssl binary."""

from __future__ import annotations

import socket
import ssl
import subprocess
from typing import TYPE_CHECKING, Final

import pytest
import trio
import trustme
from helpers import MALFORMED, open_s_server, receive_until_eof

import trio_accept
from trio_accept import Reason

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

pytestmark = pytest.mark.interop

# Safety nets against a hung peer (real clock); every exchange takes milliseconds.
GUARD: Final = 20

VERSIONS: Final = [
    pytest.param(ssl.TLSVersion.TLSv1_3, "TLSv1.3", id="tls1.3"),
    pytest.param(ssl.TLSVersion.TLSv1_2, "TLSv1.2", id="tls1.2"),
]


async def start_echo_server(
    nursery: trio.Nursery,
    server_context: ssl.SSLContext,
    infos: list[trio_accept.TLSInfo],
) -> int:
    """Serve on 127.0.0.1: echo the first chunk back, then close. Returns the port."""

    async def handler(tcp_stream: trio.SocketStream) -> None:
        stream = await trio_accept.accept(tcp_stream, server_context)
        infos.append(stream.info)
        async with stream:
            await stream.send_all(await stream.receive_some())

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    await nursery.start(trio.serve_listeners, handler, listeners)
    port: int = listeners[0].socket.getsockname()[1]
    return port


def blocking_echo(port: int, context: ssl.SSLContext, message: bytes) -> bytes:
    """Python's ssl module as a client: send, read the echo, then expect close_notify."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=GUARD) as sock,
        context.wrap_socket(sock, server_hostname="localhost", suppress_ragged_eofs=False) as tls,
    ):
        tls.sendall(message)
        echoed = b""
        while len(echoed) < len(message):
            echoed += tls.recv(4096)
        assert tls.recv(4096) == b""  # close_notify; a ragged EOF would raise
        return echoed


@pytest.mark.parametrize(("version", "name"), VERSIONS)
async def test_python_ssl_client(
    version: ssl.TLSVersion,
    name: str,
    server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
) -> None:
    client_context.maximum_version = version
    infos: list[trio_accept.TLSInfo] = []
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            port = await start_echo_server(nursery, server_context, infos)
            echoed = await trio.to_thread.run_sync(
                blocking_echo, port, client_context, b"hello over TLS"
            )
            nursery.cancel_scope.cancel()
    assert echoed == b"hello over TLS"
    [info] = infos
    assert info.version == name
    assert info.peer_address[0] == "127.0.0.1"
    assert info.server_name == "localhost"


@pytest.mark.parametrize(("version", "name"), VERSIONS)
async def test_openssl_s_client(
    version: ssl.TLSVersion,
    name: str,
    ca: trustme.CA,
    server_context: ssl.SSLContext,
    tmp_path: Path,
) -> None:
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(ca_file)
    version_option = ["-tls1_2"] if version is ssl.TLSVersion.TLSv1_2 else []
    infos: list[trio_accept.TLSInfo] = []
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            port = await start_echo_server(nursery, server_context, infos)
            # -ign_eof: keep reading after stdin's EOF, until we close (with close_notify).
            # -verify_return_error: abort the handshake if our certificate does not verify.
            result = await trio.run_process(
                [
                    "openssl", "s_client",
                    "-connect", f"127.0.0.1:{port}",
                    "-servername", "localhost",
                    "-CAfile", str(ca_file),
                    "-verify_return_error",
                    "-ign_eof",
                    *version_option,
                ],
                stdin=b"hello\n",
                capture_stdout=True,
                capture_stderr=True,
            )  # fmt: skip
            nursery.cancel_scope.cancel()
    output = result.stdout.decode()
    assert "Verify return code: 0 (ok)" in output
    assert f"Protocol  : {name}" in output
    assert "\nhello\n" in output
    [info] = infos
    assert info.version == name
    assert info.peer_address[0] == "127.0.0.1"


# -- alert parity with openssl s_server -------------------------------------------------


@pytest.fixture
async def s_server_port(server_cert: trustme.LeafCert, tmp_path: Path) -> AsyncIterator[int]:
    """``openssl s_server`` with our server certificate, listening on 127.0.0.1."""
    pem = tmp_path / "server.pem"
    server_cert.private_key_and_cert_chain_pem.write_to_path(pem)
    async with open_s_server(pem) as port:
        yield port


async def answer_to(port: int, data: bytes) -> bytes:
    """Connect, send ``data``, shut down our side, and return all the server answers."""
    with trio.fail_after(GUARD):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(data)
            await stream.send_eof()
            return await receive_until_eof(stream)


async def test_same_answers_as_openssl_s_server(
    s_server_port: int, server_context: ssl.SSLContext
) -> None:
    send_reason, receive_reason = trio.open_memory_channel[Reason](len(MALFORMED))

    async def handler(tcp_stream: trio.SocketStream) -> None:
        # OpenSSL has no plain-HTTP answer: compare alerts only.
        with pytest.raises(trio_accept.HandshakeError) as excinfo:
            await trio_accept.accept(tcp_stream, server_context, plain_http_response=None)
        await send_reason.send(excinfo.value.reason)

    ours: dict[str, bytes] = {}
    theirs: dict[str, bytes] = {}
    reasons: dict[str, Reason] = {}
    async with trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        await nursery.start(trio.serve_listeners, handler, listeners)
        our_port: int = listeners[0].socket.getsockname()[1]
        for case in MALFORMED:
            ours[case.name] = await answer_to(our_port, case.data)
            with trio.fail_after(GUARD):
                reasons[case.name] = await receive_reason.receive()
            theirs[case.name] = await answer_to(s_server_port, case.data)
        nursery.cancel_scope.cancel()
    assert ours == theirs
    assert ours == {case.name: case.alert for case in MALFORMED}
    assert reasons == {case.name: case.reason for case in MALFORMED}


async def read_until(stdout: trio.abc.ReceiveStream, marker: bytes) -> bytes:
    """Read a process's output until ``marker`` shows up (or it ends)."""
    seen = b""
    while marker not in seen:
        chunk = await stdout.receive_some()
        if not chunk:
            break
        seen += chunk
    return seen


async def test_key_update_while_session_tickets_are_held(
    server_context: ssl.SSLContext, ca: trustme.CA, tmp_path: Path
) -> None:
    # TLS 1.3: the engine holds our session tickets until the data phase has something
    # to send. Here the client's first act after the handshake is a KeyUpdate that asks
    # for ours in return (s_client's "K" command), before we ever wrote. OpenSSL queues
    # its answering KeyUpdate for our next write, so that write must carry the tickets
    # (under the old keys) ahead of the KeyUpdate and the data (under the new ones), or
    # the client cannot decrypt what follows.
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    received: list[bytes] = []
    got_before = trio.Event()

    async def handler(tcp_stream: trio.SocketStream) -> None:
        stream = await trio_accept.accept(tcp_stream, server_context)
        async with stream:
            # Read two lines before writing anything: the KeyUpdate arrives meanwhile.
            while b"after\n" not in b"".join(received):
                data = await stream.receive_some()
                if not data:
                    return
                received.append(data)
                got_before.set()
            await stream.send_all(b"echo: " + b"".join(received))

    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
            await nursery.start(trio.serve_listeners, handler, listeners)
            port = listeners[0].socket.getsockname()[1]
            # No -quiet/-ign_eof: s_client only obeys commands ("K") without them.
            command = ["openssl", "s_client", "-tls1_3", "-connect", f"127.0.0.1:{port}"]
            command += ["-servername", "localhost", "-CAfile", str(ca_file)]
            process = await trio.lowlevel.open_process(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
            try:
                assert process.stdin is not None
                assert process.stdout is not None
                await read_until(process.stdout, b"Verify return code: 0 (ok)")
                # One input line per read of s_client's: a command must start a read.
                await process.stdin.send_all(b"before\n")
                await got_before.wait()
                await process.stdin.send_all(b"K\n")
                output = await read_until(process.stdout, b"KEYUPDATE")
                await process.stdin.send_all(b"after\n")
                output += await read_until(process.stdout, b"echo: before\nafter\n")
            finally:
                process.kill()
                await process.wait()
            nursery.cancel_scope.cancel()
    assert b"KEYUPDATE" in output
    assert b"echo: before\nafter\n" in output
    assert b"bad record mac" not in output.lower()
