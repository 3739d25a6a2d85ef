"""The ``info`` handler: a small HTTP/1.1 server that describes the connection it runs on.

Point a client, a browser or a load balancer at it and it answers every request with what
the server saw of that connection: the client's address (the original one when a PROXY
header came first), the TLS version, cipher, ALPN protocol, server name and client
certificate, whether the session was resumed, how long the handshake took, and the
request itself. JSON by default; a small HTML page when the client prefers ``text/html``
(a browser).

The HTTP side is deliberately small and strict -- a debugging tool must not be the
weakest part of a server:

- One request at a time per connection, in order (pipelined requests wait in the buffer).
  HTTP/1.1 connections stay open between requests; HTTP/1.0 ones only with
  ``Connection: keep-alive``; ``Connection: close`` gets its response, then close_notify.
- Every request is bounded: its head in bytes (:data:`MAX_HEAD_BYTES`, ``431``) and
  header count (:data:`MAX_HEADERS`, ``431``), its body (:data:`MAX_BODY_BYTES`, ``413``;
  read and thrown away), and its time from first byte to last (:data:`REQUEST_TIMEOUT`,
  ``408``). The wait *between* requests is the listener's ``idle_timeout``, and a
  connection serves at most :data:`MAX_REQUESTS` requests.
- Anything malformed gets ``400`` and the connection is closed: a request line that is
  not ``METHOD TARGET HTTP/x.y``, a header line without a colon or with obsolete line
  folding, control characters, a missing or repeated ``Host`` (HTTP/1.1), a bad or
  conflicting ``Content-Length``. HTTP versions other than 1.x get ``505``.
- ``Transfer-Encoding`` (chunked request bodies) is not supported: ``411 Length
  Required`` (``400`` with a ``Content-Length`` too, or from HTTP/1.0), then close.
  Request bodies are for testing a proxy's upload path, and every client can send
  ``Content-Length``.
- ``Expect: 100-continue`` is answered with ``100 Continue`` before the body is read;
  ``HEAD`` gets the headers of the ``GET`` answer.
- After an error answer the connection reads and discards what the client is still
  sending for a moment (bounded in bytes and time, like nginx's lingering close), so
  that closing does not turn into a TCP reset that destroys the answer in flight.

Under a :class:`~trio_accept.Server`, a graceful shutdown closes idle connections at
once and makes the answer in progress the connection's last (``Connection: close``).
"""

from __future__ import annotations

import email.utils
import html
import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, cast, final

import trio

from ._listener import Server, current_server

if TYPE_CHECKING:
    from ._stream import TLSInfo, TLSStream

#: A request head (request line and headers) larger than this gets ``431``: the same
#: order as nginx's ``large_client_header_buffers`` (8 KiB per line) and Node's 16 KiB.
MAX_HEAD_BYTES: Final = 16384
#: Header fields per request; more gets ``431`` (Apache's ``LimitRequestFields``).
MAX_HEADERS: Final = 100
#: Request bodies are read and thrown away up to this size; larger ones get ``413``
#: (nginx's ``client_max_body_size`` default).
MAX_BODY_BYTES: Final = 1 << 20
#: Seconds from a request's first byte to the end of its body; then ``408``. nginx's
#: ``client_header_timeout`` is 60 s: long enough for a slow link, short enough that a
#: client dripping a byte now and then cannot keep a connection forever.
REQUEST_TIMEOUT: Final = 60.0
#: Requests served on one connection before it is closed (nginx's ``keepalive_requests``).
MAX_REQUESTS: Final = 1000
#: After an error answer: how long, and how many bytes, to keep reading what the client
#: still sends before closing (a close with unread data makes the kernel send a reset,
#: which can destroy the answer before the client read it).
LINGER_SECONDS: Final = 2.0
LINGER_BYTES: Final = 1 << 20
#: What we call ourselves in the ``Server`` header.
SERVER_NAME: Final = "trio-accept"

# RFC 9110 tokens (method, header name) and the request line (RFC 9112 section 3).
_TOKEN: Final = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_REQUEST_LINE: Final = re.compile(rb"(" + _TOKEN + rb") ([^\x00-\x20\x7f]+) HTTP/([0-9])\.([0-9])")
_HEADER_LINE: Final = re.compile(rb"(" + _TOKEN + rb"):[ \t]*(.*?)[ \t]*")
# A field value: visible characters, spaces, tabs, and obs-text (bytes >= 0x80).
_FIELD_VALUE: Final = re.compile(rb"[^\x00-\x08\x0a-\x1f\x7f]*")
# The blank line that ends a head; bare LF line endings are accepted (RFC 9112 2.2).
_HEAD_END: Final = re.compile(rb"\r?\n\r?\n")
_REASONS: Final = {
    100: "Continue",
    200: "OK",
    400: "Bad Request",
    408: "Request Timeout",
    411: "Length Required",
    413: "Content Too Large",
    417: "Expectation Failed",
    431: "Request Header Fields Too Large",
    505: "HTTP Version Not Supported",
}


class _HTTPError(Exception):
    """A request we answer with an error status, then close the connection."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _ClientGone(Exception):
    """The client closed its side before a whole request arrived."""


@final
@dataclass(frozen=True, slots=True)
class _Request:
    """A parsed request head. Names and values are decoded as ISO-8859-1, byte for byte."""

    method: str
    target: str
    version: tuple[int, int]
    headers: tuple[tuple[str, str], ...]

    def values(self, name: str) -> list[str]:
        """The values of every ``name`` field (case-insensitive), in order."""
        name = name.lower()
        return [value for field, value in self.headers if field.lower() == name]

    def tokens(self, name: str) -> set[str]:
        """The comma-separated, case-insensitive tokens of every ``name`` field."""
        return {
            token.strip().lower()
            for value in self.values(name)
            for token in value.split(",")
            if token.strip()
        }

    @property
    def http_version(self) -> str:
        return f"HTTP/{self.version[0]}.{self.version[1]}"

    @property
    def keep_alive(self) -> bool:
        """Whether the client wants the connection kept open (RFC 9112 section 9.3)."""
        connection = self.tokens("connection")
        if self.version >= (1, 1):
            return "close" not in connection
        return "keep-alive" in connection


def parse_head(head: bytes) -> _Request:
    """Parse a request head (without its final blank line) into a :class:`_Request`.

    Raises:
        _HTTPError: ``400`` for anything malformed, ``431`` for too many fields, ``505``
            for an HTTP version other than 1.x.
    """
    lines = [line.removesuffix(b"\r") for line in head.split(b"\n")]
    request_line = _REQUEST_LINE.fullmatch(lines[0])
    if request_line is None:
        raise _HTTPError(400, "malformed request line (expected METHOD TARGET HTTP/1.1)")
    method, target, major, minor = request_line.groups()
    version = (int(major), int(minor))
    if version[0] != 1:
        raise _HTTPError(505, f"HTTP/{version[0]}.{version[1]} is not supported: use HTTP/1.1")
    if len(lines) - 1 > MAX_HEADERS:
        raise _HTTPError(431, f"more than {MAX_HEADERS} header fields")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if line[:1] in (b" ", b"\t"):
            raise _HTTPError(400, "obsolete line folding in the header")
        field = _HEADER_LINE.fullmatch(line)
        if field is None:
            raise _HTTPError(400, "malformed header line (expected Name: value)")
        name, value = field.groups()
        if _FIELD_VALUE.fullmatch(value) is None:
            raise _HTTPError(400, "control character in a header value")
        headers.append((name.decode("latin-1"), value.decode("latin-1")))
    request = _Request(method.decode("ascii"), target.decode("latin-1"), version, tuple(headers))
    hosts = request.values("host")
    if len(hosts) > 1 or (not hosts and version >= (1, 1)):
        raise _HTTPError(400, "an HTTP/1.1 request needs exactly one Host header")
    return request


def body_length(request: _Request) -> int:
    """How many body bytes follow the head (RFC 9112 section 6.3).

    Raises:
        _HTTPError: ``411``/``400`` for ``Transfer-Encoding``, ``400`` for a bad or
            conflicting ``Content-Length``, ``413`` for a body over :data:`MAX_BODY_BYTES`.
    """
    lengths = {
        item.strip() for value in request.values("content-length") for item in value.split(",")
    }
    if request.values("transfer-encoding"):
        if lengths or request.version < (1, 1):
            raise _HTTPError(400, "Transfer-Encoding with Content-Length, or from HTTP/1.0")
        raise _HTTPError(411, "chunked request bodies are not supported: send Content-Length")
    if not lengths:
        return 0
    if len(lengths) > 1:
        raise _HTTPError(400, "conflicting Content-Length values")
    [text] = lengths
    if not (text.isascii() and text.isdigit()):
        raise _HTTPError(400, "Content-Length is not a number")
    length = int(text)
    if length > MAX_BODY_BYTES:
        raise _HTTPError(413, f"request bodies are limited to {MAX_BODY_BYTES} bytes")
    return length


def wants_html(request: _Request) -> bool:
    """Whether the ``Accept`` header ranks ``text/html`` above ``application/json``.

    Ties go to JSON (``curl`` sends ``*/*``); browsers rank ``text/html`` first.
    """
    ranges: list[tuple[str, float]] = []
    for value in request.values("accept"):
        for item in value.split(","):
            media, *parameters = (part.strip() for part in item.split(";"))
            quality = 1.0
            for parameter in parameters:
                key, _, number = parameter.partition("=")
                if key.strip().lower() == "q":
                    try:
                        quality = float(number)
                    except ValueError:
                        quality = 0.0
            if media:
                ranges.append((media.lower(), quality))

    def quality_of(media_type: str) -> float:
        kind = media_type.partition("/")[0] + "/*"
        # The most specific range that matches decides (RFC 9110 section 12.5.1).
        for candidate in (media_type, kind, "*/*"):
            for media, quality in ranges:
                if media == candidate:
                    return quality
        return 0.0

    return quality_of("text/html") > quality_of("application/json")


# -- what we say about the connection ---------------------------------------------------


#: A socket address is (host, port, ...) for IP; anything shorter is not one.
_HOST_AND_PORT: Final = 2


def _host_and_port(address: object) -> tuple[str, object] | None:
    if not isinstance(address, tuple):
        return None
    parts = cast("tuple[object, ...]", address)
    return (str(parts[0]), parts[1]) if len(parts) >= _HOST_AND_PORT else None


def address_text(address: Any) -> str:
    """``host:port`` for IPv4, ``[host]:port`` for IPv6, else the address as text."""
    host_and_port = _host_and_port(address)
    if host_and_port is None:
        return "unknown" if address is None else str(address)
    host, port = host_and_port
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _address(address: Any) -> dict[str, Any] | str | None:
    host_and_port = _host_and_port(address)
    if host_and_port is None:
        return None if address is None else str(address)
    return {"host": host_and_port[0], "port": host_and_port[1]}


# getpeercert()'s long attribute names -> RFC 4514's short ones.
_SHORT_NAMES: Final = {
    "commonName": "CN",
    "countryName": "C",
    "localityName": "L",
    "stateOrProvinceName": "ST",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "streetAddress": "STREET",
    "domainComponent": "DC",
    "userId": "UID",
}


def _escape_rdn_value(value: str) -> str:
    # RFC 4514 section 2.4.
    escaped = re.sub(r'([,+"\\<>;])', r"\\\1", value).replace("\x00", "\\00")
    if escaped.startswith(("#", " ")):
        escaped = "\\" + escaped
    if escaped.endswith(" ") and not escaped.endswith("\\ "):
        escaped = escaped[:-1] + "\\ "
    return escaped


def distinguished_name(name: Any) -> str:
    """An RFC 4514 string (``CN=client,O=Example``) from :meth:`ssl.SSLSocket.getpeercert`'s
    form of a name (a sequence of RDNs, most general first)."""
    rdns: list[str] = []
    for rdn in name:
        rdns.append(
            "+".join(
                f"{_SHORT_NAMES.get(key, key)}={_escape_rdn_value(str(value))}"
                for key, value in rdn
            )
        )
    return ",".join(reversed(rdns))


def _certificate(certificate: dict[str, Any] | None) -> dict[str, Any] | None:
    if not certificate:
        return None
    return {
        "subject": distinguished_name(certificate.get("subject", ())),
        "issuer": distinguished_name(certificate.get("issuer", ())),
        "serial_number": certificate.get("serialNumber"),
        "not_before": certificate.get("notBefore"),
        "not_after": certificate.get("notAfter"),
        "subject_alt_names": [
            f"{kind}:{value}" for kind, value in certificate.get("subjectAltName", ())
        ],
    }


def describe(
    info: TLSInfo,
    request: _Request,
    *,
    body_bytes: int = 0,
    request_number: int = 1,
    keep_alive: bool = True,
) -> dict[str, Any]:
    """The facts the ``info`` handler answers with, as a JSON-ready dict."""
    proxy = info.proxy
    target = request.target
    path, question, query = target.partition("?")
    return {
        "client_address": _address(info.client_address),
        "peer_address": _address(info.peer_address),
        "proxy": None
        if proxy is None
        else {
            "version": proxy.version,
            "command": proxy.command,
            "source": _address(proxy.source),
            "destination": _address(proxy.destination),
        },
        "tls": {
            "version": info.version,
            "cipher": info.cipher,
            "alpn_protocol": info.alpn_protocol,
            "server_name": info.server_name,
            "resumed": info.resumed,
            "handshake_seconds": round(info.handshake_seconds, 6),
            "client_certificate": _certificate(info.peer_certificate),
        },
        "request": {
            "method": request.method,
            "target": target,
            "path": path,
            "query": query if question else None,
            "http_version": request.http_version,
            "host": next(iter(request.values("host")), None),
            "headers": [list(header) for header in request.headers],
            "body_bytes": body_bytes,
        },
        "connection": {"request_number": request_number, "keep_alive": keep_alive},
    }


def render_html(facts: dict[str, Any]) -> str:
    """A small HTML page of :func:`describe`'s facts; every value escaped.

    Each value is a ``<dd>`` with a stable ``id`` (``tls-version``, ``cipher``, ...).
    """
    tls = facts["tls"]
    request = facts["request"]
    certificate = tls["client_certificate"]

    def text(value: Any) -> str:
        return "none" if value is None else str(value)

    def address(value: Any) -> str:
        if isinstance(value, dict):
            return address_text((value["host"], value["port"]))
        return text(value)

    rows = [
        ("client-address", "Client address", address(facts["client_address"])),
        ("peer-address", "Peer address (TCP)", address(facts["peer_address"])),
        ("tls-version", "TLS version", text(tls["version"])),
        ("cipher", "Cipher", text(tls["cipher"])),
        ("alpn-protocol", "ALPN protocol", text(tls["alpn_protocol"])),
        ("server-name", "Server name (SNI)", text(tls["server_name"])),
        (
            "client-certificate",
            "Client certificate",
            "none" if certificate is None else certificate["subject"],
        ),
        ("resumed", "Session resumed", "yes" if tls["resumed"] else "no"),
        ("handshake-time", "Handshake time", f"{tls['handshake_seconds'] * 1000:.3f} ms"),
        (
            "request-line",
            "Request",
            f"{request['method']} {request['target']} {request['http_version']}",
        ),
        ("host", "Host", text(request["host"])),
    ]
    items = "\n".join(
        f'  <dt>{html.escape(label)}</dt><dd id="{key}">{html.escape(value)}</dd>'
        for key, label, value in rows
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        "<title>trio-accept: this connection</title>\n</head>\n<body>\n"
        "<h1>This connection, as the server sees it</h1>\n"
        f'<dl id="connection">\n{items}\n</dl>\n'
        "</body>\n</html>\n"
    )


def _response(
    status: int,
    content_type: str,
    body: bytes,
    *,
    close: bool,
    keep_alive_header: bool = False,
    head_only: bool = False,
) -> bytes:
    headers = [
        f"HTTP/1.1 {status} {_REASONS[status]}",
        f"Server: {SERVER_NAME}",
        f"Date: {email.utils.formatdate(usegmt=True)}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Cache-Control: no-store",
    ]
    if status == 200:  # noqa: PLR2004
        headers.append("Vary: Accept")
    if close:
        headers.append("Connection: close")
    elif keep_alive_header:
        headers.append("Connection: keep-alive")
    head = ("\r\n".join(headers) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + body


# -- the driver ---------------------------------------------------------------------------


@final
class _Session:
    """One connection's requests, served in order."""

    __slots__ = ("_buffer", "_idle", "_stopping", "stream")

    def __init__(self, stream: TLSStream) -> None:
        self.stream = stream
        self._buffer = bytearray()
        # Cancelled by stop(): the wait for the next request, while nothing of it is in.
        self._idle: trio.CancelScope | None = None
        self._stopping = False

    def stop(self) -> None:
        """A shutdown began: close now if idle, else after the answer in progress."""
        self._stopping = True
        if self._idle is not None:
            self._idle.cancel()

    async def serve(self) -> None:
        for number in range(1, MAX_REQUESTS + 1):
            if not await self._wait_for_request():
                return
            try:
                with trio.fail_after(REQUEST_TIMEOUT):
                    request = parse_head(await self._receive_head())
                    length = body_length(request)
                    await self._receive_body(request, length)
            except _HTTPError as error:
                await self._refuse(error)
                return
            except trio.TooSlowError:
                await self._refuse(_HTTPError(408, "the request took too long to arrive"))
                return
            except _ClientGone:
                return
            keep_alive = request.keep_alive and number < MAX_REQUESTS and not self._stopping
            facts = describe(
                self.stream.info,
                request,
                body_bytes=length,
                request_number=number,
                keep_alive=keep_alive,
            )
            if wants_html(request):
                content_type, body = "text/html; charset=utf-8", render_html(facts)
            else:
                content_type, body = "application/json", json.dumps(facts, indent=2) + "\n"
            await self.stream.send_all(
                _response(
                    200,
                    content_type,
                    body.encode("utf-8"),
                    close=not keep_alive,
                    keep_alive_header=request.version < (1, 1),
                    head_only=request.method == "HEAD",
                )
            )
            if not keep_alive:
                await self.stream.aclose()
                return

    async def _wait_for_request(self) -> bool:
        """Wait for the first byte of the next request; False if there will be none
        (the client closed or vanished, or a shutdown began)."""
        if self._buffer:
            return True
        data = b""
        with trio.CancelScope() as idle:
            self._idle = idle
            if self._stopping:
                idle.cancel()
            try:
                data = await self.stream.receive_some()
            except trio.BrokenResourceError:
                pass  # a reset or a ragged EOF between requests: how many HTTP clients leave
            finally:
                self._idle = None
        if idle.cancelled_caught or not data:
            return False
        self._buffer += data
        return True

    async def _receive(self) -> None:
        data = await self.stream.receive_some()
        if not data:
            raise _ClientGone
        self._buffer += data

    async def _receive_head(self) -> bytes:
        skipped = 0  # empty lines before the request line (RFC 9112 section 2.2)
        searched = 0
        while True:
            if searched == 0:
                stripped = self._buffer.lstrip(b"\r\n")
                skipped += len(self._buffer) - len(stripped)
                self._buffer[:] = stripped
            end = _HEAD_END.search(self._buffer, max(searched - 3, 0))
            size = skipped + (end.start() if end is not None else len(self._buffer))
            if size > MAX_HEAD_BYTES:
                raise _HTTPError(431, f"the request head is larger than {MAX_HEAD_BYTES} bytes")
            if end is not None:
                head = bytes(self._buffer[: end.start()])
                del self._buffer[: end.end()]
                return head
            searched = len(self._buffer)
            await self._receive()

    async def _receive_body(self, request: _Request, length: int) -> None:
        """Read and discard ``length`` bytes of body, answering ``Expect`` first."""
        expect = request.tokens("expect")
        if expect - {"100-continue"}:
            raise _HTTPError(417, "the only expectation we meet is 100-continue")
        if expect and length > len(self._buffer) and request.version >= (1, 1):
            await self.stream.send_all(b"HTTP/1.1 100 Continue\r\n\r\n")
        remaining = length
        while True:
            taken = min(remaining, len(self._buffer))
            del self._buffer[:taken]
            remaining -= taken
            if not remaining:
                return
            await self._receive()

    async def _refuse(self, error: _HTTPError) -> None:
        """Answer an error, linger briefly, and close with close_notify."""
        body = f"{error.status} {_REASONS[error.status]}: {error.message}\n".encode()
        try:
            await self.stream.send_all(
                _response(error.status, "text/plain; charset=utf-8", body, close=True)
            )
            received = 0
            with trio.move_on_after(LINGER_SECONDS):
                while received < LINGER_BYTES:
                    data = await self.stream.receive_some()
                    if not data:
                        break
                    received += len(data)
        except trio.BrokenResourceError:
            pass  # the client is gone: nothing more to tell it
        await self.stream.aclose()


def _server() -> Server | None:
    try:
        return current_server()
    except RuntimeError:
        return None


async def info_handler(stream: TLSStream) -> None:
    """Answer HTTP/1.1 requests with a description of the connection they came on.

    A connection handler for :func:`~trio_accept.serve_tls`, :func:`~trio_accept.open_server`
    or a stream you accepted yourself. Every request gets ``200`` and a JSON object
    (or, when its ``Accept`` header prefers ``text/html``, a small HTML page) with the
    client's address (:attr:`TLSInfo.client_address`, the original one behind a PROXY
    protocol load balancer) and the TCP peer's, the TLS version, cipher, ALPN protocol,
    server name (SNI), client certificate (subject, issuer, ...), whether the session
    was resumed, the handshake's duration, and the request line and headers::

        $ curl --cacert ca.pem https://localhost:8443/
        {"client_address": {"host": "127.0.0.1", "port": 50312}, ...,
         "tls": {"version": "TLSv1.3", "cipher": "TLS_AES_256_GCM_SHA384", ...}, ...}

    It speaks HTTP/1.1 only: give the server no ALPN list, or one whose only HTTP
    protocol is ``http/1.1``.

    Args:
        stream: A finished TLS connection.

    Error handling:
        Malformed or oversized requests get a ``4xx``/``505`` answer, then the connection
        is closed; the module notes list the limits. A client that resets the
        connection or leaves without close_notify *between* requests just ends it; in
        the middle of a request, the :exc:`trio.BrokenResourceError` propagates (a
        :class:`~trio_accept.Server` logs it as one line).

    Resource handling:
        Returns when the client closes, after a response that ends the connection (then
        it has sent close_notify with :meth:`TLSStream.aclose`), or at once when a
        graceful shutdown of the server running it begins while the connection is idle.
        Waits between requests are bounded only by the listener's ``idle_timeout``:
        set one.
    """
    session = _Session(stream)
    server = _server()
    if server is None:
        await session.serve()
        return
    broken: trio.BrokenResourceError | None = None
    async with trio.open_nursery() as nursery:

        async def stop_at_shutdown() -> None:
            await server.wait_shutting_down()
            session.stop()

        nursery.start_soon(stop_at_shutdown)
        try:
            await session.serve()
        except trio.BrokenResourceError as exc:
            broken = exc  # raised below, outside the nursery, not in an exception group
        nursery.cancel_scope.cancel()
    if broken is not None:
        raise broken
