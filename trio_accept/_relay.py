"""The TLS-terminating proxy: TLS from the client, plain TCP to an upstream server.

What stunnel, hitch and ghostunnel do, as a connection handler. For every finished
handshake, :func:`relay_handler`'s handler connects to the upstream and pipes bytes both
ways::

    client ==TLS==> TLSStream --(client -> upstream pump)--> TCP --> upstream
                              <--(upstream -> client pump)--

Each pump is the loop ``receive_some(CHUNK_SIZE)`` then ``send_all``: it holds at most one
chunk, so a slow reader on one side slows the writer on the other side down through TCP
flow control, and a connection never holds more than two chunks of our memory whatever
the two ends do (backpressure, not buffering).

How a relayed connection ends:

- The client's close_notify ends the client -> upstream direction: the upstream gets a
  TCP FIN (``send_eof``) and may go on answering (a half-close, which HTTP/1.0 clients
  and many other protocols use to say "that was my request").
- The upstream's EOF ends the connection: once the last bytes the upstream sent are
  through, the client gets close_notify and both sides are closed.
- An error on either side (a reset, a broken TLS record, a client that leaves without
  close_notify) closes both sides -- close_notify to the client if its side is still
  sound -- and is logged as one line naming the client and the upstream, never as a
  traceback.
- A failed connection to the upstream (refused, unresolvable, no answer within
  ``connect_timeout``) is logged as one line, and the client gets close_notify.
- A graceful server shutdown lets relayed connections go on until they end or the
  server's grace period runs out; then the handler is cancelled, the upstream connection
  is closed, and the server sends the client its close_notify.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final, cast, final

import trio

from ._info import address_text
from ._proxy import encode_proxy_v2

if TYPE_CHECKING:
    from ._stream import TLSStream

logger = logging.getLogger("trio_accept")

#: What each pump asks for per receive: a few TLS records' worth, enough for bulk
#: transfers to move in large writes while bounding what a connection holds.
CHUNK_SIZE: Final = 65536
#: Default for ``connect_timeout``: Seconds to connect to the upstream (stunnel's and
#: HAProxy's ``timeout connect`` are of this order).
CONNECT_TIMEOUT: Final = 10.0
#: The largest TCP port number.
MAX_PORT: Final = 65535

# A host name (RFC 1123 labels, plus "_" which service names use) or an IPv4 address.
_HOST_NAME: Final = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,251}[A-Za-z0-9_.])?")

#: What :func:`relay_handler` returns: a connection handler.
RelayHandler = Callable[["TLSStream"], Awaitable[None]]


def parse_host_port(text: str, *, default_port: int | None = None) -> tuple[str, int]:
    """Split ``host:port`` or ``[IPv6 address]:port`` into a host and a port number.

    >>> from trio_accept import parse_host_port
    >>> parse_host_port("localhost:8080")
    ('localhost', 8080)
    >>> parse_host_port("[::1]:8080")
    ('::1', 8080)
    >>> parse_host_port("127.0.0.1", default_port=80)
    ('127.0.0.1', 80)

    Args:
        text: The address, as a user wrote it.
        default_port: The port when ``text`` has none; ``None`` makes a port required.

    Returns:
        The host (an IPv6 address without its brackets) and the port.

    Raises:
        ValueError: ``text`` is not such an address; the message says what is wrong.
    """
    if default_port is not None and not 1 <= default_port <= MAX_PORT:
        raise ValueError(f"default_port must be 1-{MAX_PORT}, got {default_port!r}")
    if not text:
        raise ValueError("empty address: expected HOST:PORT")
    host, port_text = _split_bracketed(text) if text.startswith("[") else _split_plain(text)
    if port_text is None:
        if default_port is None:
            raise ValueError(f"{text!r}: missing port: expected HOST:PORT")
        return host, default_port
    if not (port_text.isascii() and port_text.isdigit()):
        raise ValueError(f"{text!r}: the port {port_text!r} is not a number")
    port = int(port_text)
    if not 1 <= port <= MAX_PORT:
        raise ValueError(f"{text!r}: the port must be 1-{MAX_PORT}, got {port}")
    return host, port


def _split_bracketed(text: str) -> tuple[str, str | None]:
    """``[v6addr]:port`` -> the address and the port's text (``None``: no port)."""
    host, bracket, rest = text[1:].partition("]")
    if not bracket:
        raise ValueError(f"{text!r}: missing ']' after the IPv6 address")
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        raise ValueError(f"{text!r}: {host!r} is not an IPv6 address") from None
    if not rest:
        return host, None
    if not rest.startswith(":"):
        raise ValueError(f"{text!r}: expected ':PORT' after the ']'")
    return host, rest[1:]


def _split_plain(text: str) -> tuple[str, str | None]:
    """``host:port`` -> the host and the port's text (``None``: no port)."""
    if text.count(":") > 1:
        raise ValueError(f"{text!r}: write an IPv6 address in brackets, as in [::1]:8080")
    host, colon, port_text = text.partition(":")
    if _HOST_NAME.fullmatch(host) is None:
        raise ValueError(f"{text!r}: {host!r} is not a host name or an IP address")
    return host, port_text if colon else None


def _proxy_header(stream: TLSStream, upstream_name: str) -> bytes:
    """The PROXY v2 header for the upstream: who the client is, and where it connected --
    the load balancer's header passed on when there was one, else this connection's
    addresses.

    When they cannot be told -- a transport without addresses, or a source and a
    destination that one header cannot carry together (an IP client named by the caller
    on a UNIX socket) -- the header says ``LOCAL`` ("no client address") and the upstream
    sees ours; that is logged, since an upstream that trusts the header then
    misattributes the connection.
    """
    info = stream.info
    destination = None
    if info.proxy is not None and info.proxy.destination is not None:
        destination = info.proxy.destination
    elif isinstance(stream.transport_stream, trio.SocketStream):
        destination = stream.transport_stream.socket.getsockname()
    source = info.client_address
    if source is None or destination is None:
        problem = "the connection's addresses are unknown"
    else:
        try:
            return encode_proxy_v2(source, destination)
        except ValueError as exc:  # addresses the header cannot carry together
            problem = str(exc)
    logger.warning(
        "relay %s -> %s: sending a LOCAL PROXY header (no client address): "
        "cannot describe %r -> %r: %s",
        address_text(source),
        upstream_name,
        source,
        destination,
        problem,
    )
    return encode_proxy_v2(None, None)


def relay_handler(
    host: str,
    port: int,
    *,
    proxy_protocol: bool = False,
    connect_timeout: float = CONNECT_TIMEOUT,
) -> RelayHandler:
    """A connection handler that relays every TLS connection to ``host:port`` over TCP.

    Makes the server a TLS-terminating proxy, like stunnel or hitch: the client speaks
    TLS to us, the upstream gets the decrypted bytes on a plain TCP connection, one per
    client connection, and its answers go back encrypted. The module notes describe
    backpressure, half-close, errors and shutdown.

    >>> from trio_accept import relay_handler, serve_tls
    >>> handler = relay_handler("127.0.0.1", 8080)  # then: serve_tls(handler, 8443)

    Args:
        host: The upstream's host name or IP address (resolved for every connection).
        port: The upstream's TCP port.
        proxy_protocol: Begin every upstream connection with a PROXY protocol v2
            header naming the original client (:attr:`TLSInfo.client_address`, so a
            PROXY header we received is passed on) and the address it connected to.
        connect_timeout: Seconds allowed for connecting to the upstream.

    Returns:
        ``async def handler(stream: TLSStream)``, for :func:`serve_tls`,
        :func:`open_server` or a stream you accepted yourself.

    Raises:
        ValueError: ``port`` or ``connect_timeout`` is out of range.

    Error handling:
        The handler raises nothing for a failure of either peer (it logs one line on
        the ``trio_accept`` logger); cancellation propagates.

    Resource handling:
        The upstream connection is closed before the handler returns, and the client's
        stream is closed with close_notify (bounded by its ``close_timeout``), even when
        cancelled (then by the server that runs the handler). Waits are bounded only by
        the peers and the listener's ``idle_timeout``: set one.
    """
    if not 1 <= port <= MAX_PORT:
        raise ValueError(f"port must be 1-{MAX_PORT}, got {port!r}")
    if not connect_timeout > 0:
        raise ValueError(f"connect_timeout must be > 0, got {connect_timeout!r}")
    upstream_name = address_text((host, port))

    async def relay(stream: TLSStream) -> None:
        client_name = address_text(stream.info.client_address)
        try:
            with trio.fail_after(connect_timeout):
                upstream = await trio.open_tcp_stream(host, port)
        except trio.TooSlowError:
            problem = f"no answer within {connect_timeout:g} s"
        except OSError as exc:
            problem = _connect_problem(exc)
        else:
            async with upstream:
                if proxy_protocol:
                    try:
                        await upstream.send_all(_proxy_header(stream, upstream_name))
                    except trio.BrokenResourceError as exc:
                        logger.info("relay %s -> %s: %s", client_name, upstream_name, exc)
                        await stream.aclose()
                        return
                await _Pipe(stream, upstream, client_name, upstream_name).run()
            return
        logger.warning(
            "relay %s -> %s: cannot connect to the upstream: %s",
            client_name,
            upstream_name,
            problem,
        )
        await stream.aclose()

    return relay


@final
class _Pipe:
    """The two pumps of one relayed connection, and the first thing that went wrong."""

    __slots__ = ("_client", "_name", "_nursery", "_problem", "_upstream")

    def __init__(
        self,
        client: trio.abc.Stream,
        upstream: trio.abc.HalfCloseableStream,
        client_name: str,
        upstream_name: str,
    ) -> None:
        self._client = client
        self._upstream = upstream
        self._name = f"{client_name} -> {upstream_name}"
        self._problem: str | None = None
        self._nursery: trio.Nursery | None = None

    async def run(self) -> None:
        """Pipe both ways until the upstream's EOF or an error; then close the client's
        side (close_notify). The caller closes the upstream."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._client_to_upstream)
            nursery.start_soon(self._upstream_to_client)
        if self._problem is not None:
            logger.info("relay %s: %s", self._name, self._problem)
        await self._client.aclose()

    def _stop(self, problem: str | None = None) -> None:
        if problem is not None and self._problem is None:
            self._problem = problem
        assert self._nursery is not None
        self._nursery.cancel_scope.cancel()

    async def _client_to_upstream(self) -> None:
        client, upstream = self._client, self._upstream
        while True:
            try:
                data = await client.receive_some(CHUNK_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self._stop(f"client: {_describe(exc)}")
                return
            try:
                if not data:
                    # close_notify: the client is done sending; the upstream may not be.
                    await upstream.send_eof()
                    return
                await upstream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self._stop(f"upstream: {_describe(exc)}")
                return

    async def _upstream_to_client(self) -> None:
        client, upstream = self._client, self._upstream
        while True:
            try:
                data = await upstream.receive_some(CHUNK_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self._stop(f"upstream: {_describe(exc)}")
                return
            if not data:
                self._stop()  # the upstream is done: so is the connection
                return
            try:
                await client.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self._stop(f"client: {_describe(exc)}")
                return


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _connect_problem(exc: OSError) -> str:
    """The error of a failed connection, with the reasons trio keeps in ``__cause__``
    ("all attempts to connect ... failed" alone does not say why)."""
    cause: BaseException | None = exc.__cause__
    if not isinstance(cause, BaseExceptionGroup):
        return str(exc)
    errors = cast("BaseExceptionGroup[BaseException]", cause).exceptions
    reasons = dict.fromkeys(str(error) for error in errors)
    return f"{exc}: {'; '.join(reasons)}"
