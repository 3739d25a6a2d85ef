"""The ``trio-accept`` command: argument checks in-process, and ``serve`` end to end as a
user runs it (a subprocess, real signals, real clients)."""

from __future__ import annotations

import datetime
import logging
import re
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncGenerator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio
import trustme
from helpers import replace_certificate

from trio_accept._cli import DEFAULT_HOST, DEFAULT_PORT, build_parser, main

#: A safety net for everything that waits on a subprocess, never a timing assertion.
PROCESS_DEADLINE = 30.0
#: Socket timeout of the blocking clients run in threads, for the same purpose.
CLIENT_TIMEOUT = 10.0

BANNER = re.compile(r"TLS echo server on (\S+):(\d+) \((.*)\)")


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
    args = build_parser().parse_args(["serve"])
    assert (args.host, args.port) == (DEFAULT_HOST, DEFAULT_PORT) == ("127.0.0.1", 8443)
    assert args.cert is None
    assert args.key is None
    assert args.dev_ca is None


def test_serve_options() -> None:
    args = build_parser().parse_args(
        [
            *("serve", "--host", "::", "--port", "0"),
            *("--cert", "c.pem", "--key", "k.pem", "--dev-ca", "ca-dir"),
        ]
    )
    assert (args.host, args.port) == ("::", 0)
    assert (args.cert, args.key, args.dev_ca) == (Path("c.pem"), Path("k.pem"), Path("ca-dir"))


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
    assert "--cert and --key go together" in capsys.readouterr().err
    assert not dev_ca.exists()


def test_missing_certificate_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    key = tmp_path / "key.pem"
    key.write_text("unused")
    missing = tmp_path / "missing.pem"
    assert main(["serve", "--cert", str(missing), "--key", str(key)]) == 2
    err = capsys.readouterr().err
    assert f"--cert {missing}: no such file" in err
    assert "Traceback" not in err


def test_missing_key_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    server_cert = trustme.CA().issue_cert("localhost")
    cert = tmp_path / "cert.pem"
    server_cert.cert_chain_pems[0].write_to_path(str(cert))
    missing = tmp_path / "missing-key.pem"
    assert main(["serve", "--cert", str(cert), "--key", str(missing)]) == 2
    assert f"--key {missing}: no such file" in capsys.readouterr().err


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


# -- a serve subprocess --------------------------------------------------------------------


class LineReader:
    """Lines from a subprocess pipe, as they come."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buffer = bytearray()
        self.lines: list[str] = []

    async def readline(self) -> str | None:
        """The next line (without its newline), or None at EOF."""
        while b"\n" not in self._buffer:
            chunk = await self._stream.receive_some()
            if not chunk:
                if not self._buffer:
                    return None
                self._buffer += b"\n"
            self._buffer += chunk
        line, _, rest = self._buffer.partition(b"\n")
        self._buffer = bytearray(rest)
        text = line.decode()
        self.lines.append(text)
        return text

    async def read_until(self, predicate: Callable[[str], bool]) -> str:
        while (line := await self.readline()) is not None:
            if predicate(line):
                return line
        raise AssertionError(f"EOF before the expected line; got {self.lines!r}")

    async def read_all(self) -> str:
        while await self.readline() is not None:
            pass
        return "\n".join(self.lines)


@dataclass
class Serve:
    """A running ``trio-accept serve`` and what it printed."""

    process: trio.Process
    stdout: LineReader
    stderr: LineReader
    port: int
    description: str
    banner: list[str] = field(default_factory=list[str])

    def banner_line(self, start: str) -> str:
        (line,) = (line.strip() for line in self.banner if line.strip().startswith(start))
        return line

    async def stop(self, signum: signal.Signals = signal.SIGTERM) -> tuple[int, str]:
        """Send a signal; returns the exit status and everything logged to stderr."""
        self.process.send_signal(signum)
        with trio.fail_after(PROCESS_DEADLINE):
            status = await self.process.wait()
            return status, await self.stderr.read_all()


async def reap(process: trio.Process) -> None:
    """Kill ``process`` if it still runs, wait for it, close its pipes."""
    with trio.CancelScope(shield=True):
        if process.returncode is None:
            process.kill()
        await process.wait()
        for pipe in (process.stdin, process.stdout, process.stderr):
            if pipe is not None:
                await pipe.aclose()


@asynccontextmanager
async def running(
    argv: Sequence[str],
) -> AsyncGenerator[tuple[trio.Process, LineReader, LineReader]]:
    """Start ``argv`` with its output piped to line readers; killed and reaped on the way
    out, whatever happened."""
    process = await trio.lowlevel.open_process(
        list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        assert process.stderr is not None
        yield process, LineReader(process.stdout), LineReader(process.stderr)
    finally:
        await reap(process)


@asynccontextmanager
async def serve(arguments: Sequence[str], *, command: Sequence[str] = ()) -> AsyncGenerator[Serve]:
    """Start ``python -m trio_accept serve --port 0 ...`` and wait for its banner."""
    command = command or [sys.executable, "-m", "trio_accept"]
    async with running([*command, "serve", "--port", "0", *arguments]) as (
        process,
        stdout,
        stderr,
    ):
        with trio.fail_after(PROCESS_DEADLINE):
            first = await stdout.read_until(lambda line: BANNER.search(line) is not None)
            match = BANNER.search(first)
            assert match is not None
            assert match.group(1) == "127.0.0.1"
            if "--cert" not in arguments:  # the dev CA lines follow
                await stdout.read_until(lambda line: line.strip().startswith("curl "))
        yield Serve(
            process, stdout, stderr, int(match.group(2)), match.group(3), list(stdout.lines)
        )


# -- blocking clients, run in threads ------------------------------------------------------


def trusting(ca_file: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca_file))


def connect(
    port: int, context: ssl.SSLContext, server_hostname: str = "localhost"
) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT)
    try:
        # A ragged EOF raises instead of looking like a clean close.
        return context.wrap_socket(
            raw, server_hostname=server_hostname, suppress_ragged_eofs=False
        )
    except BaseException:
        raw.close()
        raise


def echo_line(tls: ssl.SSLSocket, line: bytes) -> bytes:
    tls.sendall(line)
    received = b""
    while not received.endswith(b"\n"):
        chunk = tls.recv(4096)
        if not chunk:
            break
        received += chunk
    return received


def echo_once(port: int, context: ssl.SSLContext, line: bytes = b"hello\n") -> tuple[bytes, bytes]:
    """Connect, echo one line, close. Returns the echo and the server's certificate (DER)."""
    with connect(port, context) as tls:
        certificate = tls.getpeercert(binary_form=True)
        assert certificate is not None
        return echo_line(tls, line), certificate


def plain_http(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT) as raw:
        raw.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        response = b""
        while chunk := raw.recv(4096):
            response += chunk
        return response


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
# signal does while handlers are still running, the same command runs with an echo
# handler that ignores the shutdown (it would hold the shutdown for the whole grace).
STUBBORN_SERVE = """\
import sys

import trio_accept._cli as cli


async def stubborn_echo(stream):
    async for data in stream:
        await stream.send_all(data)


cli.echo = stubborn_echo
raise SystemExit(cli.main(sys.argv[1:]))
"""


async def test_second_signal_stops_at_once(tmp_path: Path) -> None:
    command = [sys.executable, "-c", STUBBORN_SERVE]
    async with serve(["--dev-ca", str(tmp_path)], command=command) as server:
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
    argv = [sys.executable, "-m", "trio_accept", "scenario", "expired", "--dev-ca", str(tmp_path)]
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
