"""The listener: accept TCP, run every handshake in its own task, hand handlers finished ones.

Shape of a running server (one nursery)::

    accept loop(s)  --admit-->  connection task: handshake --> handler --> aclose
        (never awaits a handshake)      (own cancel scope)   (own cancel scope)

Admission. A connection is *silent* from accept until its client's first bytes, then
*talking* until the handshake ends. Silent connections cost a socket and a sleeping task
(the TLS engine is made at the first byte), so they are never what a newcomer is shed
for; ``hello_timeout`` ends them, and they go first when fds or ``max_connections`` run
out:

- ``max_handshakes`` bounds talking handshakes. When a connection starts talking and the
  bound is passed, the talking handshake with the worst *progress rate* is shed (reason
  ``evicted``): ``(bytes received + PROGRESS_CREDIT) / seconds since accept``,
  oldest first on ties. A hard cap that refuses newcomers is what stalled clients exploit
  (the Rust tls-listener Slowloris advisory); shedding the slowest costs them their slot
  and costs a legitimate client nothing. Silent connections outside the bound mean an
  attacker's idle sockets never churn against each other (nor against anyone else).
- ``max_connections`` bounds connections held (silent, talking or established). When
  the server is full, the oldest silent connection is shed for the newcomer, else the
  slowest talking one; when every held connection is established, the accept loop stops
  accepting (backpressure: newcomers wait in the kernel's backlog).
- Out of file descriptors (``EMFILE``/``ENFILE``), the oldest silent connection is shed
  to free one before accepting again.
- ``hello_timeout`` and ``handshake_timeout`` shed the rest, inside each handshake.

A handler's exception is logged with its peer and ends only its own connection;
cancellation and ``KeyboardInterrupt`` propagate. The stream is closed (close_notify,
bounded by ``close_timeout``) outside the handler's cancel scope, so even a handler that
was cancelled -- by an idle timeout or the end of a shutdown grace period -- says goodbye.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import ssl
from collections import Counter
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Final, final

import trio

from ._config import CertificateStore, dev_context
from ._engine import Reason
from ._errors import HandshakeError, TLSError, driver_result, tls_error
from ._handshake import (
    CLOSE_TIMEOUT,
    HANDSHAKE_TIMEOUT,
    HELLO_TIMEOUT,
    PLAIN_HTTP_RESPONSE,
    Handshake,
)
from ._stream import TLSStream, close_at_end

logger = logging.getLogger("trio_accept")

#: ``accept()`` errors that mean "out of resources right now" rather than "broken": back
#: off and keep serving (the same set and delay as trio's ``serve_listeners``).
ACCEPT_CAPACITY_ERRNOS: Final = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
)
ACCEPT_RETRY_DELAY: Final = 0.1
#: Bytes of progress credited to every handshake when ranking them for eviction: about one
#: ClientHello. Without it a connection accepted a moment ago (0 bytes yet) would rank
#: below a client that has dripped a few bytes over seconds.
PROGRESS_CREDIT: Final = 512
#: Default for ``max_handshakes``: enough for a burst of real clients on one core (a full
#: handshake costs ~1 ms of CPU), small enough that shedding scans stay cheap.
MAX_HANDSHAKES: Final = 256
#: Default for ``shutdown_grace``: handlers get this long to finish after a shutdown
#: begins, then they are cancelled.
SHUTDOWN_GRACE: Final = 5.0

#: A connection handler: receives a finished :class:`TLSStream`; the server closes it.
Handler = Callable[[TLSStream], Awaitable[object]]
#: Called (synchronously) with every failed handshake.
HandshakeErrorHook = Callable[[HandshakeError], object]

_current_server: ContextVar[Server] = ContextVar("trio_accept.current_server")


def current_server() -> Server:
    """The :class:`Server` running the current handler.

    Raises:
        RuntimeError: outside a handler started by a :class:`Server`.
    """
    try:
        return _current_server.get()
    except LookupError:
        raise RuntimeError("current_server() is only available inside a handler") from None


@final
@dataclass(frozen=True, slots=True)
class ServerStats:
    """A snapshot of a server's counters (:attr:`Server.stats`).

    Attributes:
        accepted: TCP connections accepted.
        handshakes_in_flight: Handshakes running now, silent ones included.
        silent: Of those, connections whose client has not sent a byte yet.
        completed: Handshakes completed.
        failed: Failed handshakes by :class:`~trio_accept.Reason` (timeouts and evictions
            included).
        active_connections: Established connections open now (handlers running).
        closed: Established connections closed.
        broken: Of those, connections the peer broke while a handler was using them
            (a reset, a transport EOF without close_notify, a TLS alert), by
            :class:`~trio_accept.Reason`: the :exc:`~trio_accept.TLSError`'s reason, or
            ``reset`` for a transport failure. A completed handshake says nothing about
            how the connection ended; this does.
        idle_closed: Established connections closed by ``idle_timeout``.
        handler_errors: Handlers that raised.
        accept_errors: ``accept()`` failures from exhausted resources (``EMFILE``, ...)
            that were backed off and retried.
    """

    accepted: int
    handshakes_in_flight: int
    silent: int
    completed: int
    failed: dict[Reason, int]
    active_connections: int
    closed: int
    idle_closed: int
    handler_errors: int
    accept_errors: int
    broken: dict[Reason, int] = field(default_factory=dict[Reason, int])

    @property
    def timed_out(self) -> int:
        """Handshakes that failed on a deadline (``failed["timeout"]``)."""
        return self.failed.get(Reason.TIMEOUT, 0)

    @property
    def evicted(self) -> int:
        """Handshakes shed to make room (``failed["evicted"]``)."""
        return self.failed.get(Reason.EVICTED, 0)


@final
class _Connection:
    """The server's record of one connection, from accept to close."""

    __slots__ = ("handshake", "scope", "stop_reason", "stream")

    handshake: Handshake  # while in flight (shed with handshake.stop(reason))
    scope: trio.CancelScope  # once established: cancelled to stop the handler

    def __init__(self) -> None:
        self.stop_reason: Reason | None = None
        self.stream: TLSStream | None = None

    def progress_rate(self, now: float) -> float:
        elapsed = now - self.handshake.started_at
        if elapsed <= 0:
            return math.inf
        return (self.handshake.bytes_received + PROGRESS_CREDIT) / elapsed


@final
class Server:
    """A running TLS server: its listeners, counters, hooks and shutdown.

    Made by :func:`open_server` (or :func:`serve_tls`); handlers reach it with
    :func:`current_server`.
    """

    def __init__(
        self,
        listeners: Sequence[trio.abc.Listener[trio.abc.Stream]],
        ssl_context: ssl.SSLContext | CertificateStore,
        handler: Handler | trio.MemorySendChannel[TLSStream],
        *,
        hello_timeout: float,
        handshake_timeout: float,
        close_timeout: float,
        idle_timeout: float | None,
        max_connections: int | None,
        max_handshakes: int,
        shutdown_grace: float,
        tolerate_ragged_eof: bool,
        plain_http_response: bytes | None,
        on_handshake_error: HandshakeErrorHook | None,
        proxy_protocol: bool = False,
    ) -> None:
        if max_handshakes < 1:
            raise ValueError(f"max_handshakes must be >= 1, got {max_handshakes!r}")
        if max_connections is not None and max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {max_connections!r}")
        if idle_timeout is not None and not idle_timeout > 0:
            raise ValueError(f"idle_timeout must be > 0 or None, got {idle_timeout!r}")
        if not shutdown_grace >= 0:
            raise ValueError(f"shutdown_grace must be >= 0, got {shutdown_grace!r}")
        self._listeners = list(listeners)
        self._ssl_context = ssl_context
        # A handler to call, or (for TLSListener) a channel to hand finished streams to.
        self._handler = handler
        self._handshake_options: dict[str, Any] = {
            "hello_timeout": hello_timeout,
            "handshake_timeout": handshake_timeout,
            "close_timeout": close_timeout,
            "tolerate_ragged_eof": tolerate_ragged_eof,
            "plain_http_response": plain_http_response,
            "proxy_protocol": proxy_protocol,
        }
        self._idle_timeout = idle_timeout
        self._max_connections = max_connections
        self._max_handshakes = max_handshakes
        self._shutdown_grace = shutdown_grace
        self._on_handshake_error = on_handshake_error
        # Handshakes in flight, oldest first (dicts keep insertion order): those whose
        # client has not sent a byte yet, and those that have.
        self._silent: dict[_Connection, None] = {}
        self._handshakes: dict[_Connection, None] = {}
        self._established: set[_Connection] = set()
        self._tasks = 0
        self._nursery: trio.Nursery | None = None
        self._handler_nursery: trio.Nursery | None = None
        self._service_scope = trio.CancelScope()
        self._room = trio.lowlevel.ParkingLot()  # woken when a connection ends
        self._accepting: set[trio.CancelScope] = set()  # accept() calls in progress
        self._drained = trio.lowlevel.ParkingLot()  # woken when a task ends
        self._shutdown_started = trio.Event()
        self._accepted = self._completed = self._closed = 0
        self._idle_closed = self._handler_errors = self._accept_errors = 0
        self._failed: Counter[Reason] = Counter()
        self._broken: Counter[Reason] = Counter()

    # -- what users see -----------------------------------------------------------

    @property
    def listeners(self) -> list[trio.abc.Listener[trio.abc.Stream]]:
        """The transport listeners (``trio.SocketListener`` for TCP)."""
        return list(self._listeners)

    @property
    def addresses(self) -> list[Any]:
        """The bound socket addresses (``getsockname()``) of the TCP listeners."""
        return [
            listener.socket.getsockname()
            for listener in self._listeners
            if isinstance(listener, trio.SocketListener)
        ]

    @property
    def stats(self) -> ServerStats:
        """A snapshot of the counters."""
        return ServerStats(
            accepted=self._accepted,
            handshakes_in_flight=len(self._silent) + len(self._handshakes),
            silent=len(self._silent),
            completed=self._completed,
            failed=dict(self._failed),
            active_connections=len(self._established),
            closed=self._closed,
            idle_closed=self._idle_closed,
            handler_errors=self._handler_errors,
            accept_errors=self._accept_errors,
            broken=dict(self._broken),
        )

    @property
    def started(self) -> bool:
        """True once :meth:`start` has run."""
        return self._nursery is not None

    @property
    def shutting_down(self) -> bool:
        """True once a shutdown has begun: handlers should wrap up."""
        return self._shutdown_started.is_set()

    async def wait_shutting_down(self) -> None:
        """Return once a shutdown has begun (handlers can race their work against it)."""
        await self._shutdown_started.wait()

    def start_shutdown(self, grace: float | None = None) -> None:
        """Begin a graceful :meth:`shutdown` in the background (e.g. from a handler)."""
        if self._nursery is None:
            raise RuntimeError("the server is not running")
        self._nursery.start_soon(self.shutdown, grace)

    async def shutdown(self, grace: float | None = None) -> None:
        """Shut down gracefully, and return once nothing is left.

        Stops accepting at once and sheds every handshake in flight (reason
        ``shutdown``); lets handlers finish for up to ``grace`` seconds (they can see
        :attr:`shutting_down`), then cancels them; every established stream gets its
        close_notify. Returns when every connection task is gone. Safe to call more than
        once, and from several tasks.

        Args:
            grace: Seconds handlers may take; the server's ``shutdown_grace`` by default.

        Warning:
            Awaited from inside a handler, this also waits for that handler; use
            :meth:`start_shutdown` there.
        """
        if grace is None:
            grace = self._shutdown_grace
        if not self._shutdown_started.is_set():
            self._shutdown_started.set()
            logger.info(
                "shutting down: %d handshakes shed, %d connections given %g s",
                len(self._silent) + len(self._handshakes),
                len(self._established),
                grace,
            )
            self._service_scope.cancel()
            # Shielded: in a cancelled scope, the first close's checkpoint would raise
            # and leave the other listeners open.
            with trio.CancelScope(shield=True):
                for listener in self._listeners:
                    await trio.aclose_forcefully(listener)
            for connection in [*self._silent, *self._handshakes]:
                self._shed(connection, Reason.SHUTDOWN)
        with trio.move_on_after(grace):
            while self._established:
                await self._drained.park()
        for connection in list(self._established):
            connection.scope.cancel()
        while self._tasks:
            await self._drained.park()

    # -- running ------------------------------------------------------------------

    def start(self, nursery: trio.Nursery, handler_nursery: trio.Nursery | None = None) -> None:
        """Start the accept loops (and the idle sweeper) in ``nursery``.

        :func:`open_server` and :class:`TLSListener` call this; you do not need to.
        """
        if self._nursery is not None:
            raise RuntimeError("this server was started already")
        self._nursery = nursery
        self._handler_nursery = handler_nursery
        nursery.start_soon(self._serve_listeners)

    async def _serve_listeners(self) -> None:
        """The accept loops and the idle sweeper: what a shutdown cancels first.

        Connections live in the outer nursery, so they outlast this scope.
        """
        with self._service_scope:
            async with trio.open_nursery() as service:
                for listener in self._listeners:
                    service.start_soon(self._accept_loop, listener)
                if self._idle_timeout is not None:
                    service.start_soon(self._sweep_idle, self._idle_timeout)

    def _full(self) -> bool:
        limit = self._max_connections
        if limit is None:
            return False
        return len(self._silent) + len(self._handshakes) + len(self._established) >= limit

    def _in_flight(self) -> bool:
        return bool(self._silent or self._handshakes)

    async def _accept_loop(self, listener: trio.abc.Listener[trio.abc.Stream]) -> None:
        while True:
            # Backpressure: only when full of established connections (a handshake
            # in flight can always be shed for a newcomer).
            while self._full() and not self._in_flight():
                await self._room.park()
            try:
                transport = await self._accept(listener)
            except trio.ClosedResourceError:
                return  # closed by shutdown()
            except OSError as exc:
                if exc.errno not in ACCEPT_CAPACITY_ERRNOS:
                    raise
                self._accept_errors += 1
                await self._out_of_resources(exc.errno)
                continue
            if transport is None:
                continue  # the server filled up while we waited: back to backpressure
            self._accepted += 1
            self._admit(transport)

    async def _accept(
        self, listener: trio.abc.Listener[trio.abc.Stream]
    ) -> trio.abc.Stream | None:
        """``listener.accept()``, or None if the last handshake in flight completed
        meanwhile and left the server full of established connections: :meth:`_establish`
        then cancels the wait (trio's ``accept()`` loses no connection to a cancel)."""
        if self._max_connections is None:
            return await listener.accept()  # never full: nothing to cancel the wait
        with trio.CancelScope() as waiting:
            self._accepting.add(waiting)
            try:
                return await listener.accept()
            finally:
                self._accepting.discard(waiting)
        return None

    async def _out_of_resources(self, error: int) -> None:
        """``accept()`` failed for want of fds or memory: free some, or wait a moment."""
        name = errno.errorcode.get(error, str(error))
        if self._silent and error in (errno.EMFILE, errno.ENFILE):
            # The connection that has waited longest without a word gives its fd up.
            logger.warning("accept() failed: %s; shedding the oldest silent connection", name)
            self._shed(next(iter(self._silent)), Reason.EVICTED)
            with trio.move_on_after(ACCEPT_RETRY_DELAY):
                await self._room.park()  # until a connection task has ended
            return
        logger.warning(
            "accept() failed: %s (%s); retrying in %g s",
            name,
            os.strerror(error),
            ACCEPT_RETRY_DELAY,
        )
        await trio.sleep(ACCEPT_RETRY_DELAY)

    def _establish(self, connection: _Connection) -> None:
        """Count a finished handshake as an established connection."""
        connection.scope = trio.CancelScope()
        self._established.add(connection)
        if self._full() and not self._in_flight():
            for waiting in self._accepting:
                waiting.cancel()

    def _admit(self, transport: trio.abc.Stream) -> None:
        """Register a new connection (shedding one if full) and start its task."""
        if self._full():
            if self._silent:
                self._shed(next(iter(self._silent)), Reason.EVICTED)
            else:
                self._evict()
        store = self._ssl_context
        # A store is consulted for every handshake: a reload reaches new ones only.
        context = store if isinstance(store, ssl.SSLContext) else store.context
        connection = _Connection()
        connection.handshake = Handshake(
            transport,
            context,
            on_first_data=lambda: self._start_talking(connection),
            **self._handshake_options,
        )
        self._silent[connection] = None
        assert self._nursery is not None
        self._tasks += 1
        self._nursery.start_soon(self._connection_task, connection)

    def _start_talking(self, connection: _Connection) -> None:
        """The client's first bytes arrived: its handshake now counts for
        ``max_handshakes``."""
        self._silent.pop(connection, None)
        self._handshakes[connection] = None
        if len(self._handshakes) > self._max_handshakes:
            self._evict()

    def _evict(self) -> None:
        if not self._handshakes:
            return
        now = trio.current_time()
        # min() keeps the first of equals, and the dict is oldest first.
        victim = min(self._handshakes, key=lambda connection: connection.progress_rate(now))
        self._shed(victim, Reason.EVICTED)

    def _shed(self, connection: _Connection, reason: Reason) -> None:
        """Stop a handshake in flight; its task records the failure."""
        connection.handshake.stop(reason)
        self._silent.pop(connection, None)
        self._handshakes.pop(connection, None)

    def _spawn(
        self,
        nursery: trio.Nursery,
        function: Callable[..., Awaitable[None]],
        *args: Any,
    ) -> None:
        self._tasks += 1
        nursery.start_soon(self._task, function, args)

    async def _task(self, function: Callable[..., Awaitable[None]], args: tuple[Any, ...]) -> None:
        try:
            await function(*args)
        finally:
            self._task_done()

    def _task_done(self) -> None:
        self._tasks -= 1
        self._room.unpark_all()
        self._drained.unpark_all()

    async def _connection_task(self, connection: _Connection) -> None:
        # Counted by _admit. Not wrapped in _task: a coroutine frame less to hold for
        # every connection (an idle server holds thousands).
        try:
            stream = await self._handshake(connection)
            if stream is None:
                return
            if self._shutdown_started.is_set():
                await stream.aclose()
                return
            if isinstance(self._handler, trio.MemorySendChannel):
                await self._hand_off(self._handler, stream)
            elif self._handler_nursery is not None:
                self._establish(connection)  # counted from now on, not when it starts
                self._spawn(self._handler_nursery, self._handler_task, connection, stream)
            else:
                self._establish(connection)
                await self._handler_task(connection, stream)
        finally:
            self._task_done()

    async def _hand_off(
        self, channel: trio.MemorySendChannel[TLSStream], stream: TLSStream
    ) -> None:
        """Give a finished stream to whoever calls :meth:`TLSListener.accept`; it is theirs
        from then on. Unclaimed when the listener closes, it is closed here."""
        try:
            await channel.send(stream)
        except BaseException as exc:
            await trio.aclose_forcefully(stream)
            if not isinstance(exc, trio.BrokenResourceError | trio.ClosedResourceError):
                raise

    async def _handshake(self, connection: _Connection) -> TLSStream | None:
        try:
            stream = await connection.handshake.run()
        except HandshakeError as error:  # its own failure, or shed (handshake.stop())
            self._record_failure(error)
            return None
        except trio.Cancelled:
            # The hard stop: the server's own nursery is cancelled mid-handshake. The
            # handshake is counted and reported like one a graceful shutdown sheds.
            self._record_failure(self._shed_failure(connection))
            raise
        finally:
            self._silent.pop(connection, None)
            self._handshakes.pop(connection, None)
        self._completed += 1
        # Only a handshake in flight is ever looked at: let it go (an idle server holds
        # thousands of connections).
        del connection.handshake
        return stream

    def _shed_failure(self, connection: _Connection) -> HandshakeError:
        """Why a handshake cut short by a hard stop failed: ``shutdown`` -- unless it had
        failed already and was still telling the client why."""
        failure = connection.handshake.failure
        if failure is None:
            shed = tls_error(
                driver_result(Reason.SHUTDOWN),
                handshake=True,
                peer_address=connection.handshake.client_address,
            )
            assert isinstance(shed, HandshakeError)
            failure = shed
        return failure

    def _record_failure(self, error: HandshakeError) -> None:
        self._failed[error.reason] += 1
        # One line, never a traceback: a port scan must not flood the log.
        logger.info("%s", error)
        if self._on_handshake_error is not None:
            try:
                self._on_handshake_error(error)
            except Exception:
                logger.exception("on_handshake_error hook failed")

    async def _handler_task(self, connection: _Connection, stream: TLSStream) -> None:
        connection.stream = stream
        peer = stream.info.client_address
        _current_server.set(self)
        try:
            with connection.scope:
                try:
                    assert not isinstance(self._handler, trio.MemorySendChannel)
                    await self._handler(stream)
                except* trio.BrokenResourceError as group:
                    # The peer broke the connection (a reset, a ragged EOF, a TLS alert):
                    # its doing, not a bug in the handler. One line, no traceback; counted,
                    # so that "completed" is not all a user sees of it.
                    error = group.exceptions[0]
                    reason = error.reason if isinstance(error, TLSError) else Reason.RESET
                    self._broken[reason] += 1
                    logger.info("connection from %s broke: %s", peer, error)
                except* Exception as group:
                    self._handler_errors += 1
                    logger.exception(
                        "handler failed for %s; closing its connection",
                        peer,
                        exc_info=group.exceptions[0] if len(group.exceptions) == 1 else group,
                    )
        finally:
            self._established.discard(connection)
            self._closed += 1
            # Outside the handler's scope: a cancelled handler still gets close_notify.
            await close_at_end(stream)

    async def _sweep_idle(self, idle_timeout: float) -> None:
        """Close established connections that moved no bytes for ``idle_timeout``."""
        while True:
            now = trio.current_time()
            wake = now + idle_timeout
            for connection in list(self._established):
                stream = connection.stream
                if stream is None or connection.stop_reason is not None:
                    continue
                expires = stream.last_activity + idle_timeout
                if expires <= now:
                    connection.stop_reason = Reason.TIMEOUT
                    connection.scope.cancel()
                    self._idle_closed += 1
                else:
                    wake = min(wake, expires)
            await trio.sleep_until(wake)


@asynccontextmanager
async def open_server(
    handler: Handler,
    port: int = 0,
    *,
    host: str | bytes | None = None,
    listeners: Sequence[trio.abc.Listener[trio.abc.Stream]] | None = None,
    ssl_context: ssl.SSLContext | CertificateStore | None = None,
    hello_timeout: float = HELLO_TIMEOUT,
    handshake_timeout: float = HANDSHAKE_TIMEOUT,
    close_timeout: float = CLOSE_TIMEOUT,
    idle_timeout: float | None = None,
    max_connections: int | None = None,
    max_handshakes: int = MAX_HANDSHAKES,
    shutdown_grace: float = SHUTDOWN_GRACE,
    backlog: int | None = None,
    handler_nursery: trio.Nursery | None = None,
    tolerate_ragged_eof: bool = False,
    plain_http_response: bytes | None = PLAIN_HTTP_RESPONSE,
    on_handshake_error: HandshakeErrorHook | None = None,
    proxy_protocol: bool = False,
) -> AsyncGenerator[Server]:
    """Serve TLS while the ``async with`` block runs; yields the :class:`Server`.

    Leaving the block normally shuts down gracefully (see :meth:`Server.shutdown`);
    leaving it with an exception, cancellation included, is the hard stop. Either way
    no task and no file descriptor is left behind. Arguments are those of
    :func:`serve_tls`, plus:

    Args:
        listeners: Transport listeners to serve on instead of opening TCP ones on
            ``host``/``port`` (for tests over in-memory transports, or inherited
            sockets).
    """
    if ssl_context is None:
        ssl_context = dev_context()
    if listeners is None:
        listeners = await trio.open_tcp_listeners(port, host=host, backlog=backlog)
    try:
        server = Server(
            listeners,
            ssl_context,
            handler,
            hello_timeout=hello_timeout,
            handshake_timeout=handshake_timeout,
            close_timeout=close_timeout,
            idle_timeout=idle_timeout,
            max_connections=max_connections,
            max_handshakes=max_handshakes,
            shutdown_grace=shutdown_grace,
            tolerate_ragged_eof=tolerate_ragged_eof,
            plain_http_response=plain_http_response,
            on_handshake_error=on_handshake_error,
            proxy_protocol=proxy_protocol,
        )
        async with trio.open_nursery() as nursery:
            server.start(nursery, handler_nursery)
            yield server
            await server.shutdown()
    finally:
        # Shielded: on a hard stop, the first close's checkpoint would raise Cancelled
        # and leave the other listeners (IPv6, say) open. Not server.listeners: an
        # invalid argument makes Server() raise, and the listeners must close then too.
        with trio.CancelScope(shield=True):
            for listener in listeners:
                await trio.aclose_forcefully(listener)


async def serve_tls(
    handler: Handler,
    port: int,
    *,
    host: str | bytes | None = None,
    ssl_context: ssl.SSLContext | CertificateStore | None = None,
    hello_timeout: float = HELLO_TIMEOUT,
    handshake_timeout: float = HANDSHAKE_TIMEOUT,
    close_timeout: float = CLOSE_TIMEOUT,
    idle_timeout: float | None = None,
    max_connections: int | None = None,
    max_handshakes: int = MAX_HANDSHAKES,
    shutdown_grace: float = SHUTDOWN_GRACE,
    backlog: int | None = None,
    handler_nursery: trio.Nursery | None = None,
    tolerate_ragged_eof: bool = False,
    plain_http_response: bytes | None = PLAIN_HTTP_RESPONSE,
    on_handshake_error: HandshakeErrorHook | None = None,
    proxy_protocol: bool = False,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve TLS on TCP ``port``, calling ``handler`` with every finished handshake.

    Like :func:`trio.serve_tcp` plus :func:`trio.serve_ssl_over_tcp`, except that the
    handshake runs (under deadlines and admission limits) before the handler is called,
    in the connection's own task -- never in the accept loop -- and that a handler's
    exception closes only its own connection.

    Runs until cancelled (the hard stop), or until a graceful shutdown started from a
    handler (``current_server().start_shutdown()``) has finished.

    Args:
        handler: ``async def handler(stream: TLSStream)``. The server closes the stream
            (with close_notify) when the handler returns.
        port: TCP port; 0 picks a free one (see ``task_status``).
        host: Interface to bind; ``None`` binds every interface, IPv4 and IPv6, like
            :func:`trio.serve_tcp`.
        ssl_context: A server :class:`ssl.SSLContext` (see :func:`server_context`), a
            :class:`CertificateStore` to reload certificates while serving, or ``None``
            for development certificates (see :func:`dev_ca_path`).
        hello_timeout: Seconds for a client's complete ClientHello (see :func:`accept`).
        handshake_timeout: Seconds for the whole handshake.
        close_timeout: Seconds to deliver an alert or a close_notify.
        idle_timeout: Close established connections that move no bytes either way for
            this many seconds; ``None`` (the default) never does.
        max_connections: Connections held at once, handshaking or established;
            ``None`` for no limit. When full, the oldest silent connection (no byte
            yet), else the least-progressed handshake, is shed for the newcomer.
        max_handshakes: Handshakes in flight at once whose client has sent something;
            beyond it, the least-progressed one is shed. Silent connections do not
            count: they are bounded by ``hello_timeout``, ``max_connections`` and the
            fd limit, and shed oldest first.
        shutdown_grace: Seconds handlers get to finish in a graceful shutdown.
        backlog: The listen backlog (trio's default when ``None``).
        handler_nursery: Run handlers in this nursery instead of the server's own.
        tolerate_ragged_eof: See :func:`accept`.
        plain_http_response: See :func:`accept`.
        on_handshake_error: Called with every :exc:`HandshakeError` (its
            ``peer_address`` says who); must not block.
        proxy_protocol: Every connection starts with a PROXY protocol header (v1 or
            v2) from the load balancer in front; handlers find the original client in
            ``stream.info.client_address``. See :func:`accept` and
            :doc:`/howto/proxy`.
        task_status: Reports the bound ``trio.SocketListener`` objects, exactly as
            :func:`trio.serve_tcp` does.
    """
    async with open_server(
        handler,
        port,
        host=host,
        ssl_context=ssl_context,
        hello_timeout=hello_timeout,
        handshake_timeout=handshake_timeout,
        close_timeout=close_timeout,
        idle_timeout=idle_timeout,
        max_connections=max_connections,
        max_handshakes=max_handshakes,
        shutdown_grace=shutdown_grace,
        backlog=backlog,
        handler_nursery=handler_nursery,
        tolerate_ragged_eof=tolerate_ragged_eof,
        plain_http_response=plain_http_response,
        on_handshake_error=on_handshake_error,
        proxy_protocol=proxy_protocol,
    ) as server:
        listeners = [
            listener for listener in server.listeners if isinstance(listener, trio.SocketListener)
        ]
        task_status.started(listeners)
        await server.wait_shutting_down()
