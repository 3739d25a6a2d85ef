"""accept(): the SSL_accept loop, driven by Trio, under two deadlines.

The loop, one round at a time::

    result = engine.accept()           # touch the engine
    flight = engine.data_to_send()
    WANT_READ  -> send the flight, then receive once, loop
    otherwise  -> send the final flight (or flush the alert), stop

A single task owns the engine during the handshake, so "send, then receive" in one round
cannot race anyone. Bytes move through ``_transport.py``: straight on the socket for TCP,
so a round whose bytes had already arrived costs no trip through the scheduler. Every
round is still a cancellation point: one that waited (for bytes, or for room to send)
went through a trio checkpoint, and one that did not checks for cancellation before it
goes on. The client's bytes bound the rounds: each one consumes everything received.

Deadlines (both on trio's clock, both checked by one cancel scope whose deadline moves
once, when the ClientHello is in):

- ``hello_timeout``: from the start until the client's first flight (its complete
  ClientHello) is in. Sheds connections that connect and say nothing, or drip.
- ``handshake_timeout``: from the start until the handshake is done.

With ``proxy_protocol=True``, a PROXY protocol header (v1 or v2, see ``_proxy.py``) is
read first, before the engine exists, under the same ClientHello deadline: a proxy
client that stalls cannot hold its slot any longer than a TLS client could. Its first
byte makes the connection *talking*, like a ClientHello's. The bytes that came after the
header in the same receive (HAProxy usually sends the header and the ClientHello in one
segment) are the engine's first. A missing or malformed header fails the handshake with
reason ``proxy-protocol``, and the client is sent nothing: it is not speaking TLS yet,
so a TLS alert would mean nothing to it.

The same scope lets a listener stop a handshake from outside (:meth:`Handshake.stop`,
to shed it): it then fails with the listener's reason and the client is sent nothing.

Whatever happens -- failure, timeout, cancellation -- the transport is closed before
``accept()`` returns or raises; only a finished :class:`TLSStream` ever leaves it.
"""

from __future__ import annotations

import math
import ssl
from collections.abc import Callable
from contextlib import suppress
from typing import Any, Final, final

import trio

from ._engine import ErrorKind, Reason, Result, TLSEngine
from ._errors import HandshakeError, driver_result, tls_error
from ._proxy import ProxyHeader, ProxyProtocolError, parse_proxy_header
from ._stream import RECEIVE_SIZE, TLSInfo, TLSStream
from ._transport import transport_for

#: Default for ``hello_timeout``: a real client sends its ClientHello within one round
#: trip of connecting; 5 s leaves room for slow links while shedding idle connections.
HELLO_TIMEOUT: Final = 5.0
#: Default for ``handshake_timeout``: two round trips plus certificate checks on a slow
#: client; 10 s, as nginx's and Go's handshake timeouts are of that order.
HANDSHAKE_TIMEOUT: Final = 10.0
#: Default for ``close_timeout``: how long we try to deliver a close_notify or an alert
#: to a peer that may not be reading any more.
CLOSE_TIMEOUT: Final = 1.0


_PLAIN_HTTP_BODY: Final = b"This is a TLS port: connect with https://, not http://.\n"
#: What a client that speaks plain HTTP to the TLS port gets back, instead of silence
#: (nginx does the same; trio, asyncio and Go just close).
PLAIN_HTTP_RESPONSE: Final = (
    b"HTTP/1.1 400 Bad Request\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: %d\r\n"
    b"Connection: close\r\n"
    b"\r\n%s"
) % (len(_PLAIN_HTTP_BODY), _PLAIN_HTTP_BODY)


async def accept(
    transport_stream: trio.abc.Stream,
    ssl_context: ssl.SSLContext,
    *,
    hello_timeout: float = HELLO_TIMEOUT,
    handshake_timeout: float = HANDSHAKE_TIMEOUT,
    close_timeout: float = CLOSE_TIMEOUT,
    tolerate_ragged_eof: bool = False,
    plain_http_response: bytes | None = PLAIN_HTTP_RESPONSE,
    peer_address: Any = None,
    proxy_protocol: bool = False,
) -> TLSStream:
    """Run the server side of a TLS handshake on ``transport_stream``: ``SSL_accept``.

    Moves bytes, retries while OpenSSL wants more input (a checkpoint every round), and
    returns only a finished handshake.

    Args:
        transport_stream: The connection, e.g. a :class:`trio.SocketStream` from
            :func:`trio.serve_tcp`. On failure it is closed for you.
        ssl_context: A server-side :class:`ssl.SSLContext`.
        hello_timeout: Seconds allowed for the client's complete ClientHello to arrive,
            counted from the call. ``math.inf`` disables it.
        handshake_timeout: Seconds allowed for the whole handshake, counted from the
            call. ``math.inf`` disables it.
        close_timeout: Seconds allowed to deliver an alert after a failed handshake, and
            later the close_notify of :meth:`TLSStream.aclose`.
        tolerate_ragged_eof: Passed to the stream: treat a transport EOF without
            close_notify as an ordinary end of stream instead of an error.
        plain_http_response: Sent to a client that speaks plain HTTP to this TLS port
            (reason ``plain-http``) before closing; by default a readable
            ``HTTP/1.1 400`` answer. ``None`` sends nothing.
        peer_address: The peer's address for :attr:`TLSInfo.peer_address` and error
            messages. By default it is read from the transport's socket, if it has one.
        proxy_protocol: Expect a PROXY protocol header (version 1 or 2, told apart by
            its first bytes) in front of the ClientHello, as a load balancer sends it;
            it must arrive within ``hello_timeout``. The header is in
            :attr:`TLSInfo.proxy`, and the original client's address in
            :attr:`TLSInfo.client_address` and in error messages. Only for listeners
            that nothing but the load balancer can reach: whoever can connect can
            claim any address.

    Returns:
        A :class:`TLSStream` whose handshake has completed.

    Raises:
        HandshakeError: The handshake did not complete. ``code`` is 0 when the client
            shut it down with close_notify, -1 otherwise; ``kind`` and ``reason`` say
            why (``timeout`` for our deadlines, ``reset`` for a failed transport,
            ``proxy-protocol`` for a missing or malformed PROXY protocol header).

    Error handling:
        Before raising, any alert OpenSSL queued is sent to the client (best effort,
        within ``close_timeout``), so it learns why, and the transport is closed.

    Resource handling:
        On any exception, cancellation included, the transport is closed before it
        propagates: nothing is left half-open.
    """
    handshake = Handshake(
        transport_stream,
        ssl_context,
        hello_timeout=hello_timeout,
        handshake_timeout=handshake_timeout,
        close_timeout=close_timeout,
        tolerate_ragged_eof=tolerate_ragged_eof,
        plain_http_response=plain_http_response,
        peer_address=peer_address,
        proxy_protocol=proxy_protocol,
    )
    return await handshake.run()


@final
class Handshake:
    """One ``SSL_accept`` in progress, for a listener that must watch it.

    :func:`accept` is ``await Handshake(...).run()``. A listener keeps the object to see
    how far the client got (:attr:`bytes_received` since :attr:`started_at`) when it must
    choose which stalled handshake to shed, without knowing anything of TLS, and to shed
    it (:meth:`stop`).
    """

    __slots__ = (
        "_close_timeout",
        "_engine",
        "_handshake_timeout",
        "_hello_timeout",
        "_io",
        "_on_first_data",
        "_plain_http_response",
        "_proxy_bytes",
        "_proxy_protocol",
        "_scope",
        "_ssl_context",
        "_stop_reason",
        "_tolerate_ragged_eof",
        "failure",
        "peer_address",
        "proxy",
        "started_at",
        "talking_since",
        "transport_stream",
    )

    def __init__(
        self,
        transport_stream: trio.abc.Stream,
        ssl_context: ssl.SSLContext,
        *,
        hello_timeout: float = HELLO_TIMEOUT,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        close_timeout: float = CLOSE_TIMEOUT,
        tolerate_ragged_eof: bool = False,
        plain_http_response: bytes | None = PLAIN_HTTP_RESPONSE,
        peer_address: Any = None,
        on_first_data: Callable[[], None] | None = None,
        proxy_protocol: bool = False,
    ) -> None:
        for name, value in (
            ("hello_timeout", hello_timeout),
            ("handshake_timeout", handshake_timeout),
            ("close_timeout", close_timeout),
        ):
            if not value > 0:  # also rejects NaN
                raise ValueError(f"{name} must be > 0, got {value!r}")
        if peer_address is None and isinstance(transport_stream, trio.SocketStream):
            peer_address = _peer_address_of(transport_stream)
        self.transport_stream: trio.abc.Stream = transport_stream
        self._io = transport_for(transport_stream)
        self.peer_address: Any = peer_address
        #: When the handshake started, on trio's clock.
        self.started_at: float = trio.current_time()
        # Both deadlines and stop() act through this one scope (see the module doc).
        self._scope = trio.CancelScope(
            deadline=self.started_at + min(hello_timeout, handshake_timeout)
        )
        self._stop_reason: Reason | None = None
        #: Why the handshake failed, once it has (set before the client is told).
        self.failure: HandshakeError | None = None
        #: When the client's first bytes arrived, on trio's clock; ``None`` until then.
        self.talking_since: float | None = None
        #: The PROXY protocol header, once it has been read (``proxy_protocol=True``).
        self.proxy: ProxyHeader | None = None
        self._proxy_protocol = proxy_protocol
        self._proxy_bytes = 0
        # The engine (an SSLObject, the costly part) is made when the client first
        # speaks: a connection that never does costs a socket and a task, nothing more.
        self._ssl_context = ssl_context
        self._engine: TLSEngine | None = None
        self._on_first_data = on_first_data
        self._hello_timeout = hello_timeout
        self._handshake_timeout = handshake_timeout
        self._close_timeout = close_timeout
        self._tolerate_ragged_eof = tolerate_ragged_eof
        self._plain_http_response = plain_http_response

    def stop(self, reason: Reason) -> None:
        """Stop the handshake from outside, e.g. to shed it (reason ``evicted`` or
        ``shutdown``): :meth:`run` fails with a :exc:`HandshakeError` of that reason, and
        the client is sent nothing. Once the handshake has failed on its own, its own
        reason stands; once it has completed, this does nothing."""
        if self._stop_reason is None:
            self._stop_reason = reason
        self._scope.cancel()

    @property
    def bytes_received(self) -> int:
        """Bytes the client has sent so far (a PROXY protocol header included)."""
        tls_bytes = 0 if self._engine is None else self._engine.bytes_received
        return self._proxy_bytes + tls_bytes

    @property
    def client_address(self) -> Any:
        """The original client's address: the PROXY header's source once one was read
        and named it, else :attr:`peer_address`."""
        if self.proxy is not None and self.proxy.source is not None:
            return self.proxy.source
        return self.peer_address

    def _via(self) -> Any:
        """The load balancer's address, when the client's is known to be another."""
        if self.proxy is not None and self.proxy.source is not None:
            return self.peer_address
        return None

    def _talking(self) -> None:
        """The client's first bytes arrived (once)."""
        if self.talking_since is None:
            self.talking_since = trio.current_time()
            if self._on_first_data is not None:
                self._on_first_data()
                self._on_first_data = None  # a closure over the listener's record: no cycle

    def _start(self, data: bytes | bytearray) -> TLSEngine:
        """The client's first TLS bytes arrived: make the engine and give it them."""
        self._talking()
        engine = self._engine = TLSEngine(self._ssl_context)
        engine.receive_data(data)
        return engine

    async def run(self) -> TLSStream:
        """Drive the handshake to its end; see :func:`accept`."""
        transport = self.transport_stream
        try:
            with self._scope:
                # Inside the scope: a stop() that came before the task ran takes effect.
                await trio.lowlevel.checkpoint_if_cancelled()
                result, cause = await self._drive()
                if result.kind is not ErrorKind.NONE:
                    error = self._error(result, cause)
                    # Known before the client is told: if telling it is stopped (a
                    # shutdown), the reason it had failed for is kept.
                    self.failure = error
                    self._scope.deadline = math.inf  # telling it has its own bound
                    await self._tell_client(result)
                    raise error from (cause or result.error)
            if self._scope.cancelled_caught:
                # Our deadline, or stop(): nothing more is owed to the client.
                if self.failure is None:
                    reason = self._stop_reason or Reason.TIMEOUT
                    self.failure = self._error(driver_result(reason), None)
                raise self.failure
        except BaseException:
            await trio.aclose_forcefully(transport)
            raise
        engine = self._engine
        assert engine is not None  # a finished handshake had bytes
        info = TLSInfo(
            version=engine.version or "",
            cipher=engine.cipher or "",
            alpn_protocol=engine.alpn_protocol,
            server_name=engine.server_name,
            peer_certificate=engine.peer_certificate(),
            peer_address=self.peer_address,
            handshake_seconds=trio.current_time() - self.started_at,
            resumed=engine.session_reused,
            proxy=self.proxy,
        )
        return TLSStream(
            transport,
            engine,
            info,
            tolerate_ragged_eof=self._tolerate_ragged_eof,
            close_timeout=self._close_timeout,
        )

    def _error(self, result: Result, cause: BaseException | None) -> HandshakeError:
        """The exception for a failed handshake, with what only the driver knows."""
        detail = None
        if result.reason is Reason.TIMEOUT:
            detail = self._timeout_detail()
        elif result.reason is Reason.PROXY_PROTOCOL:
            detail = str(cause)
        elif self._proxy_protocol and self.proxy is None and self._stop_reason is None:
            detail = (
                "while reading the PROXY protocol header"
                if result.reason is Reason.RESET
                else "no PROXY protocol header"
            )
        error = tls_error(
            result,
            handshake=True,
            peer_address=self.client_address,
            via=self._via(),
            server_name=None if self._engine is None else self._engine.server_name,
            detail=detail,
        )
        assert isinstance(error, HandshakeError)
        return error

    async def _tell_client(self, result: Result) -> None:
        """Flush the alert OpenSSL queued -- or, to plain HTTP, our 400 answer -- best
        effort and within ``close_timeout``: the client may be gone already. (A failed
        PROXY protocol header leaves nothing to send: the engine does not exist yet.)"""
        message = b"" if self._engine is None else self._engine.data_to_send()
        if result.reason is Reason.PLAIN_HTTP and self._plain_http_response is not None:
            message += self._plain_http_response
        if not message:
            return
        transport = self.transport_stream
        with trio.move_on_after(self._close_timeout), suppress(trio.BrokenResourceError):
            await transport.send_all(message)
            if isinstance(transport, trio.abc.HalfCloseableStream):
                # Let the answer arrive before the close: closing with unread request
                # bytes in our buffer would make the kernel send a reset, and the
                # client's kernel would discard the answer (nginx's "lingering close").
                await transport.send_eof()
                while await transport.receive_some(RECEIVE_SIZE):
                    pass

    async def _drive(self) -> tuple[Result, BaseException | None]:
        """The loop. Returns the final result and the transport exception behind a
        ``reset``; the final flight of a success has already been sent. Our deadlines
        and :meth:`stop` cancel it from the enclosing scope."""
        io = self._io
        hello_pending = self._hello_timeout < self._handshake_timeout
        try:
            try:
                first = await self._first_bytes()
            except ProxyProtocolError as exc:
                return driver_result(Reason.PROXY_PROTOCOL), exc
            if first is None:  # closed before a PROXY protocol header: not TLS
                return driver_result(Reason.EOF), None
            engine = self._start(first)
            while True:
                result = engine.accept()
                if result.kind is not ErrorKind.WANT_READ:
                    break
                if hello_pending and engine.hello_received:
                    self._scope.deadline = self.started_at + self._handshake_timeout
                    hello_pending = False
                flight = engine.data_to_send()
                waited = await io.send_all(flight) if flight else False
                data, received_late = await io.receive(RECEIVE_SIZE)
                if not (waited or received_late):
                    await trio.lowlevel.checkpoint_if_cancelled()
                engine.receive_data(data)
            if result.kind is ErrorKind.NONE:
                final_flight = engine.data_to_send()  # TLS 1.2: our Finished
                if final_flight:
                    await io.send_all(final_flight)
        except trio.BrokenResourceError as exc:
            return driver_result(Reason.RESET), exc
        return result, None

    async def _first_bytes(self) -> bytes | bytearray | None:
        """The client's first TLS bytes (``b""``: EOF), after its PROXY protocol header
        when one is expected; ``None`` when the connection closed before a byte of
        that header (no engine then: nothing TLS, not even an alert, is owed)."""
        receive = self._io.receive
        if not self._proxy_protocol:
            return (await receive(RECEIVE_SIZE))[0]
        rest = await self._receive_proxy_header()
        if rest is None:
            return None
        return rest or (await receive(RECEIVE_SIZE))[0]  # often the ClientHello came along

    async def _receive_proxy_header(self) -> bytes | None:
        """Read the PROXY protocol header into :attr:`proxy`; return the bytes that came
        after it (maybe none yet), or ``None`` if the connection ended before a byte.

        Bounded in bytes by the parser (it refuses a header past its size limit), in time
        by the caller's deadline; one receive per round, each a cancellation point.

        Raises:
            ProxyProtocolError: the header is malformed, or the connection ended in it.
        """
        receive = self._io.receive
        buffer = bytearray()
        while (parsed := parse_proxy_header(buffer)) is None:
            data, waited = await receive(RECEIVE_SIZE)
            if not waited:
                await trio.lowlevel.checkpoint_if_cancelled()
            if not data:
                if not buffer:
                    return None
                raise ProxyProtocolError(
                    f"the connection closed after {len(buffer)} bytes of a PROXY protocol header"
                )
            self._talking()
            buffer += data
            self._proxy_bytes = len(buffer)
        header, consumed = parsed
        self.proxy = header
        self._proxy_bytes = consumed
        return bytes(buffer[consumed:])

    def _timeout_detail(self) -> str:
        if self._proxy_protocol and self.proxy is None:
            received = f"{self._proxy_bytes} bytes of it" if self._proxy_bytes else "not a byte"
            within = _seconds(min(self._hello_timeout, self._handshake_timeout))
            return f"no complete PROXY protocol header within {within} ({received})"
        if self._engine is None or not self._engine.hello_received:
            return f"no complete ClientHello within {_seconds(self._hello_timeout)}"
        return f"handshake not finished within {_seconds(self._handshake_timeout)}"


def _seconds(value: float) -> str:
    return "ever" if math.isinf(value) else f"{value:g} s"


def _peer_address_of(stream: trio.SocketStream) -> Any:
    try:
        return stream.socket.getpeername()
    except OSError:
        return None  # already disconnected: the handshake will say so
