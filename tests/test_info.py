"""The ``info`` handler: HTTP parsing and limits over in-memory transports (real TLS),
then real sockets with Python's ssl module and curl as clients."""

from __future__ import annotations

import json
import re
import shutil
import socket
import ssl
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import pytest
import trio
import trio.testing
import trustme
from cryptography import x509
from helpers import tls_pair
from trio.testing import memory_stream_pair

import trio_accept
from trio_accept import TLSStream, info_handler, open_server, server_context
from trio_accept._info import (
    LINGER_SECONDS,
    MAX_BODY_BYTES,
    MAX_HEAD_BYTES,
    MAX_HEADERS,
    REQUEST_TIMEOUT,
    distinguished_name,
)

if TYPE_CHECKING:
    from pathlib import Path

# Safety net against a hung peer (real clock); every exchange takes milliseconds.
GUARD: Final = 20
#: What Chromium sends as Accept for a page.
BROWSER_ACCEPT: Final = (
    "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,"
    "image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7"
)


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        assert self.headers["content-type"] == "application/json"
        return json.loads(self.body)


@dataclass
class Client:
    """A minimal HTTP/1.1 client over any trio stream: sends bytes, parses responses."""

    stream: trio.abc.Stream
    buffer: bytearray = field(default_factory=bytearray)

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def _fill(self) -> None:
        data = await self.stream.receive_some()
        assert data, f"the server closed; unread: {bytes(self.buffer)!r}"
        self.buffer += data

    async def response(self, *, head: bool = False) -> Response:
        while b"\r\n\r\n" not in self.buffer:
            await self._fill()
        raw, _, rest = bytes(self.buffer).partition(b"\r\n\r\n")
        self.buffer[:] = rest
        status_line, *lines = raw.decode("latin-1").split("\r\n")
        version, status, _ = status_line.split(" ", 2)
        assert version == "HTTP/1.1"
        headers: dict[str, str] = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.lower()] = value.strip()
        length = 0 if head or int(status) < 200 else int(headers["content-length"])
        while len(self.buffer) < length:
            await self._fill()
        body = bytes(self.buffer[:length])
        del self.buffer[:length]
        return Response(int(status), headers, body)

    async def closed(self) -> bool:
        """True once the server's close_notify arrives with nothing unread before it."""
        return not self.buffer and await self.stream.receive_some() == b""

    async def get(
        self, target: str = "/", *headers: str, method: str = "GET", host: str = "localhost"
    ) -> Response:
        lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", *headers, "", ""]
        await self.send("\r\n".join(lines).encode())
        return await self.response(head=method == "HEAD")


@dataclass
class Session:
    """The client's end of an in-memory TLS connection whose server end runs
    info_handler; ``done`` is set when the handler returns."""

    client: Client
    tls: trio.SSLStream[trio.abc.Stream]
    server: TLSStream
    done: trio.Event
    errors: list[BaseException]


async def start_session(
    nursery: trio.Nursery,
    server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
) -> Session:
    server_transport, client_transport = memory_stream_pair()
    server, tls = await tls_pair(
        server_transport, client_transport, server_context, client_context
    )
    done = trio.Event()
    errors: list[BaseException] = []

    async def run() -> None:
        try:
            await info_handler(server)
        except trio.BrokenResourceError as exc:
            errors.append(exc)
        finally:
            done.set()

    nursery.start_soon(run)
    return Session(Client(tls), tls, server, done, errors)


# -- one connection, in memory ---------------------------------------------------------


async def test_json_describes_the_connection(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    async with trio.open_nursery() as nursery:
        session = await start_session(nursery, server_context, client_context)
        response = await session.client.get("/path?x=1", "X-Test: yes")
        assert response.status == 200
        assert response.headers["cache-control"] == "no-store"
        facts = response.json()
        tls = session.tls
        assert facts["tls"]["version"] == tls.version()
        assert facts["tls"]["cipher"] == tls.cipher()[0]
        assert facts["tls"]["server_name"] == "localhost"
        assert facts["tls"]["alpn_protocol"] is None
        assert facts["tls"]["resumed"] is False
        assert facts["tls"]["client_certificate"] is None
        assert facts["tls"]["handshake_seconds"] == round(session.server.info.handshake_seconds, 6)
        # Memory streams have no addresses.
        assert facts["client_address"] is None
        assert facts["peer_address"] is None
        assert facts["proxy"] is None
        assert facts["request"] == {
            "method": "GET",
            "target": "/path?x=1",
            "path": "/path",
            "query": "x=1",
            "http_version": "HTTP/1.1",
            "host": "localhost",
            "headers": [["Host", "localhost"], ["X-Test", "yes"]],
            "body_bytes": 0,
        }
        assert facts["connection"] == {"request_number": 1, "keep_alive": True}
        await session.tls.aclose()
        await session.done.wait()
    assert session.errors == []


async def test_keep_alive_and_pipelining(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    async with trio.open_nursery() as nursery:
        session = await start_session(nursery, server_context, client_context)
        client = session.client
        first = await client.get("/one")
        assert "connection" not in first.headers
        # Two requests in one write: answered in order, on the same connection.
        await client.send(
            b"GET /two HTTP/1.1\r\nHost: a\r\n\r\nGET /three HTTP/1.1\r\nHost: a\r\n\r\n"
        )
        second, third = await client.response(), await client.response()
        numbers = [r.json()["connection"]["request_number"] for r in (first, second, third)]
        assert numbers == [1, 2, 3]
        assert [r.json()["request"]["path"] for r in (second, third)] == ["/two", "/three"]
        assert not session.done.is_set()
        await session.tls.aclose()
        await session.done.wait()
    assert session.errors == []


@pytest.mark.parametrize(
    ("request_head", "connection"),
    [
        pytest.param("GET / HTTP/1.0\r\n", "close", id="http1.0"),
        pytest.param("GET / HTTP/1.0\r\nConnection: Upgrade, Close\r\n", "close", id="1.0-close"),
        pytest.param(
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n", "close", id="1.1-close"
        ),
        pytest.param("GET / HTTP/1.1\r\nHost: a\r\nConnection: CLOSE\r\n", "close", id="case"),
    ],
)
async def test_close_after_the_response(
    request_head: str,
    connection: str,
    server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
) -> None:
    async with trio.open_nursery() as nursery:
        session = await start_session(nursery, server_context, client_context)
        await session.client.send(request_head.encode() + b"\r\n")
        response = await session.client.response()
        assert response.headers["connection"] == connection
        assert response.json()["connection"]["keep_alive"] is False
        # close_notify (trio's SSLStream raises on a ragged EOF), and the handler is done.
        assert await session.client.closed()
        await session.done.wait()
    assert session.errors == []


async def test_http1_0_keep_alive(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    async with trio.open_nursery() as nursery:
        session = await start_session(nursery, server_context, client_context)
        request = b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
        for number in (1, 2):
            await session.client.send(request)
            response = await session.client.response()
            assert response.headers["connection"] == "keep-alive"
            facts = response.json()
            assert facts["request"]["http_version"] == "HTTP/1.0"
            assert facts["request"]["host"] is None  # optional in HTTP/1.0
            assert facts["connection"] == {"request_number": number, "keep_alive": True}
        await session.tls.aclose()


async def test_head_has_the_headers_of_get_and_no_body(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    async with trio.open_nursery() as nursery:
        session = await start_session(nursery, server_context, client_context)
        head = await session.client.get("/", method="HEAD")
        assert head.body == b""
        assert int(head.headers["content-length"]) > 100
        # Had a body followed, this would read it as the next response's head.
        after = await session.client.get("/")
        assert after.json()["connection"]["request_number"] == 2
        assert after.json()["request"]["method"] == "GET"
        await session.tls.aclose()


async def test_request_body_is_read_and_discarded(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    async with trio.open_nursery() as nursery:
        session = await start_session(nursery, server_context, client_context)
        client = session.client
        body = bytes(range(256)) * 1000  # 256000 bytes: several TLS records
        await client.send(
            b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(body) + body
        )
        facts = (await client.response()).json()
        assert facts["request"]["method"] == "POST"
        assert facts["request"]["body_bytes"] == len(body)
        # The body did not leak into the next request.
        assert (await client.get("/next")).json()["request"]["path"] == "/next"
        await session.tls.aclose()


async def test_expect_100_continue(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    async with trio.open_nursery() as nursery:
        session = await start_session(nursery, server_context, client_context)
        client = session.client
        await client.send(
            b"PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        )
        interim = await client.response()
        assert (interim.status, interim.body) == (100, b"")
        await client.send(b"hello")
        assert (await client.response()).json()["request"]["body_bytes"] == 5
        await session.tls.aclose()


async def test_blank_lines_before_a_request_are_skipped(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    async with trio.open_nursery() as nursery:
        session = await start_session(nursery, server_context, client_context)
        await session.client.send(b"\r\n\n\r\nGET /x HTTP/1.1\nHost: a\n\n")  # bare LFs too
        assert (await session.client.response()).json()["request"]["path"] == "/x"
        await session.tls.aclose()


def field_lines(count: int) -> str:
    return "".join(f"X-{number}: {number}\r\n" for number in range(count))


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        pytest.param(b"garbage\r\n\r\n", 400, id="garbage"),
        pytest.param(b"GET /\r\n\r\n", 400, id="http0.9"),
        pytest.param(b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400, id="two-spaces"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n", 400, id="no-colon"),
        pytest.param(b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400, id="space-before-colon"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n  folded\r\n\r\n", 400, id="obs-fold"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n", 400, id="bare-cr"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a\x01\r\n\r\n", 400, id="control-char"),
        pytest.param(b"GET / HTTP/1.1\r\n\r\n", 400, id="no-host"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, id="two-hosts"),
        pytest.param(b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505, id="http2"),
        pytest.param(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505, id="h2-preface"),
        pytest.param(
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
            411,
            id="chunked",
        ),
        pytest.param(
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Length: 3\r\n\r\nabc",
            400,
            id="te-and-cl",
        ),
        pytest.param(
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400, id="te-in-1.0"
        ),
        pytest.param(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", 400, id="cl-neg"
        ),
        pytest.param(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 4\r\n\r\n", 400, id="cl-conflict"
        ),
        pytest.param(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY_BYTES + 1),
            413,
            id="body-too-large",
        ),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nExpect: magic\r\n\r\n", 417, id="expect"),
        pytest.param(
            b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"x" * MAX_HEAD_BYTES + b"\r\n\r\n",
            431,
            id="head-too-large",
        ),
        pytest.param(
            b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"x" * MAX_HEAD_BYTES,
            431,
            id="head-too-large-unfinished",
        ),
        pytest.param(b"\r\n" * (MAX_HEAD_BYTES // 2 + 1), 431, id="endless-blank-lines"),
        pytest.param(
            b"GET / HTTP/1.1\r\nHost: a\r\n" + field_lines(MAX_HEADERS).encode() + b"\r\n",
            431,
            id="too-many-fields",
        ),
    ],
)
async def test_bad_requests_get_an_error_then_close_notify(
    request_bytes: bytes,
    status: int,
    server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
) -> None:
    async with trio.open_nursery() as nursery:
        session = await start_session(nursery, server_context, client_context)
        await session.client.send(request_bytes)
        response = await session.client.response()
        assert response.status == status
        assert response.headers["connection"] == "close"
        assert response.headers["content-type"] == "text/plain; charset=utf-8"
        assert response.body.startswith(b"%d " % status)
        # The server lingers, reading, until the client closes: then close_notify.
        await session.tls.aclose()
        await session.done.wait()
    assert session.errors == []


async def test_the_limits_are_not_off_by_one(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    async with trio.open_nursery() as nursery:
        session = await start_session(nursery, server_context, client_context)
        client = session.client
        # Exactly MAX_HEADERS fields, and a head of exactly MAX_HEAD_BYTES: served.
        fields = field_lines(MAX_HEADERS - 2)  # plus Host and X
        head = f"GET / HTTP/1.1\r\nHost: a\r\n{fields}X: "
        head += "x" * (MAX_HEAD_BYTES - len(head))
        assert len(head) == MAX_HEAD_BYTES
        await client.send(head.encode() + b"\r\n\r\n")
        facts = (await client.response()).json()
        assert len(facts["request"]["headers"]) == MAX_HEADERS
        await client.send(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % MAX_BODY_BYTES
            + b"\0" * MAX_BODY_BYTES
        )
        assert (await client.response()).json()["request"]["body_bytes"] == MAX_BODY_BYTES
        await session.tls.aclose()


async def test_a_slow_request_gets_408(
    autojump_clock: trio.testing.MockClock,
    server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
) -> None:
    async with trio.open_nursery() as nursery:
        session = await start_session(nursery, server_context, client_context)
        start = trio.current_time()
        await session.client.send(b"GET / HTTP/1.1\r\nHost: a\r\n")  # and nothing more
        response = await session.client.response()
        assert response.status == 408
        assert trio.current_time() - start == pytest.approx(REQUEST_TIMEOUT)
        # A client that neither sends nor closes is let go after the lingering time.
        assert await session.client.closed()
        assert trio.current_time() - start == pytest.approx(REQUEST_TIMEOUT + LINGER_SECONDS)
        await session.done.wait()


async def test_idle_connection_waits_for_the_client(
    autojump_clock: trio.testing.MockClock,
    server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
) -> None:
    """Between requests the handler sets no deadline of its own (the listener's
    idle_timeout does): a day later, the connection still serves."""
    async with trio.open_nursery() as nursery:
        session = await start_session(nursery, server_context, client_context)
        await session.client.get("/")
        await trio.sleep(24 * 3600)
        assert (await session.client.get("/")).json()["connection"]["request_number"] == 2
        await session.tls.aclose()


async def test_client_leaving_between_requests_is_a_normal_end(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    async with trio.open_nursery() as nursery:
        session = await start_session(nursery, server_context, client_context)
        await session.client.get("/")
        # No close_notify: a ragged EOF, how many HTTP clients leave.
        await session.tls.transport_stream.aclose()
        await session.done.wait()
    assert session.errors == []


async def test_client_leaving_mid_request_raises(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    async with trio.open_nursery() as nursery:
        session = await start_session(nursery, server_context, client_context)
        await session.client.send(b"GET / HTTP/1.1\r\nHost: a\r\n")
        await session.tls.transport_stream.aclose()
        await session.done.wait()
    [error] = session.errors
    assert isinstance(error, trio_accept.TLSError)
    assert error.reason == "eof"


async def test_client_close_notify_mid_request_just_ends(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    async with trio.open_nursery() as nursery:
        session = await start_session(nursery, server_context, client_context)
        await session.client.send(b"GET / HTTP/1.1\r\nHost: a\r\n")
        await session.tls.aclose()
        await session.done.wait()
    assert session.errors == []


@pytest.mark.parametrize(
    ("accept", "html"),
    [
        pytest.param(None, False, id="none"),
        pytest.param("*/*", False, id="curl"),
        pytest.param("application/json", False, id="json"),
        pytest.param("text/html", True, id="html"),
        pytest.param(BROWSER_ACCEPT, True, id="browser"),
        pytest.param("text/html;q=0.5, application/json", False, id="json-preferred"),
        pytest.param("application/json;q=0.1, text/*", True, id="text-range"),
        pytest.param("text/html;q=0, */*", False, id="html-refused"),
        pytest.param("text/html;q=bogus, */*;q=0.1", False, id="bad-q"),
    ],
)
async def test_content_negotiation(
    accept: str | None,
    html: bool,
    server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
) -> None:
    async with trio.open_nursery() as nursery:
        session = await start_session(nursery, server_context, client_context)
        headers = [] if accept is None else [f"Accept: {accept}"]
        response = await session.client.get("/", *headers)
        assert response.headers["vary"] == "Accept"
        expected = "text/html; charset=utf-8" if html else "application/json"
        assert response.headers["content-type"] == expected
        await session.tls.aclose()


async def test_html_page_escapes_what_the_client_sent(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    async with trio.open_nursery() as nursery:
        session = await start_session(nursery, server_context, client_context)
        response = await session.client.get(
            "/<script>alert(1)</script>", "Accept: text/html", host="x\"&'<b>"
        )
        await session.tls.aclose()
    page = response.body.decode()
    assert "<script>" not in page
    assert "<b>" not in page
    assert "/&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert f'<dd id="tls-version">{session.tls.version()}</dd>' in page
    assert f'<dd id="cipher">{session.tls.cipher()[0]}</dd>' in page
    assert '<dd id="server-name">localhost</dd>' in page
    assert '<dd id="client-certificate">none</dd>' in page
    assert '<dd id="host">x&quot;&amp;&#x27;&lt;b&gt;</dd>' in page


async def test_a_connection_serves_a_bounded_number_of_requests(
    monkeypatch: pytest.MonkeyPatch,
    server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
) -> None:
    monkeypatch.setattr("trio_accept._info.MAX_REQUESTS", 3)
    async with trio.open_nursery() as nursery:
        session = await start_session(nursery, server_context, client_context)
        responses = [await session.client.get("/") for _ in range(3)]
        assert ["connection" in r.headers for r in responses] == [False, False, True]
        assert await session.client.closed()


def test_distinguished_name_is_rfc4514(ca: trustme.CA) -> None:
    subject = (
        (("countryName", "FR"),),
        (("organizationName", 'Acme, "Inc"'),),
        (("commonName", "a+b"), ("userId", "42")),
        (("emailAddress", " x@example.org "),),
    )
    assert distinguished_name(subject) == (
        'emailAddress=\\ x@example.org\\ ,CN=a\\+b+UID=42,O=Acme\\, \\"Inc\\",C=FR'
    )


# -- real sockets ----------------------------------------------------------------------


async def test_python_ssl_client_sees_itself(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    """A blocking Python ssl client over TCP: the JSON matches what the client knows."""
    client_context.maximum_version = ssl.TLSVersion.TLSv1_2

    def fetch(port: int) -> tuple[dict[str, Any], tuple[str, int], str, str, bytes]:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=GUARD) as sock,
            client_context.wrap_socket(
                sock, server_hostname="localhost", suppress_ragged_eofs=False
            ) as tls,
        ):
            tls.sendall(b"GET /me HTTP/1.0\r\n\r\n")
            received = b""
            while data := tls.recv(65536):  # until close_notify; a ragged EOF raises
                received += data
            cipher = tls.cipher()
            version = tls.version()
            assert cipher is not None
            assert version is not None
            _, _, body = received.partition(b"\r\n\r\n")
            return json.loads(body), tls.getsockname(), version, cipher[0], received

    with trio.fail_after(GUARD):
        async with open_server(
            info_handler, host="127.0.0.1", ssl_context=server_context
        ) as server:
            port = server.addresses[0][1]
            facts, (host, local_port), version, cipher, raw = await trio.to_thread.run_sync(
                fetch, port
            )
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n")
    assert facts["client_address"] == {"host": host, "port": local_port}
    assert facts["peer_address"] == facts["client_address"]
    assert facts["tls"]["version"] == version == "TLSv1.2"
    assert facts["tls"]["cipher"] == cipher
    assert facts["request"]["http_version"] == "HTTP/1.0"
    assert server.stats.handler_errors == 0


async def test_shutdown_closes_idle_connections_and_finishes_the_answer_in_progress(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    """Under a Server: an idle connection is closed (close_notify) as soon as a shutdown
    begins, without waiting for the grace period; a request whose head is partly in
    gets its answer, with Connection: close."""
    outcomes: list[str] = []

    async def handler(stream: TLSStream) -> None:
        try:
            await info_handler(stream)
        except trio.Cancelled:
            outcomes.append("cancelled")
            raise
        outcomes.append("returned")

    async def connect(port: int) -> Client:
        transport = await trio.open_tcp_stream("127.0.0.1", port)
        tls = trio.SSLStream(transport, client_context, server_hostname="localhost")
        return Client(tls)

    with trio.fail_after(GUARD):
        async with open_server(
            handler, host="127.0.0.1", ssl_context=server_context, shutdown_grace=3600
        ) as server:
            port = server.addresses[0][1]
            idle, busy = await connect(port), await connect(port)
            assert (await idle.get("/")).status == 200
            await busy.send(b"GET /last HTTP/1.1\r\nHost: a\r\n")
            await trio.testing.wait_all_tasks_blocked()  # the handler has those bytes
            server.start_shutdown()
            assert await idle.closed()
            await busy.send(b"\r\n")
            last = await busy.response()
            assert last.headers["connection"] == "close"
            assert last.json()["connection"]["keep_alive"] is False
            assert await busy.closed()
            for client in (idle, busy):
                await client.stream.aclose()
    assert outcomes == ["returned", "returned"]
    assert server.stats.handler_errors == 0


# -- curl ------------------------------------------------------------------------------

CURL = shutil.which("curl")
needs_curl = pytest.mark.skipif(CURL is None, reason="curl is not installed")


@dataclass
class CurlRun:
    responses: list[Any]  # the JSON bodies, in order
    local_ports: list[int]
    stderr: str


async def curl(ca_file: Path, *arguments: str) -> CurlRun:
    """Run curl with the arguments (its URLs among them); one JSON document per URL."""
    assert CURL is not None
    marker = "\n--curl-local-port:"
    result = await trio.run_process(
        [CURL, "--silent", "--show-error", "--verbose", "--cacert", str(ca_file),
         "--max-time", str(GUARD), "--write-out", marker + "%{local_port}\n", *arguments],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )  # fmt: skip
    stderr = result.stderr.decode()
    assert result.returncode == 0, stderr
    parts = result.stdout.decode().split(marker)
    bodies, ports = [parts[0]], list[int]()
    for part in parts[1:]:
        port, _, body = part.partition("\n")
        ports.append(int(port))
        bodies.append(body)
    return CurlRun([json.loads(body) for body in bodies[:-1]], ports, stderr)


def curl_tls(stderr: str) -> tuple[str, str]:
    """The version and cipher curl -v reports."""
    match = re.search(r"SSL connection using (\S+) / (\S+)", stderr)
    assert match is not None, stderr
    return match[1], match[2]


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(path)
    return path


@pytest.fixture
def cert_files(ca: trustme.CA, tmp_path: Path) -> tuple[Path, Path]:
    """A server certificate for localhost and info.example, as files."""
    leaf = ca.issue_cert("localhost", "info.example", "127.0.0.1")
    cert, key = tmp_path / "server.pem", tmp_path / "server-key.pem"
    leaf.cert_chain_pems[0].write_to_path(cert)
    leaf.private_key_pem.write_to_path(key)
    return cert, key


@needs_curl
@pytest.mark.interop
async def test_curl_keep_alive_two_urls_one_connection(
    cert_files: tuple[Path, Path], ca_file: Path
) -> None:
    context = server_context(*cert_files)
    with trio.fail_after(GUARD):
        async with open_server(info_handler, host="127.0.0.1", ssl_context=context) as server:
            port = server.addresses[0][1]
            run = await curl(
                ca_file,
                "--http1.1",
                f"https://localhost:{port}/one",
                f"https://localhost:{port}/two",
            )
    assert "Re-using existing connection" in run.stderr
    first, second = run.responses
    assert run.local_ports[0] == run.local_ports[1]
    for number, facts in enumerate(run.responses, 1):
        assert facts["client_address"] == {"host": "127.0.0.1", "port": run.local_ports[0]}
        assert facts["connection"] == {"request_number": number, "keep_alive": True}
        assert facts["request"]["host"] == f"localhost:{port}"
        assert (facts["tls"]["version"], facts["tls"]["cipher"]) == curl_tls(run.stderr)
        assert facts["tls"]["server_name"] == "localhost"
    assert [first["request"]["path"], second["request"]["path"]] == ["/one", "/two"]
    assert server.stats.completed == 1


@needs_curl
@pytest.mark.interop
@pytest.mark.parametrize(
    "option",
    [
        pytest.param(["--http1.0"], id="http1.0"),
        pytest.param(["--http1.1", "--header", "Connection: close"], id="connection-close"),
    ],
)
async def test_curl_connection_closed_after_one_response(
    option: list[str], cert_files: tuple[Path, Path], ca_file: Path
) -> None:
    context = server_context(*cert_files)
    with trio.fail_after(GUARD):
        async with open_server(info_handler, host="127.0.0.1", ssl_context=context) as server:
            port = server.addresses[0][1]
            url = f"https://localhost:{port}/"
            run = await curl(ca_file, *option, url, url)
    assert "Re-using existing connection" not in run.stderr
    assert "< Connection: close" in run.stderr
    assert run.local_ports[0] != run.local_ports[1]
    assert [facts["connection"]["keep_alive"] for facts in run.responses] == [False, False]
    assert server.stats.completed == 2
    assert server.stats.failed == {}


@needs_curl
@pytest.mark.interop
@pytest.mark.parametrize(
    ("alpn", "chosen"),
    [
        pytest.param(None, None, id="no-alpn"),
        pytest.param(["http/1.1"], "http/1.1", id="http1.1"),
    ],
)
async def test_curl_sni_and_alpn(
    alpn: list[str] | None, chosen: str | None, cert_files: tuple[Path, Path], ca_file: Path
) -> None:
    context = server_context(*cert_files, alpn=alpn)
    with trio.fail_after(GUARD):
        async with open_server(info_handler, host="127.0.0.1", ssl_context=context) as server:
            port = server.addresses[0][1]
            # curl offers h2 and http/1.1; the server's list decides.
            run = await curl(
                ca_file,
                "--resolve",
                f"info.example:{port}:127.0.0.1",
                f"https://info.example:{port}/sni",
            )
    [facts] = run.responses
    assert facts["tls"]["server_name"] == "info.example"
    assert facts["request"]["host"] == f"info.example:{port}"
    assert facts["tls"]["alpn_protocol"] == chosen
    if chosen is None:
        assert "ALPN: server did not agree on a protocol" in run.stderr
    else:
        assert f"ALPN: server accepted {chosen}" in run.stderr


@needs_curl
@pytest.mark.interop
async def test_curl_client_certificate(
    ca: trustme.CA, cert_files: tuple[Path, Path], ca_file: Path, tmp_path: Path
) -> None:
    client_cert = ca.issue_cert("client@example.org", common_name="curl client")
    cert, key = tmp_path / "client.pem", tmp_path / "client-key.pem"
    client_cert.cert_chain_pems[0].write_to_path(cert)
    client_cert.private_key_pem.write_to_path(key)
    context = server_context(*cert_files, client_ca=ca_file, require_client_cert=True)
    with trio.fail_after(GUARD):
        async with open_server(info_handler, host="127.0.0.1", ssl_context=context) as server:
            port = server.addresses[0][1]
            run = await curl(
                ca_file, "--cert", str(cert), "--key", str(key), f"https://localhost:{port}/"
            )
    [facts] = run.responses
    certificate = facts["tls"]["client_certificate"]
    loaded = x509.load_pem_x509_certificate(client_cert.cert_chain_pems[0].bytes())
    assert certificate["subject"] == loaded.subject.rfc4514_string()
    assert "CN=curl client" in certificate["subject"]
    assert certificate["issuer"] == loaded.issuer.rfc4514_string()
    assert certificate["subject_alt_names"] == ["email:client@example.org"]
    assert int(certificate["serial_number"], 16) == loaded.serial_number


@needs_curl
@pytest.mark.interop
async def test_curl_uploads(cert_files: tuple[Path, Path], ca_file: Path, tmp_path: Path) -> None:
    """A body within the limit is counted (curl may send Expect: 100-continue first);
    one over it gets 413 before curl sends it."""
    small, large = tmp_path / "small.bin", tmp_path / "large.bin"
    small.write_bytes(b"s" * 300_000)
    large.write_bytes(b"l" * (MAX_BODY_BYTES + 1))
    context = server_context(*cert_files)
    with trio.fail_after(GUARD):
        async with open_server(info_handler, host="127.0.0.1", ssl_context=context) as server:
            url = f"https://localhost:{server.addresses[0][1]}/up"
            run = await curl(ca_file, "--data-binary", f"@{small}", url)
            assert run.responses[0]["request"]["body_bytes"] == 300_000
            assert run.responses[0]["request"]["method"] == "POST"
            assert CURL is not None
            refused = await trio.run_process(
                [CURL, "--silent", "--cacert", str(ca_file), "--max-time", str(GUARD),
                 "--write-out", "%{http_code}", "--output", "/dev/null",
                 "--data-binary", f"@{large}", url],
                capture_stdout=True,
                check=False,
            )  # fmt: skip
    assert refused.stdout == b"413"
