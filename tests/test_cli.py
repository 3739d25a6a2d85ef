"""The ``trio-accept`` command: argument checks in-process, and ``serve`` end to end as a
user runs it (a subprocess, real signals, real clients)."""

from __future__ import annotations

import datetime
import json
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

import pytest
import trio
import trustme
from clitools import (
    COMMAND,
    PROCESS_DEADLINE,
    LineReader,
    Serve,
    connect,
    echo_line,
    echo_once,
    listening_socket,
    notify_socket,
    plain_http,
    read_all,
    reap,
    running,
    serve,
    socket_activated,
    trusting,
)
from cryptography.hazmat.primitives import serialization
from helpers import replace_certificate

from trio_accept._cli import build_parser, load_handler, main, stats_line
from trio_accept._listener import ServerStats
from trio_accept._process import SetupError
from trio_accept._settings import DEFAULT_HOST, DEFAULT_PORT, load_settings


@pytest.fixture(autouse=True)
def _restore_root_logger() -> Iterator[None]:
    """``main()`` configures logging; do not let it leak into other tests."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


# -- arguments (in-process) --------------------------------------------------------------


def test_serve_defaults_to_loopback_8443() -> None:
    settings = load_settings(build_parser().parse_args(["serve"]))
    assert (settings.host, settings.port) == (DEFAULT_HOST, DEFAULT_PORT) == ("127.0.0.1", 8443)
    assert settings.cert is None
    assert settings.key is None
    assert settings.dev_ca is None
    assert settings.handler == "echo"
    assert settings.workers == 1


def test_serve_options() -> None:
    args = build_parser().parse_args(
        [
            *("serve", "--host", "::", "--port", "0"),
            *("--cert", "c.pem", "--key", "k.pem", "--dev-ca", "ca-dir"),
        ]
    )
    settings = load_settings(args)
    assert (settings.host, settings.port) == ("::", 0)
    assert (settings.cert, settings.key, settings.dev_ca) == (
        Path("c.pem"),
        Path("k.pem"),
        Path("ca-dir"),
    )


def test_a_command_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2
    assert "COMMAND" in capsys.readouterr().err


@pytest.mark.parametrize("given", ["--cert", "--key"])
def test_cert_and_key_go_together(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, given: str
) -> None:
    pem = tmp_path / "file.pem"
    pem.write_text("unused")
    dev_ca = tmp_path / "dev-ca"
    assert main(["serve", given, str(pem), "--dev-ca", str(dev_ca)]) == 2
    assert "cert (--cert) and key (--key) go together" in capsys.readouterr().err
    assert not dev_ca.exists()


def test_missing_certificate_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    key = tmp_path / "key.pem"
    key.write_text("unused")
    missing = tmp_path / "missing.pem"
    assert main(["serve", "--cert", str(missing), "--key", str(key)]) == 2
    err = capsys.readouterr().err
    assert f"{missing}: no such file (the certificate)" in err
    assert "Traceback" not in err


def test_missing_key_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    server_cert = trustme.CA().issue_cert("localhost")
    cert = tmp_path / "cert.pem"
    server_cert.cert_chain_pems[0].write_to_path(str(cert))
    missing = tmp_path / "missing-key.pem"
    assert main(["serve", "--cert", str(cert), "--key", str(missing)]) == 2
    assert f"{missing}: no such file (the private key)" in capsys.readouterr().err


def test_unloadable_certificate(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("not a certificate\n")
    key.write_text("not a key\n")
    assert main(["serve", "--cert", str(cert), "--key", str(key)]) == 2
    err = capsys.readouterr().err
    assert f"cannot load the certificate {cert} with the key {key}" in err
    assert "Traceback" not in err


def test_unusable_dev_ca_directory(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    assert main(["serve", "--dev-ca", str(not_a_directory)]) == 2
    assert f"cannot load the dev CA in {not_a_directory}" in capsys.readouterr().err


def test_port_in_use(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        status = main(["serve", "--port", str(port), "--dev-ca", str(tmp_path)])
    assert status == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1 port {port}" in err
    assert "Traceback" not in err


# -- serve end to end ----------------------------------------------------------------------


async def test_serve_with_dev_certificates(tmp_path: Path) -> None:
    ca_file = tmp_path / "dev-ca.pem"
    async with serve(["--dev-ca", str(tmp_path)]) as server:
        port = server.port
        assert "dev certificate for localhost, 127.0.0.1, ::1" in server.description
        # The banner: where the CA is, and lines to paste that use it.
        assert server.banner_line("dev CA:") == f"dev CA: {ca_file}"
        openssl_line = shlex.split(server.banner_line("openssl"))
        assert openssl_line[:4] == ["openssl", "s_client", "-connect", f"localhost:{port}"]
        assert openssl_line[openssl_line.index("-CAfile") + 1] == str(ca_file)
        curl_line = shlex.split(server.banner_line("curl"))
        curl_ca = Path(curl_line[curl_line.index("--cacert") + 1])
        assert curl_ca == ca_file
        assert (await trio.Path(curl_ca).read_bytes()).startswith(b"-----BEGIN CERTIFICATE-----")
        assert curl_line[-1] == f"https://localhost:{port}/"

        client_context = trusting(ca_file)
        echoed, _ = await trio.to_thread.run_sync(echo_once, port, client_context)
        assert echoed == b"hello\n"

        response = await trio.to_thread.run_sync(plain_http, port)
        assert response.startswith(b"HTTP/1.1 400 ")

        # An idle client, connected when the shutdown begins, gets a clean close.
        idle = await trio.to_thread.run_sync(connect, port, client_context)
        with idle:
            assert await trio.to_thread.run_sync(echo_line, idle, b"still here\n") == (
                b"still here\n"
            )
            status, log = await server.stop(signal.SIGTERM)
            assert status == 0
            # close_notify: b"" (a ragged EOF would raise SSLEOFError).
            assert await trio.to_thread.run_sync(idle.recv, 4096) == b""
    assert "SIGTERM: shutting down gracefully" in log
    assert "stopping now" not in log
    assert "stopped" in log
    assert "Traceback" not in log


@pytest.mark.interop
async def test_openssl_s_client_echoes(tmp_path: Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    ca_file = tmp_path / "dev-ca.pem"
    async with serve(["--dev-ca", str(tmp_path)]) as server:
        client = await trio.lowlevel.open_process(
            [
                *(openssl, "s_client", "-connect", f"127.0.0.1:{server.port}"),
                *("-servername", "localhost", "-CAfile", str(ca_file), "-quiet"),
                # Fail on a bad certificate instead of printing a warning and going on.
                *("-verify_return_error", "-verify_hostname", "localhost"),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        try:
            assert client.stdin is not None
            assert client.stdout is not None
            await client.stdin.send_all(b"hello from openssl\n")
            with trio.fail_after(PROCESS_DEADLINE):
                await LineReader(client.stdout).read_until(
                    lambda line: line == "hello from openssl"
                )
        finally:
            await reap(client)
        status, _ = await server.stop()
        assert status == 0


async def test_restart_keeps_the_dev_ca(tmp_path: Path) -> None:
    ca_file = tmp_path / "dev-ca.pem"
    async with serve(["--dev-ca", str(tmp_path)]) as first:
        client_context = trusting(ca_file)  # what a user told to trust the CA has
        _, first_certificate = await trio.to_thread.run_sync(echo_once, first.port, client_context)
        status, _ = await first.stop()
        assert status == 0
    ca_bytes = ca_file.read_bytes()
    async with serve(["--dev-ca", str(tmp_path)]) as second:
        echoed, second_certificate = await trio.to_thread.run_sync(
            echo_once, second.port, client_context
        )
        assert echoed == b"hello\n"
        status, _ = await second.stop()
        assert status == 0
    assert ca_file.read_bytes() == ca_bytes
    assert second_certificate != first_certificate  # a fresh leaf at each start


async def test_serve_with_a_given_certificate(tmp_path: Path) -> None:
    ca = trustme.CA()
    server_cert = ca.issue_cert("localhost")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    server_cert.private_key_and_cert_chain_pem.write_to_path(str(cert))
    server_cert.private_key_pem.write_to_path(str(key))
    dev_ca = tmp_path / "dev-ca"
    async with serve(["--cert", str(cert), "--key", str(key), "--dev-ca", str(dev_ca)]) as server:
        assert server.description == f"certificate {cert}"
        assert not any("dev CA" in line for line in server.banner)
        client_context = ssl.create_default_context()
        ca.configure_trust(client_context)
        echoed, certificate = await trio.to_thread.run_sync(echo_once, server.port, client_context)
        assert echoed == b"hello\n"
        assert ssl.DER_cert_to_PEM_cert(certificate).encode() == server_cert.cert_chain_pems[
            0
        ].bytes().replace(b"\r\n", b"\n")
        status, _ = await server.stop()
        assert status == 0
    assert not dev_ca.exists()


# The command's echo handler stops as soon as a shutdown begins, so a graceful shutdown
# of `trio-accept serve` ends before a second signal can reach it. To see what a second
# signal does while handlers are still running, the server runs an echo handler that
# ignores the shutdown (it would hold the shutdown for the whole grace).


async def test_second_signal_stops_at_once(tmp_path: Path) -> None:
    arguments = ["--dev-ca", str(tmp_path), "--handler", "cli_handlers:stubborn_echo"]
    async with serve(arguments) as server:
        tls = await trio.to_thread.run_sync(
            connect, server.port, trusting(tmp_path / "dev-ca.pem")
        )
        with tls:
            assert await trio.to_thread.run_sync(echo_line, tls, b"hi\n") == b"hi\n"
            server.process.send_signal(signal.SIGINT)
            with trio.fail_after(PROCESS_DEADLINE):
                await server.stderr.read_until(lambda line: "shutting down gracefully" in line)
            # The handler is still running (it ignores the shutdown) ...
            assert server.process.returncode is None
            # ... until a second signal.
            status, log = await server.stop(signal.SIGINT)
    assert status == 0
    assert "SIGINT: shutting down gracefully (again to stop at once)" in log
    assert "SIGINT again: stopping now" in log
    assert "stopped" in log
    assert "Traceback" not in log


# -- SIGHUP reloads the certificates -------------------------------------------------------


def der(leaf: trustme.LeafCert) -> bytes:
    return ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())


async def reload_with_sighup(server: Serve, logged: str) -> str:
    """Send SIGHUP and wait until the server logs the outcome of its reload (returned)."""
    server.process.send_signal(signal.SIGHUP)
    with trio.fail_after(PROCESS_DEADLINE):
        return await server.stderr.read_until(lambda line: logged in line)


async def test_sighup_reloads_the_certificate(tmp_path: Path) -> None:
    ca = trustme.CA()
    first, second = ca.issue_cert("localhost"), ca.issue_cert("localhost")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    replace_certificate(first, cert, key)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    arguments = ["--cert", str(cert), "--key", str(key), "--dev-ca", str(tmp_path / "dev-ca")]
    async with serve(arguments) as server:
        established = await trio.to_thread.run_sync(connect, server.port, client_context)
        with established:
            assert established.getpeercert(binary_form=True) == der(first)

            replace_certificate(second, cert, key)
            await reload_with_sighup(server, "certificates reloaded")
            echoed, certificate = await trio.to_thread.run_sync(
                echo_once, server.port, client_context
            )
            assert echoed == b"hello\n"
            assert certificate == der(second)
            # A connection made before the reload goes on.
            assert await trio.to_thread.run_sync(echo_line, established, b"still\n") == (
                b"still\n"
            )
        status, log = await server.stop()
    assert status == 0
    assert "SIGHUP: reloading the certificates" in log
    assert "Traceback" not in log


async def test_sighup_with_a_broken_certificate_keeps_the_old_one(tmp_path: Path) -> None:
    ca = trustme.CA()
    first = ca.issue_cert("localhost")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    replace_certificate(first, cert, key)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    arguments = ["--cert", str(cert), "--key", str(key), "--dev-ca", str(tmp_path / "dev-ca")]
    async with serve(arguments) as server:
        cert.write_text("not a certificate\n")
        failure = await reload_with_sighup(
            server, "certificate reload failed, keeping the current one"
        )
        assert str(cert) in failure
        assert "no PEM certificate" in failure
        assert server.process.returncode is None
        echoed, certificate = await trio.to_thread.run_sync(echo_once, server.port, client_context)
        assert echoed == b"hello\n"
        assert certificate == der(first)
        # Fixed, and another SIGHUP: the server takes the new certificate.
        second = ca.issue_cert("localhost")
        replace_certificate(second, cert, key)
        await reload_with_sighup(server, "certificates reloaded")
        _, certificate = await trio.to_thread.run_sync(echo_once, server.port, client_context)
        assert certificate == der(second)
        status, log = await server.stop()
    assert status == 0
    assert "Traceback" not in log


async def test_sighup_with_an_expired_certificate_reports_it_once(tmp_path: Path) -> None:
    # The command ignores CertificateWarning (the log line says it already); a reload
    # must obey that too, not print a Python warning next to the log line.
    ca = trustme.CA()
    now = datetime.datetime.now(datetime.UTC)
    late = ca.issue_cert(
        "localhost",
        not_before=now - datetime.timedelta(days=30),
        not_after=now - datetime.timedelta(days=1),
    )
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    replace_certificate(ca.issue_cert("localhost"), cert, key)
    arguments = ["--cert", str(cert), "--key", str(key), "--dev-ca", str(tmp_path / "dev-ca")]
    async with serve(arguments) as server:
        replace_certificate(late, cert, key)
        await reload_with_sighup(server, "certificates reloaded")  # loaded all the same
        status, log = await server.stop()
    assert status == 0
    assert log.count("the certificate expired on") == 1
    assert "CertificateWarning" not in log


# -- trio-accept scenario ------------------------------------------------------------------


def test_scenario_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scenario", "--list"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("expired\n")
    assert "  expected: Python ssl raises ssl.SSLCertVerificationError (verify_code 10" in out
    assert "\nplain-http\n" in out


def test_scenario_unknown_or_missing(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scenario", "nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown scenario 'nope'" in err
    assert "expired" in err
    assert main(["scenario"]) == 2
    assert "give a NAME" in capsys.readouterr().err


async def test_scenario_runs_until_sigterm(tmp_path: Path) -> None:
    argv = [*COMMAND, "scenario", "expired", "--dev-ca", str(tmp_path)]
    async with running(argv) as (process, stdout, stderr):
        with trio.fail_after(PROCESS_DEADLINE):
            first = await stdout.read_until(lambda line: line.startswith("trio-accept:"))
            await stdout.read_until(lambda line: line.strip().startswith("try it:"))
        match = re.fullmatch(r"trio-accept: scenario expired on https://localhost:(\d+)/", first)
        assert match is not None
        port = int(match.group(1))
        banner = "\n".join(stdout.lines)
        assert f"  CA: {tmp_path / 'dev-ca.pem'}" in banner
        assert "  expected: Python ssl raises ssl.SSLCertVerificationError" in banner

        def handshake() -> None:
            with connect(port, trusting(tmp_path / "dev-ca.pem")):
                pass  # pragma: no cover - refused

        with pytest.raises(ssl.SSLCertVerificationError) as info:
            await trio.to_thread.run_sync(handshake)
        assert info.value.verify_code == 10

        process.send_signal(signal.SIGTERM)
        with trio.fail_after(PROCESS_DEADLINE):
            assert await process.wait() == 0
            log = await stderr.read_all()
        assert "SIGTERM: stopping" in log
        assert "Traceback" not in log


# -- handlers: echo, info, MODULE:FUNCTION, the proxy ------------------------------------


@pytest.mark.parametrize(
    ("spec", "complaint"),
    [
        ("nope", "use echo, info or MODULE:FUNCTION"),
        ("cli_handlers:", "use echo, info or MODULE:FUNCTION"),
        ("no_such_module_here:main", "cannot import no_such_module_here"),
        ("cli_handlers:missing", "cli_handlers has no attribute 'missing'"),
        ("cli_handlers:NOT_CALLABLE", "NOT_CALLABLE is a int, not a function"),
        ("cli_handlers:not_async", "not_async is not an async function"),
    ],
)
def test_unusable_handlers_are_refused(spec: str, complaint: str) -> None:
    with pytest.raises(SetupError) as info:
        load_handler(spec)
    assert str(info.value).startswith(f"handler (--handler) {spec}: ")
    assert complaint in str(info.value)


def test_handlers_may_be_async_callables() -> None:
    import cli_handlers  # noqa: PLC0415 - on sys.path in tests

    assert load_handler("cli_handlers:pid") is cli_handlers.pid
    assert load_handler("cli_handlers:callable_handler") is cli_handlers.callable_handler


def test_a_bad_handler_stops_serve_before_it_binds(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["serve", "--handler", "cli_handlers:not_async", "--dev-ca", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "not_async is not an async function" in err
    assert "Traceback" not in err


async def test_serve_a_handler_of_ours(tmp_path: Path) -> None:
    arguments = ["--dev-ca", str(tmp_path), "--handler", "cli_handlers:pid"]
    async with serve(arguments) as server:
        assert server.what == "server (cli_handlers:pid)"
        # A server that speaks first: the banner says how to try it with curl.
        assert server.banner_line("curl").startswith("curl --cacert")
        answer = await trio.to_thread.run_sync(
            read_all, server.port, trusting(tmp_path / "dev-ca.pem")
        )
        assert answer == f"{server.process.pid}\n".encode()
        status, log = await server.stop()
    assert status == 0
    assert "Traceback" not in log


@pytest.mark.interop
async def test_serve_info_with_curl(tmp_path: Path) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    async with serve(["--dev-ca", str(tmp_path), "--handler", "info"]) as server:
        assert server.what == "info server"
        # The banner's own advice, as a user pastes it.
        advice = shlex.split(server.banner_line("curl"))
        assert advice[-1] == f"https://localhost:{server.port}/"
        result = await trio.run_process([*advice, "--silent"], capture_stdout=True)
        facts = json.loads(result.stdout)
        assert facts["tls"]["version"] == "TLSv1.3"
        assert facts["tls"]["server_name"] == "localhost"
        assert facts["request"]["path"] == "/"
        status, _ = await server.stop()
    assert status == 0


def _info_through_proxy_header(
    port: int, context: ssl.SSLContext, header: bytes
) -> dict[str, Any]:
    """What the info handler says of a connection that opens with a PROXY header."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
        raw.sendall(header)
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := tls.recv(65536):
                answer += chunk
    return cast("dict[str, Any]", json.loads(answer.partition(b"\r\n\r\n")[2]))


async def test_serve_proxy_protocol_shows_the_original_client(tmp_path: Path) -> None:
    from trio_accept import encode_proxy_v1, encode_proxy_v2  # noqa: PLC0415

    arguments = ["--dev-ca", str(tmp_path), "--handler", "info", "--proxy-protocol"]
    async with serve(arguments) as server:
        context = trusting(tmp_path / "dev-ca.pem")
        for header in (
            encode_proxy_v1(("203.0.113.7", 4242), ("127.0.0.1", server.port)),
            encode_proxy_v2(("2001:db8::7", 4343, 0, 0), ("::1", server.port, 0, 0)),
        ):
            facts = await trio.to_thread.run_sync(
                _info_through_proxy_header, server.port, context, header
            )
            client = facts["client_address"]
            assert (client["host"], client["port"]) in (
                ("203.0.113.7", 4242),
                ("2001:db8::7", 4343),
            )
            assert facts["peer_address"]["host"] == "127.0.0.1"
        # A client that connects directly is refused (no header), and counted.
        with pytest.raises((ssl.SSLError, OSError)):
            await trio.to_thread.run_sync(connect, server.port, context)
        status, log = await server.stop()
    assert status == 0
    assert "proxy-protocol" in log


class _Upstream(BaseHTTPRequestHandler):
    """A plain HTTP server: the proxy's upstream."""

    def do_GET(self) -> None:
        body = f"upstream saw {self.path} from {self.client_address[0]}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # quiet


@pytest.fixture
def upstream() -> Iterator[int]:
    """A plain HTTP server on 127.0.0.1 in a thread; yields its port."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.mark.interop
async def test_serve_as_a_tls_terminating_proxy(tmp_path: Path, upstream: int) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    ca_file = tmp_path / "dev-ca.pem"
    arguments = ["--dev-ca", str(tmp_path), "--upstream", f"127.0.0.1:{upstream}"]
    async with serve(arguments) as server:
        assert server.what == f"proxy to 127.0.0.1:{upstream}"
        result = await trio.run_process(
            [
                *(curl, "--silent", "--show-error", "--cacert", str(ca_file)),
                f"https://localhost:{server.port}/through/the/proxy",
            ],
            capture_stdout=True,
        )
        assert result.stdout == b"upstream saw /through/the/proxy from 127.0.0.1\n"
        status, log = await server.stop()
    assert status == 0
    assert "Traceback" not in log


def _through_a_balancer(port: int, context: ssl.SSLContext, header: bytes) -> tuple[int, bytes]:
    """Connect as a load balancer would (``header`` first, if any); returns the TCP
    source port and the first line the server sends."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
        raw.sendall(header)
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            return tls.getsockname()[1], echo_line(tls, b"")


@pytest.mark.parametrize("front", ["direct", "load balancer"])
async def test_upstream_proxy_protocol_tells_the_upstream_who_connected(
    tmp_path: Path, front: str
) -> None:
    from trio_accept import (  # noqa: PLC0415
        ProxyHeader,
        encode_proxy_v1,
        encode_proxy_v2,
        parse_proxy_header,
    )

    upstream = trio.socket.socket()
    await upstream.bind(("127.0.0.1", 0))
    upstream.listen()
    headers: list[ProxyHeader] = []
    # What the load balancer says: the client, and the address the client connected to
    # (the balancer's own, not ours).
    received = [
        encode_proxy_v1(("203.0.113.7", 4242), ("198.51.100.1", 443)),
        encode_proxy_v2(("2001:db8::7", 4343, 0, 0), ("2001:db8::1", 8443, 0, 0)),
    ]
    if front == "direct":
        received = [b""]

    async def answer() -> None:
        for _ in received:
            connection, _ = await upstream.accept()
            with connection:
                buffer = b""
                while (parsed := parse_proxy_header(buffer)) is None:
                    buffer += await connection.recv(4096)
                headers.append(parsed[0])
                await connection.send(b"hello from upstream\n")

    port = upstream.getsockname()[1]
    arguments = ["--dev-ca", str(tmp_path), "--upstream", f"127.0.0.1:{port}"]
    arguments += ["--upstream-proxy-protocol"]
    if front == "load balancer":
        arguments += ["--proxy-protocol"]
    client_ports: list[int] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(answer)
        async with serve(arguments) as server:
            context = trusting(tmp_path / "dev-ca.pem")
            for header in received:
                client_port, line = await trio.to_thread.run_sync(
                    _through_a_balancer, server.port, context, header
                )
                assert line == b"hello from upstream\n"
                client_ports.append(client_port)
            status, _ = await server.stop()
    upstream.close()
    assert status == 0
    assert all(header.version == 2 and header.command == "PROXY" for header in headers)
    addresses = [(header.source, header.destination) for header in headers]
    if front == "direct":  # this connection's own addresses
        assert addresses == [(("127.0.0.1", client_ports[0]), ("127.0.0.1", server.port))]
    else:  # the balancer's header, passed on: the original client, where it connected
        assert addresses == [
            (("203.0.113.7", 4242), ("198.51.100.1", 443)),
            (("2001:db8::7", 4343, 0, 0), ("2001:db8::1", 8443, 0, 0)),
        ]


def test_upstream_and_handler_are_exclusive(capsys: pytest.CaptureFixture[str]) -> None:
    for handler in ("info", "echo"):  # echo too, the default: it was asked for
        assert main(["serve", "--upstream", "127.0.0.1:80", "--handler", handler]) == 2
        assert "upstream (--upstream) and handler (--handler): the upstream is the handler" in (
            capsys.readouterr().err
        )
    # The info handler speaks HTTP/1.1: an HTTP/2 client would get nothing it can read.
    assert main(["serve", "--handler", "info", "--alpn", "h2"]) == 2
    assert "info speaks HTTP/1.1 only" in capsys.readouterr().err
    assert main(["serve", "--upstream", "nope:"]) == 2
    assert "upstream (--upstream): " in capsys.readouterr().err


# -- the configuration file ----------------------------------------------------------------


async def test_serve_from_a_config_file(tmp_path: Path) -> None:
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost")
    (tmp_path / "certs").mkdir()
    replace_certificate(leaf, tmp_path / "certs" / "cert.pem", tmp_path / "certs" / "key.pem")
    config = tmp_path / "trio-accept.toml"
    config.write_text(
        'host = "127.0.0.1"\n'
        "port = 1\n"  # overridden on the command line (--port 0)
        'cert = "certs/cert.pem"\n'  # relative to the file
        'key = "certs/key.pem"\n'
        'handler = "cli_handlers:pid"\n'
        "hello_timeout = 2.5\n"
        'alpn = ["http/1.1"]\n'
    )
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    client_context.set_alpn_protocols(["http/1.1"])
    async with serve(["--config", str(config)]) as server:
        assert server.description == f"certificate {tmp_path / 'certs' / 'cert.pem'}"
        with await trio.to_thread.run_sync(connect, server.port, client_context) as tls:
            assert tls.selected_alpn_protocol() == "http/1.1"
        status, _ = await server.stop()
    assert status == 0


def test_config_file_errors_name_the_key(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("hello_timout = 3\n")
    assert main(["serve", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"{config}: unknown key 'hello_timout' (did you mean 'hello_timeout'?)" in err
    assert "Traceback" not in err


# -- the private key: its password, its permissions -----------------------------------------


def encrypted_key(leaf: trustme.LeafCert, path: Path, password: bytes) -> None:
    key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), password=None)
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(password),
        )
    )


async def test_key_password_from_the_environment_and_a_file(tmp_path: Path) -> None:
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    encrypted_key(leaf, key, b"correct horse")
    key.chmod(0o644)  # readable by everyone: warned about
    password_file = tmp_path / "password"
    password_file.write_text("correct horse\n")
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    certificate = ["--cert", str(cert), "--key", str(key)]
    for source, env in (
        (["--key-password-env", "KEY_PASSWORD"], {"KEY_PASSWORD": "correct horse"}),
        (["--key-password-file", str(password_file)], {}),
    ):
        async with serve([*certificate, *source], env=env) as server:
            echoed, _ = await trio.to_thread.run_sync(echo_once, server.port, client_context)
            assert echoed == b"hello\n"
            status, log = await server.stop()
        assert status == 0
        assert f"{key}: the private key is readable by every user (mode 0644)" in log
        assert "correct horse" not in log


def test_a_wrong_or_missing_key_password(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    leaf = trustme.CA().issue_cert("localhost")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    encrypted_key(leaf, key, b"right")
    key.chmod(stat.S_IRUSR)
    certificate = ["serve", "--cert", str(cert), "--key", str(key)]
    monkeypatch.setenv("KEY_PASSWORD", "wrong")
    assert main([*certificate, "--key-password-env", "KEY_PASSWORD"]) == 2
    err = capsys.readouterr().err
    assert "cannot decrypt the private key; check its password" in err
    assert "readable by" not in err  # 0400: nothing to warn about
    assert main([*certificate]) == 2
    assert "the private key is encrypted; pass its password" in capsys.readouterr().err
    monkeypatch.delenv("KEY_PASSWORD")
    assert main([*certificate, "--key-password-env", "KEY_PASSWORD"]) == 2
    assert "the environment variable KEY_PASSWORD is not set" in capsys.readouterr().err
    missing = tmp_path / "missing"
    assert main([*certificate, "--key-password-file", str(missing)]) == 2
    assert f"key_password_file: {missing}: No such file" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # never on the command line
        build_parser().parse_args([*certificate, "--key-password", "secret"])


# -- production hygiene: TCP_NODELAY, privileges, inherited sockets ---------------------------


async def test_connections_have_tcp_nodelay(tmp_path: Path) -> None:
    # trio's SocketStream turns TCP_NODELAY on for every accepted TCP connection; the
    # command relies on that rather than setting it again. Check it where it matters:
    # on the sockets the command's handlers get.
    arguments = ["--dev-ca", str(tmp_path), "--handler", "cli_handlers:nodelay"]
    async with serve(arguments) as server:
        answer = await trio.to_thread.run_sync(
            read_all, server.port, trusting(tmp_path / "dev-ca.pem")
        )
        assert answer == b"1\n"
        status, _ = await server.stop()
    assert status == 0


def process_ids(pid: int) -> tuple[list[int], list[int]]:
    """Real, effective, saved and filesystem uids and gids, from /proc."""
    fields: dict[str, list[int]] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in {"Uid", "Gid"}:
            fields[name] = [int(number) for number in value.split()]
    return fields["Uid"], fields["Gid"]


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
async def test_user_and_group_are_dropped_after_binding(tmp_path: Path) -> None:
    import pwd  # noqa: PLC0415

    nobody = pwd.getpwnam("nobody")
    # Root-only files: read before the switch, never again.
    os.chmod(tmp_path, 0o700)
    arguments = ["--dev-ca", str(tmp_path), "--user", "nobody", "--handler", "cli_handlers:pid"]
    async with serve(arguments) as server:
        uids, gids = process_ids(server.process.pid)
        assert uids == [nobody.pw_uid] * 4
        assert gids == [nobody.pw_gid] * 4
        answer = await trio.to_thread.run_sync(
            read_all, server.port, trusting(tmp_path / "dev-ca.pem")
        )
        assert answer == f"{server.process.pid}\n".encode()
        status, log = await server.stop()
    assert status == 0
    assert f"running as uid {nobody.pw_uid}, gid {nobody.pw_gid}" in log


def test_unknown_user_or_group(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["serve", "--port", "0", "--dev-ca", str(tmp_path), "--user", "no-such"]) == 2
    assert "user: no such user 'no-such'" in capsys.readouterr().err
    assert main(["serve", "--port", "0", "--dev-ca", str(tmp_path), "--group", "no-such"]) == 2
    assert "group: no such group 'no-such'" in capsys.readouterr().err


async def test_serve_on_an_inherited_socket(tmp_path: Path) -> None:
    with listening_socket() as sock:
        fd, port = sock.fileno(), sock.getsockname()[1]
        arguments = [
            "--dev-ca",
            str(tmp_path),
            "--fd",
            str(fd),
            "--handler",
            "cli_handlers:nodelay",
        ]
        async with serve(arguments, port=(), pass_fds=[fd]) as server:
            assert server.port == port
            answer = await trio.to_thread.run_sync(
                read_all, port, trusting(tmp_path / "dev-ca.pem")
            )
            assert answer == b"1\n"
            status, _ = await server.stop()
    assert status == 0


def test_an_inherited_fd_that_is_not_a_listening_socket(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with socket.socket() as unbound:
        assert main(["serve", "--fd", str(unbound.fileno()), "--dev-ca", str(tmp_path)]) == 2
        assert f"file descriptor {unbound.fileno()} is not listening" in capsys.readouterr().err
        assert unbound.fileno() >= 0  # still ours, still open
        os.fstat(unbound.fileno())
    assert main(["serve", "--fd", "7", "--port", "1"]) == 2
    assert "fd (--fd) serves an inherited socket" in capsys.readouterr().err


async def test_systemd_socket_activation(tmp_path: Path) -> None:
    with listening_socket() as sock:
        fd, port = sock.fileno(), sock.getsockname()[1]
        arguments = ["--dev-ca", str(tmp_path), "--handler", "cli_handlers:environment"]
        command = socket_activated(fd)
        async with serve(arguments, command=command, port=(), pass_fds=[fd]) as server:
            assert server.port == port
            answer = await trio.to_thread.run_sync(
                read_all, port, trusting(tmp_path / "dev-ca.pem")
            )
            # The variables are consumed: a child of the handler would not see them.
            assert answer == b"LISTEN_FDS=None LISTEN_PID=None\n"
            status, _ = await server.stop()
    assert status == 0


# -- systemd notifications -------------------------------------------------------------------


async def test_sd_notify_ready_reloading_stopping(tmp_path: Path) -> None:
    async with notify_socket(tmp_path) as (path, next_message):
        env = {"NOTIFY_SOCKET": path}
        async with serve(["--dev-ca", str(tmp_path)], env=env) as server:
            ready = await next_message()
            assert ready[0] == "READY=1"
            assert ready[1] == f"STATUS=TLS echo server on 127.0.0.1:{server.port}"
            server.process.send_signal(signal.SIGHUP)
            reloading = await next_message()
            assert reloading[0] == "RELOADING=1"
            assert re.fullmatch(r"MONOTONIC_USEC=\d+", reloading[1])
            assert await next_message() == ["READY=1"]
            server.process.send_signal(signal.SIGTERM)
            assert await next_message() == ["STOPPING=1"]
            with trio.fail_after(PROCESS_DEADLINE):
                assert await server.process.wait() == 0


# -- logs: stats -----------------------------------------------------------------------------


def test_stats_line() -> None:
    from trio_accept import Reason  # noqa: PLC0415

    stats = ServerStats(
        accepted=12,
        handshakes_in_flight=1,
        silent=0,
        completed=8,
        failed={Reason.PLAIN_HTTP: 1, Reason.TIMEOUT: 2},
        active_connections=3,
        closed=5,
        idle_closed=1,
        handler_errors=0,
        accept_errors=0,
    )
    assert stats_line(stats) == (
        "stats: 12 accepted, 1 handshaking, 8 completed, 3 failed (timeout 2, plain-http 1), "
        "3 active, 5 closed, 1 idle-closed, 0 handler errors, 0 accept errors"
    )


async def test_stats_on_sigusr1_and_every_interval(tmp_path: Path) -> None:
    async with serve(["--dev-ca", str(tmp_path)]) as server:
        await trio.to_thread.run_sync(plain_http, server.port)
        # The client may see the answer before the server counts the failure: its line.
        await server.logged("the client sent plain HTTP to a TLS port")
        server.process.send_signal(signal.SIGUSR1)
        line = await server.logged("stats: ")
        assert "1 accepted, 0 handshaking, 0 completed, 1 failed (plain-http 1)" in line
        status, _ = await server.stop()
    assert status == 0
    async with serve(["--dev-ca", str(tmp_path), "--stats-interval", "0.05"]) as server:
        # Nothing is sent: the lines come by themselves.
        await server.logged("stats: 0 accepted")
        await server.logged("stats: 0 accepted")
        status, _ = await server.stop()
    assert status == 0


# -- trio-accept ca ------------------------------------------------------------------------


def test_ca_creates_then_shows_the_dev_ca(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from cryptography import x509  # noqa: PLC0415

    assert main(["ca", "--dev-ca", str(tmp_path)]) == 0
    created = capsys.readouterr().out
    ca_file = tmp_path / "dev-ca.pem"
    assert created.startswith(f"trio-accept: dev CA created in {tmp_path}\n")
    certificate = x509.load_pem_x509_certificate(ca_file.read_bytes())
    assert f"  certificate: {ca_file}\n" in created
    assert f"  subject: {certificate.subject.rfc4514_string()}\n" in created
    assert "trio-accept development CA" in certificate.subject.rfc4514_string()
    assert f"  expires: {certificate.not_valid_after_utc:%Y-%m-%d %H:%M} UTC\n" in created
    for advice in (
        f"curl --cacert {ca_file}",
        f"export SSL_CERT_FILE={ca_file}",
        f"certutil -d sql:$HOME/.pki/nssdb -A -t C,, -n 'trio-accept dev CA' -i {ca_file}",
        "update-ca-certificates",
    ):
        assert advice in created
    assert main(["ca", "--dev-ca", str(tmp_path)]) == 0
    shown = capsys.readouterr().out
    assert shown.startswith(f"trio-accept: dev CA in {tmp_path}\n")
    assert shown.splitlines()[1:] == created.splitlines()[1:]  # the same CA


@pytest.mark.interop
async def test_ca_advice_works_with_curl_and_certutil(tmp_path: Path) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    async with running([*COMMAND, "ca", "--dev-ca", str(tmp_path)]) as (process, stdout, _):
        with trio.fail_after(PROCESS_DEADLINE):
            output = await stdout.read_all()
            assert await process.wait() == 0
    advice = {
        line.split(":", 1)[0].strip(): line.split(":", 1)[1].strip()
        for line in output.splitlines()
        if line.startswith("  ") and ":" in line
    }
    curl_line = shlex.split(advice["curl"])
    async with serve(["--dev-ca", str(tmp_path), "--handler", "info"]) as server:
        url = f"https://localhost:{server.port}/"
        result = await trio.run_process([*curl_line[:-1], "--silent", url], capture_stdout=True)
        assert result.stdout.startswith(b"{")
        status, _ = await server.stop()
    assert status == 0
    certutil = shutil.which("certutil")
    if certutil is not None:  # libnss3-tools: the browser store
        home = tmp_path / "home"
        (home / ".pki" / "nssdb").mkdir(parents=True)
        env = {**os.environ, "HOME": str(home)}
        await trio.run_process(
            [certutil, "-d", f"sql:{home}/.pki/nssdb", "-N", "--empty-password"], env=env
        )
        command = advice["Chromium (NSS)"].replace("$HOME", str(home))
        await trio.run_process(shlex.split(command), env=env)
        listed = await trio.run_process(
            [certutil, "-d", f"sql:{home}/.pki/nssdb", "-L"], env=env, capture_stdout=True
        )
        assert b"trio-accept dev CA" in listed.stdout


def test_ca_in_an_unusable_directory(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    assert main(["ca", "--dev-ca", str(not_a_directory)]) == 2
    assert f"cannot load the dev CA in {not_a_directory}" in capsys.readouterr().err


def test_python_dash_m_runs_the_command() -> None:
    result = subprocess.run(
        [*COMMAND, "--help"], capture_output=True, text=True, check=True, timeout=PROCESS_DEADLINE
    )
    assert result.stdout.startswith("usage: trio-accept")


# -- TLS settings reach the server -----------------------------------------------------------


async def test_tls_settings_reach_the_server(tmp_path: Path) -> None:
    ca = trustme.CA()
    default, other = ca.issue_cert("localhost"), ca.issue_cert("other.test")
    replace_certificate(default, tmp_path / "cert.pem", tmp_path / "key.pem")
    replace_certificate(other, tmp_path / "other.pem", tmp_path / "other-key.pem")
    client_ca = trustme.CA()
    client_ca.cert_pem.write_to_path(str(tmp_path / "clients.pem"))
    arguments = [
        *("--cert", str(tmp_path / "cert.pem"), "--key", str(tmp_path / "key.pem")),
        *("--sni", f"other.test={tmp_path / 'other.pem'}:{tmp_path / 'other-key.pem'}"),
        *("--profile", "modern", "--alpn", "h2,http/1.1"),
        *("--client-ca", str(tmp_path / "clients.pem"), "--handler", "cli_handlers:pid"),
    ]

    def client(*, tls12: bool = False, with_cert: bool = True) -> ssl.SSLContext:
        context = ssl.create_default_context()
        ca.configure_trust(context)
        context.set_alpn_protocols(["h2"])
        if tls12:
            context.maximum_version = ssl.TLSVersion.TLSv1_2
        if with_cert:
            client_ca.issue_cert("client@example.test").configure_cert(context)
        return context

    def talk(context: ssl.SSLContext, name: str) -> tuple[bytes, str | None, bytes]:
        with connect(server.port, context, server_hostname=name) as tls:
            certificate = tls.getpeercert(binary_form=True)
            assert certificate is not None
            return certificate, tls.selected_alpn_protocol(), tls.recv(100)

    async with serve(arguments) as server:
        certificate, alpn, answer = await trio.to_thread.run_sync(talk, client(), "localhost")
        assert (certificate, alpn) == (der(default), "h2")
        assert answer == f"{server.process.pid}\n".encode()
        certificate, _, _ = await trio.to_thread.run_sync(talk, client(), "other.test")
        assert certificate == der(other)
        with pytest.raises(ssl.SSLError, match="PROTOCOL_VERSION"):  # modern: TLS 1.3 only
            await trio.to_thread.run_sync(talk, client(tls12=True), "localhost")
        # The client certificate is required (TLS 1.3: the refusal comes after the
        # client's side of the handshake, at the first read).
        with pytest.raises(ssl.SSLError, match="CERTIFICATE_REQUIRED"):
            await trio.to_thread.run_sync(talk, client(with_cert=False), "localhost")
        status, _ = await server.stop()
    assert status == 0


async def test_watch_reloads_when_the_files_change(tmp_path: Path) -> None:
    ca = trustme.CA()
    first, second = ca.issue_cert("localhost"), ca.issue_cert("localhost")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    replace_certificate(first, cert, key)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    arguments = ["--cert", str(cert), "--key", str(key), "--watch", "0.05"]
    async with serve(arguments) as server:
        _, certificate = await trio.to_thread.run_sync(echo_once, server.port, client_context)
        assert certificate == der(first)
        replace_certificate(second, cert, key)  # no signal: the files changed
        await server.logged("certificates reloaded")
        _, certificate = await trio.to_thread.run_sync(echo_once, server.port, client_context)
        assert certificate == der(second)
        status, _ = await server.stop()
    assert status == 0
