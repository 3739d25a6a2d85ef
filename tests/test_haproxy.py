"""A real HAProxy in front of the listener, speaking the PROXY protocol to it.

HAProxy (Debian's ``haproxy`` package; ``nox -s interop`` installs it) runs on 127.0.0.1
with a configuration generated from the ones in ``docs/howto/proxy.rst``: what the docs
show is what runs here. A client connects through HAProxy; the handler must see that
client's own address and source port, as HAProxy saw them.

HAProxy gets its listening socket from us (``bind fd@N``): the socket is bound and
listening before HAProxy starts, so a client can connect at once (the kernel queues the
connection until HAProxy accepts it) and no port can be lost to a race. ``haproxy -c``
checks the configuration first, so a bad one fails with HAProxy's own message.
"""

from __future__ import annotations

import ast
import contextlib
import re
import shutil
import socket
import ssl
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import pytest
import trio
import trustme

from trio_accept import (
    Reason,
    Server,
    TLSStream,
    open_server,
)

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(shutil.which("haproxy") is None, reason="needs HAProxy (apt: haproxy)"),
]

DOCS: Final = Path(__file__).parent.parent / "docs" / "howto" / "proxy.rst"
#: A bound on every wait for HAProxy or a client: a safety net against a hang, never a
#: measurement.
PATIENCE: Final = 30.0


def docs_config(marker: str) -> str:
    """The code block that follows the comment ``.. <marker>`` in the how-to page."""
    lines = DOCS.read_text().splitlines()
    start = lines.index(f".. {marker}")
    assert lines[start + 2] == ".. code-block:: text", "the marker must precede the block"
    block: list[str] = []
    for line in lines[start + 4 :]:
        if line and not line.startswith("   "):
            break
        block.append(line[3:])
    return "\n".join(block).strip() + "\n"


PASSTHROUGH: Final = docs_config("the HAProxy configuration below is run by tests/test_haproxy.py")
TERMINATING: Final = docs_config(
    "the TLS-terminating HAProxy configuration below is run by tests/test_haproxy.py"
)


def replace(config: str, old: str, new: str) -> str:
    """``str.replace`` that insists on finding ``old``: the docs and the test must agree."""
    assert old in config, f"{old!r} is not in the configuration any more"
    return config.replace(old, new)


@contextlib.asynccontextmanager
async def running_haproxy(tmp_path: Path, config: str) -> AsyncGenerator[int]:
    """Run HAProxy with ``config`` (its ``bind :443`` replaced by our socket); yields the
    port clients connect to. HAProxy is stopped by its PID when the block ends."""
    front = socket.create_server(("127.0.0.1", 0))
    with front:
        port: int = front.getsockname()[1]
        config = replace(config, "bind :443", f"bind fd@{front.fileno()}")
        path = tmp_path / "haproxy.cfg"
        path.write_text(config)
        command = ["haproxy", "-f", str(path)]
        check = await trio.run_process(
            [*command, "-c"],
            pass_fds=[front.fileno()],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        assert check.returncode == 0, check.stderr.decode() + check.stdout.decode()
        log = (tmp_path / "haproxy.log").open("wb")
        with log:
            process = await trio.lowlevel.open_process(
                [*command, "-db"],
                pass_fds=[front.fileno()],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
    # Our copy of the socket is closed: if HAProxy dies, clients are refused, not hung.
    try:
        yield port
    finally:
        if process.poll() is not None:
            log_text = (tmp_path / "haproxy.log").read_text()
            raise AssertionError(f"HAProxy exited early ({process.returncode}):\n{log_text}")
        with trio.CancelScope(shield=True):
            process.terminate()  # SIGTERM to that PID: HAProxy's hard stop
            with trio.move_on_after(PATIENCE):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()


@contextlib.asynccontextmanager
async def recording_server(
    server_context: ssl.SSLContext,
) -> AsyncGenerator[tuple[Server, trio.MemoryReceiveChannel[dict[str, Any]]]]:
    """Our listener with ``proxy_protocol=True`` on 127.0.0.1. Its handler answers each
    message with what it sees of the connection, and puts the same on a channel."""
    send, receive = trio.open_memory_channel[dict[str, Any]](100)

    async def handler(stream: TLSStream) -> None:
        info = stream.info
        proxy = info.proxy
        assert proxy is not None
        ssl_field = proxy.ssl
        seen: dict[str, Any] = {
            "client_address": info.client_address,
            "peer_address": info.peer_address,
            "version": proxy.version,
            "command": proxy.command,
            "destination": proxy.destination,
            "tlv_types": sorted({type_ for type_, _ in proxy.tlvs}),
            "unique_id": proxy.unique_id,
            "authority": proxy.authority,
            "alpn": proxy.alpn,
            "ssl": None
            if ssl_field is None
            else {
                "client_ssl": ssl_field.client_ssl,
                "client_certificate": ssl_field.client_certificate,
                "verified": ssl_field.verified,
                "version": ssl_field.version,
                "cipher": ssl_field.cipher,
                "common_name": ssl_field.common_name,
            },
            "server_name": info.server_name,
        }
        send.send_nowait(seen)
        if proxy.command == "LOCAL":
            return  # a health check: nothing to say
        if await stream.receive_some():
            await stream.send_all(repr(seen).encode())

    async with open_server(
        handler, 0, host="127.0.0.1", ssl_context=server_context, proxy_protocol=True
    ) as server:
        yield server, receive
        # Never a bad header from HAProxy. (Other failures can happen when HAProxy is
        # stopped in the middle of a health check.)
        assert Reason.PROXY_PROTOCOL not in server.stats.failed


def client_through(
    port: int, context: ssl.SSLContext, server_hostname: str = "localhost"
) -> tuple[tuple[str, int], dict[str, Any]]:
    """Connect to HAProxy, handshake, send one message; returns our own address (as
    HAProxy sees it) and the server's answer. Blocking: run it in a thread."""
    with socket.create_connection(("127.0.0.1", port), timeout=PATIENCE) as raw:
        own: tuple[str, int] = raw.getsockname()
        with context.wrap_socket(raw, server_hostname=server_hostname) as tls:
            tls.sendall(b"who am I?")
            answer = b""
            while chunk := tls.recv(4096):
                answer += chunk
    seen: dict[str, Any] = ast.literal_eval(answer.decode())
    return own, seen


async def record_of(
    records: trio.MemoryReceiveChannel[dict[str, Any]], answer: dict[str, Any]
) -> dict[str, Any]:
    """The handler's record of the connection that got ``answer``: HAProxy's health
    checks come and go in between."""
    with trio.fail_after(PATIENCE):
        while (seen := await records.receive()) != answer:
            pass
    return seen


@pytest.mark.parametrize(
    ("server_options", "version"),
    [
        pytest.param(None, 2, id="send-proxy-v2-as-documented"),
        pytest.param("send-proxy", 1, id="send-proxy-v1"),
    ],
)
async def test_haproxy_relays_the_client_address(
    server_options: str | None,
    version: int,
    tmp_path: Path,
    server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
) -> None:
    async with recording_server(server_context) as (server, records):
        our_port = server.addresses[0][1]
        config = replace(PASSTHROUGH, "127.0.0.1:8443", f"127.0.0.1:{our_port}")
        if server_options is not None:
            config = replace(config, "send-proxy-v2", server_options)
        async with running_haproxy(tmp_path, config) as haproxy_port:
            own, answer = await trio.to_thread.run_sync(
                client_through, haproxy_port, client_context
            )
            seen = await record_of(records, answer)
    # The client's own address and source port, as HAProxy saw them: not HAProxy's.
    assert seen["client_address"] == own
    assert seen["peer_address"][0] == "127.0.0.1"
    assert seen["peer_address"] != own
    assert seen["destination"] == ("127.0.0.1", haproxy_port)
    assert seen["version"] == version
    assert seen["command"] == "PROXY"
    assert seen["server_name"] == "localhost"
    assert seen["tlv_types"] == []


@pytest.mark.parametrize(
    ("server_options", "version", "command"),
    [
        pytest.param(None, 2, "LOCAL", id="send-proxy-v2-as-documented"),
        pytest.param("send-proxy", 1, "PROXY", id="send-proxy-v1"),
    ],
)
async def test_haproxy_health_checks(
    server_options: str | None,
    version: int,
    command: str,
    tmp_path: Path,
    server_context: ssl.SSLContext,
) -> None:
    """The documented ``check check-ssl``: a header, then a real handshake. Version 2
    says LOCAL; version 1 has no such word, and HAProxy sends a PROXY line with the
    check connection's own addresses instead, as the specification suggests."""
    async with recording_server(server_context) as (server, records):
        our_port = server.addresses[0][1]
        config = replace(PASSTHROUGH, "127.0.0.1:8443", f"127.0.0.1:{our_port}")
        config = replace(config, "check-ssl", "check-ssl inter 100")  # not the 2 s default
        if server_options is not None:
            config = replace(config, "send-proxy-v2", server_options)
        async with running_haproxy(tmp_path, config):
            with trio.fail_after(PATIENCE):
                seen = await records.receive()
            assert server.stats.failed == {}
    assert (seen["version"], seen["command"]) == (version, command)
    # Either way the client address is the real peer: HAProxy's check connection.
    assert seen["client_address"] == seen["peer_address"]
    assert seen["client_address"][0] == "127.0.0.1"
    if command == "PROXY":
        assert seen["destination"] == ("127.0.0.1", our_port)
    assert server.stats.failed == {}


async def test_haproxy_tlvs_in_tcp_mode(
    tmp_path: Path, server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    """CRC32C (computed by HAProxy, verified by us), the unique ID of the frontend's
    ``unique-id-format``, and the SSL field, empty since HAProxy terminated no TLS."""
    async with recording_server(server_context) as (server, records):
        our_port = server.addresses[0][1]
        config = replace(PASSTHROUGH, "127.0.0.1:8443", f"127.0.0.1:{our_port}")
        config = replace(
            config, "send-proxy-v2", "send-proxy-v2 proxy-v2-options crc32c,unique-id,ssl"
        )
        config = replace(
            config,
            "    default_backend trio_accept",
            "    unique-id-format %ci:%cp\n    default_backend trio_accept",
        )
        async with running_haproxy(tmp_path, config) as haproxy_port:
            own, answer = await trio.to_thread.run_sync(
                client_through, haproxy_port, client_context
            )
            seen = await record_of(records, answer)
    assert seen["client_address"] == own
    assert seen["tlv_types"] == [0x03, 0x05, 0x20]  # CRC32C, unique ID, SSL
    assert seen["unique_id"] == f"{own[0]}:{own[1]}".encode()
    assert seen["ssl"] == {
        "client_ssl": False,
        "client_certificate": False,
        "verified": False,
        "version": None,
        "cipher": None,
        "common_name": None,
    }
    assert seen["alpn"] is None


async def test_haproxy_terminating_tls_describes_the_clients_session(
    tmp_path: Path,
    ca: trustme.CA,
    server_cert: trustme.LeafCert,
    server_context: ssl.SSLContext,
) -> None:
    """HAProxy terminates the client's TLS (with a client certificate) and opens its own
    TLS connection to us, telling us about the client's session in the header."""
    # HAProxy's certificate for clients, and the CA it checks client certificates with.
    front_ca = trustme.CA()
    front_pem = tmp_path / "site.pem"
    front_cert = front_ca.issue_cert("proxy.example")
    front_pem.write_bytes(
        b"".join(blob.bytes() for blob in front_cert.cert_chain_pems)
        + front_cert.private_key_pem.bytes()
    )
    clients_ca = trustme.CA()
    clients_ca_path = tmp_path / "clients-ca.pem"
    clients_ca.cert_pem.write_to_path(str(clients_ca_path))
    app_ca_path = tmp_path / "app-ca.pem"  # the CA of our listener's certificate
    ca.cert_pem.write_to_path(str(app_ca_path))
    del server_cert
    client_context = ssl.create_default_context()
    front_ca.configure_trust(client_context)
    client_context.set_alpn_protocols(["http/1.1"])
    clients_ca.issue_cert("alice@example.org", common_name="alice").configure_cert(client_context)
    async with recording_server(server_context) as (server, records):
        our_port = server.addresses[0][1]
        config = replace(PASSTHROUGH, "127.0.0.1:8443", f"127.0.0.1:{our_port}")
        # The documented TLS-terminating frontend and backend, instead of the plain ones.
        config = config[: config.index("frontend https")] + TERMINATING
        config = replace(config, "127.0.0.1:8443", f"127.0.0.1:{our_port}")
        for documented, ours in (
            ("/etc/haproxy/site.pem", front_pem),
            ("/etc/haproxy/clients-ca.pem", clients_ca_path),
            ("/etc/haproxy/app-ca.pem", app_ca_path),
        ):
            config = replace(config, documented, str(ours))
        async with running_haproxy(tmp_path, config) as haproxy_port:
            own, answer = await trio.to_thread.run_sync(
                client_through, haproxy_port, client_context, "proxy.example"
            )
            seen = await record_of(records, answer)
    assert seen["client_address"] == own
    assert seen["server_name"] == "localhost"  # HAProxy's own SNI to us (sni str(...))
    assert seen["authority"] == "proxy.example"  # the client's SNI to HAProxy
    assert seen["alpn"] == b"http/1.1"
    ssl_field = seen["ssl"]
    assert ssl_field["client_ssl"]
    assert ssl_field["client_certificate"]
    assert ssl_field["verified"]
    assert ssl_field["common_name"] == "alice"
    assert ssl_field["version"] in ("TLSv1.2", "TLSv1.3")
    assert re.fullmatch(r"[A-Z0-9_-]+", ssl_field["cipher"])
    assert 0x03 in seen["tlv_types"]  # CRC32C, verified by the parser
