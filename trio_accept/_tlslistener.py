"""TLSListener: a :class:`trio.abc.Listener` whose ``accept()`` returns finished handshakes.

The same :class:`~trio_accept.Server` as :func:`~trio_accept.serve_tls` runs underneath, in
hand-off mode: instead of calling a handler, each connection's task gives its finished
stream to whoever calls :meth:`TLSListener.accept`, through an unbuffered channel.
"""

from __future__ import annotations

import ssl
from typing import Any, final

import trio

from ._config import CertificateStore, dev_context
from ._handshake import CLOSE_TIMEOUT, HANDSHAKE_TIMEOUT, HELLO_TIMEOUT, PLAIN_HTTP_RESPONSE
from ._listener import MAX_HANDSHAKES, HandshakeErrorHook, Server, ServerStats
from ._stream import TLSStream


@final
class TLSListener(trio.abc.Listener[TLSStream]):
    """A :class:`trio.abc.Listener` whose :meth:`accept` returns finished handshakes only.

    Handshakes run concurrently in the background, with the same deadlines and admission
    limits as :func:`serve_tls`; failed ones are counted in :attr:`stats` and reported to
    ``on_handshake_error``, never raised from :meth:`accept`. The background work needs a
    nursery: pass one, or use the listener as an ``async with`` block, which opens its
    own. Either way, :meth:`aclose` stops it.

    Args:
        transport_listener: Where connections come from (a ``trio.SocketListener``).
        ssl_context: A server :class:`ssl.SSLContext`, a :class:`CertificateStore`, or
            ``None`` for development certificates.
        nursery: Where to run the handshakes; ``None`` to run them in the ``async with``
            block's own nursery.

    The other arguments are those of :func:`serve_tls`.

    Resource handling:
        A stream returned by :meth:`accept` is yours to close. Streams finished but not
        yet accepted when the listener closes are closed by it.
    """

    def __init__(
        self,
        transport_listener: trio.abc.Listener[trio.abc.Stream],
        ssl_context: ssl.SSLContext | CertificateStore | None = None,
        *,
        nursery: trio.Nursery | None = None,
        hello_timeout: float = HELLO_TIMEOUT,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        close_timeout: float = CLOSE_TIMEOUT,
        max_handshakes: int = MAX_HANDSHAKES,
        tolerate_ragged_eof: bool = False,
        plain_http_response: bytes | None = PLAIN_HTTP_RESPONSE,
        on_handshake_error: HandshakeErrorHook | None = None,
        proxy_protocol: bool = False,
    ) -> None:
        self.transport_listener: trio.abc.Listener[trio.abc.Stream] = transport_listener
        # Unbuffered: a finished handshake waits in its own task until accept() takes it.
        self._send, self._receive = trio.open_memory_channel[TLSStream](0)
        self._server = Server(
            [transport_listener],
            ssl_context if ssl_context is not None else dev_context(),
            self._send,
            hello_timeout=hello_timeout,
            handshake_timeout=handshake_timeout,
            close_timeout=close_timeout,
            idle_timeout=None,
            max_connections=None,
            max_handshakes=max_handshakes,
            shutdown_grace=0,
            tolerate_ragged_eof=tolerate_ragged_eof,
            plain_http_response=plain_http_response,
            on_handshake_error=on_handshake_error,
            proxy_protocol=proxy_protocol,
        )
        self._own_nursery: trio.Nursery | None = None
        self._nursery_manager: Any = None
        if nursery is not None:
            self._server.start(nursery)

    @property
    def stats(self) -> ServerStats:
        """A snapshot of the counters (see :class:`ServerStats`)."""
        return self._server.stats

    async def __aenter__(self) -> TLSListener:
        if not self._server.started:
            self._nursery_manager = trio.open_nursery()
            nursery = await self._nursery_manager.__aenter__()
            self._server.start(nursery)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            await self.aclose()
        finally:
            if self._nursery_manager is not None:
                manager, self._nursery_manager = self._nursery_manager, None
                await manager.__aexit__(*exc_info)

    async def accept(self) -> TLSStream:
        """Wait for the next connection whose handshake has completed.

        Raises:
            trio.ClosedResourceError: the listener was closed.
        """
        try:
            return await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise trio.ClosedResourceError("this TLSListener was closed") from None

    async def aclose(self) -> None:
        """Stop accepting, shed the handshakes in flight, close unclaimed streams."""
        self._send.close()
        await self._server.shutdown(grace=0)
        await self._receive.aclose()


async def open_tls_listeners(
    port: int,
    ssl_context: ssl.SSLContext | CertificateStore | None = None,
    *,
    nursery: trio.Nursery,
    host: str | bytes | None = None,
    backlog: int | None = None,
    **options: Any,
) -> list[TLSListener]:
    """Open TCP listeners on ``port`` and wrap each in a :class:`TLSListener` running in
    ``nursery`` -- the TLS counterpart of :func:`trio.open_tcp_listeners`.

    ``options`` are :class:`TLSListener`'s keyword arguments.
    """
    transport_listeners = await trio.open_tcp_listeners(port, host=host, backlog=backlog)
    return [
        TLSListener(listener, ssl_context, nursery=nursery, **options)
        for listener in transport_listeners
    ]
