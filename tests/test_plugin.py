"""The pytest plugin (``trio_accept.testing.plugin``), run the way users run it.

Each test writes a test file and runs pytest on it with ``pytester``, always with
``-W error`` and ``--strict-markers``: the plugin must be clean under both. The plugin is
never named with ``-p``: it comes from the ``pytest11`` entry point, as for users.
"""

from __future__ import annotations

import importlib.metadata
import shutil

import pytest

pytest_plugins = ["pytester"]

#: The options of every inner run: warnings are errors, unknown markers are errors.
#: One warning is an artefact of running pytest inside pytest: since pytest 9.2 the
#: package of an editable install's plugin is marked for rewriting, and in this process
#: it has been imported already (by the outer run) -- a user's run imports it once.
STRICT = (
    "-W",
    "error",
    "-W",
    "ignore:Module already imported so cannot be rewritten; trio_accept"
    ":pytest.PytestAssertRewriteWarning",
    "--strict-markers",
    "-p",
    "no:cacheprovider",
)


def make_test_file(pytester: pytest.Pytester, source: str) -> None:
    # Named apart from this project's own test modules: an in-process run must not find
    # a module of the same name imported already (tests/test_scenarios.py, ...).
    pytester.makepyfile(**{f"test_inner_{pytester.path.name}": source})


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest(*STRICT, *args)


def test_entry_point() -> None:
    (entry_point,) = [
        ep
        for ep in importlib.metadata.entry_points(group="pytest11")
        if ep.value == "trio_accept.testing.plugin"
    ]
    assert entry_point.name == "trio_accept"


def test_loaded_in_a_fresh_process_and_marker_registered(pytester: pytest.Pytester) -> None:
    make_test_file(
        pytester,
        """
        def test_fixture(tls_server):
            assert tls_server.url == f"https://localhost:{tls_server.port}/"
        """,
    )
    result = pytester.runpytest_subprocess(*STRICT, "--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.tls_server(handler=echo):*"])
    result = pytester.runpytest_subprocess(*STRICT)
    result.assert_outcomes(passed=1)


def test_sync_clients(pytester: pytest.Pytester) -> None:
    make_test_file(
        pytester,
        """
        import socket
        import ssl
        import urllib.request

        import pytest

        from trio_accept.testing import echo, http_responder

        def test_ssl_socket(tls_server, tls_client_context):
            assert tls_server.host == "127.0.0.1"
            with socket.create_connection((tls_server.host, tls_server.port)) as raw:
                with tls_client_context.wrap_socket(raw, server_hostname="localhost") as tls:
                    tls.sendall(b"ping")
                    assert tls.recv(100) == b"ping"
            record = tls_server.wait_for_connection()
            assert record.code == 1
            assert record.server_name == "localhost"
            assert (record.bytes_received, record.bytes_sent) == (4, 4)
            assert record.version in ("TLSv1.2", "TLSv1.3")
            assert tls_server.connections == [record]

        def test_client_context_is_per_test_and_shared(tls_client_context, request):
            assert request.getfixturevalue("tls_client_context") is tls_client_context
            assert tls_client_context.verify_mode == ssl.CERT_REQUIRED

        @pytest.mark.tls_server(handler=http_responder)
        def test_urllib(tls_server, tls_client_context):
            with urllib.request.urlopen(tls_server.url + "x?y", context=tls_client_context) as r:
                assert r.status == 200
                assert r.read() == b"GET /x?y\\n"
            record = tls_server.wait_for_connection()
            assert record.server_name == "localhost"
            assert record.bytes_received > 0

        @pytest.mark.parametrize(
            ("tls_server", "answer"),
            [(echo, b"GET / HTTP/1.0\\r\\n\\r\\n"), (http_responder, b"HTTP/1.1 200 OK")],
            indirect=["tls_server"],
        )
        def test_indirect(tls_server, tls_client_context, answer):
            with socket.create_connection((tls_server.host, tls_server.port)) as raw:
                with tls_client_context.wrap_socket(raw, server_hostname="localhost") as tls:
                    tls.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
                    assert tls.recv(100).startswith(answer)

        def test_untrusted_client_fails_and_is_recorded(tls_server):
            context = ssl.create_default_context(cafile=None)
            context.load_default_certs()
            with socket.create_connection((tls_server.host, tls_server.port)) as raw:
                with pytest.raises(ssl.SSLCertVerificationError):
                    context.wrap_socket(raw, server_hostname="localhost")
            record = tls_server.wait_for_connection()
            assert record.code != 1
            assert record.server_name == "localhost"

        def test_session_ca(tls_ca, tls_ca_path, tls_server):
            assert tls_server.ca is tls_ca
            assert tls_server.ca_path == tls_ca_path
            assert tls_ca_path.read_bytes() == tls_ca.cert_pem.bytes()
        """,
    )
    run(pytester).assert_outcomes(passed=7)


@pytest.mark.interop
@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_curl(pytester: pytest.Pytester) -> None:
    make_test_file(
        pytester,
        """
        import subprocess

        import pytest

        from trio_accept.testing import http_responder

        @pytest.mark.tls_server(handler=http_responder)
        def test_curl(tls_server, tls_ca_path):
            out = subprocess.run(
                ["curl", "--silent", "--show-error", "--cacert", str(tls_ca_path),
                 "--max-time", "10", tls_server.url + "hello"],
                check=True, capture_output=True,
            ).stdout
            assert out == b"GET /hello\\n"
            assert tls_server.wait_for_connection().server_name == "localhost"
        """,
    )
    run(pytester).assert_outcomes(passed=1)


def test_asyncio_client(pytester: pytest.Pytester) -> None:
    make_test_file(
        pytester,
        """
        import asyncio

        def test_asyncio(tls_server, tls_client_context):
            async def main():
                reader, writer = await asyncio.open_connection(
                    "localhost", tls_server.port, ssl=tls_client_context
                )
                writer.write(b"hello")
                await writer.drain()
                answer = await reader.readexactly(5)
                writer.close()
                await writer.wait_closed()
                return answer

            assert asyncio.run(main()) == b"hello"
            record = tls_server.wait_for_connection()
            assert (record.server_name, record.bytes_received) == ("localhost", 5)
        """,
    )
    run(pytester).assert_outcomes(passed=1)


def test_trio_clients(pytester: pytest.Pytester) -> None:
    make_test_file(
        pytester,
        """
        import pytest
        import trio

        from trio_accept.testing import http_responder

        async def exchange(port, context, data):
            stream = await trio.open_ssl_over_tcp_stream("localhost", port, ssl_context=context)
            async with stream:
                await stream.send_all(data)
                return await stream.receive_some()

        @pytest.mark.trio
        async def test_trio_server(tls_trio_server, tls_client_context):
            assert await exchange(tls_trio_server.port, tls_client_context, b"abc") == b"abc"
            record = await tls_trio_server.wait_for_connection()
            assert (record.server_name, record.bytes_received, record.bytes_sent) == (
                "localhost", 3, 3
            )

        @pytest.mark.trio
        @pytest.mark.tls_server(handler=http_responder)
        async def test_trio_server_marker(tls_trio_server, tls_client_context):
            answer = await exchange(
                tls_trio_server.port, tls_client_context, b"GET / HTTP/1.1\\r\\n\\r\\n"
            )
            assert answer.startswith(b"HTTP/1.1 200 OK")

        @pytest.mark.trio
        async def test_threaded_server_from_trio(tls_server, tls_client_context):
            assert await exchange(tls_server.port, tls_client_context, b"xyz") == b"xyz"
            record = await trio.to_thread.run_sync(tls_server.wait_for_connection)
            assert record.server_name == "localhost"
        """,
    )
    run(pytester).assert_outcomes(passed=3)


def test_trio_mode(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\ntrio_mode = true\n")
    make_test_file(
        pytester,
        """
        async def test_trio_server(tls_trio_server):
            assert tls_trio_server.url == f"https://localhost:{tls_trio_server.port}/"
        """,
    )
    run(pytester).assert_outcomes(passed=1)


def test_no_leaks(pytester: pytest.Pytester) -> None:
    # In a fresh process, so that the counts are the inner run's own.
    make_test_file(
        pytester,
        """
        import os
        import socket
        import threading

        import pytest

        START = {}
        PORTS = []

        def open_fds():
            return sorted(os.listdir("/proc/self/fd"))

        def test_000_start():
            START["threads"] = threading.active_count()
            START["fds"] = open_fds()

        @pytest.mark.parametrize("i", range(30))
        def test_server(tls_server, tls_client_context, i):
            PORTS.append(tls_server.port)
            with socket.create_connection((tls_server.host, tls_server.port)) as raw:
                with tls_client_context.wrap_socket(raw, server_hostname="localhost") as tls:
                    tls.sendall(b"%d" % i)
                    assert tls.recv(10) == b"%d" % i
            assert tls_server.wait_for_connection().code == 1

        def test_zzz_nothing_left():
            # Threads and descriptors (listening sockets included) are back to where
            # they were. (Not "the ports refuse": a freed port may serve another test.)
            assert len(PORTS) == 30
            assert threading.active_count() == START["threads"]
            assert open_fds() == START["fds"]
        """,
    )
    pytester.runpytest_subprocess(*STRICT, "-p", "no:randomly").assert_outcomes(passed=32)


def test_marker_misuse(pytester: pytest.Pytester) -> None:
    make_test_file(
        pytester,
        """
        import pytest

        from trio_accept.testing import echo, http_responder

        @pytest.mark.tls_server(handler=echo, alpn=["h2"])
        def test_unknown_argument(tls_server):
            pass

        # (Not a lone callable: pytest would take the marker as a decorator of it.)
        @pytest.mark.tls_server("http", handler=http_responder)
        def test_positional(tls_server):
            pass

        @pytest.mark.tls_server(handler="http")
        def test_not_callable(tls_server):
            pass

        @pytest.mark.tls_server(handler=echo)
        @pytest.mark.parametrize("tls_server", [http_responder], indirect=True)
        def test_both(tls_server):
            pass

        @pytest.mark.tls_server(handler=echo)
        def test_no_server():
            pass

        def test_trio_server_in_sync_test(tls_trio_server):
            pass
        """,
    )
    result = run(pytester)
    result.assert_outcomes(errors=6)
    result.stdout.fnmatch_lines_random(
        [
            "*@pytest.mark.tls_server takes only handler=..., not alpn=",
            "*@pytest.mark.tls_server takes only handler=..., not 'http'",
            "*the handler of tls_server must be an async function*got 'http'",
            "*tls_server is both parametrized and marked with @pytest.mark.tls_server*",
            "*test_no_server uses neither: add the fixture or drop the marker",
            "*tls_trio_server runs in the nursery of a Trio test, and "
            "test_trio_server_in_sync_test is not one*",
        ]
    )


def test_scenarios(pytester: pytest.Pytester) -> None:
    make_test_file(
        pytester,
        """
        import socket
        import ssl

        import pytest

        SERVERS = []

        def handshake(server, context):
            with socket.create_connection((server.host, server.port), timeout=10) as raw:
                with context.wrap_socket(raw, server_hostname="localhost") as tls:
                    return tls.version()

        def test_expired(tls_scenario, tls_client_context):
            server = tls_scenario("expired")
            SERVERS.append(server)
            with pytest.raises(ssl.SSLCertVerificationError) as info:
                handshake(server, tls_client_context)
            assert info.value.verify_code == 10

        def test_several_and_client_cert(tls_scenario, tls_ca):
            servers = [tls_scenario("client-cert-required"), tls_scenario("tls1.3-only")]
            SERVERS.extend(servers)
            mtls, modern = servers
            assert mtls.ca is tls_ca
            context = mtls.client_context()
            mtls.client_cert.configure_cert(context)
            handshake(mtls, context)
            assert mtls.wait_for_connection().peer_certificate is not None
            assert handshake(modern, modern.client_context()) == "TLSv1.3"

        def test_all_closed_at_teardown():
            # The handles, not the ports: a freed port may already serve something else.
            assert len(SERVERS) == 3
            assert not any(server.running for server in SERVERS)

        def test_unknown_name(tls_scenario):
            tls_scenario("expird")
        """,
    )
    result = run(pytester, "-p", "no:randomly")
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(
        ["*ValueError: unknown scenario 'expird'; known scenarios: expired, not-yet-valid, *"]
    )
