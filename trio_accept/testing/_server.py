"""Real TLS servers on loopback for testing TLS *clients*, from any kind of test.

A :class:`TLSTestServer` runs in a background thread with its own ``trio.run``, so sync,
asyncio and Trio tests can all talk to it; :func:`open_trio_test_server` runs the same
server in the caller's own Trio nursery instead. Either way the server records what it
saw of every connection (:class:`ConnectionRecord`), and :meth:`~TLSTestServer.
wait_for_connection` hands the records out one by one, so a test never sleeps or races
to find out what the server saw.

What runs is a *serve function*: ``async def serve(recorder, task_status)`` that serves
on 127.0.0.1, reports its port with ``task_status.started(port)``, records connections
and runs until cancelled. :func:`tls_serve_function` makes one from a trio_accept
server; the scenario catalogue makes others (servers that stall, reset, send garbage).
"""

from __future__ import annotations

import contextlib
import functools
import ssl
import threading
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, final

import trio
import trustme

from .._engine import ErrorKind, Reason
from .._errors import HandshakeError
from .._listener import open_server
from .._stream import TLSStream
from ._handlers import echo

#: How long :meth:`TLSTestServer.wait_for_connection` waits by default: far longer than
#: any exchange on loopback takes, short enough to fail a broken test quickly.
WAIT_TIMEOUT: Final = 10.0
#: How long starting or stopping the server thread may take before it is an error.
THREAD_TIMEOUT: Final = 30.0

Handler = Callable[[TLSStream], Awaitable[object]]


@final
@dataclass(frozen=True, slots=True)
class ConnectionRecord:
    """What the server saw of one connection, recorded when it ended.

    Attributes:
        code: The handshake's ``SSL_accept`` result: 1 completed, 0 the client shut it
            down with close_notify, -1 it failed.
        kind: ``SSL_get_error``'s answer (:class:`~trio_accept.ErrorKind`).
        reason: Why the handshake failed (:class:`~trio_accept.Reason`), ``None`` if it
            completed.
        server_name: The server name (SNI) the client asked for, if any.
        alpn_protocol: The ALPN protocol agreed on, if any.
        peer_certificate: The client's verified certificate (``getpeercert()`` form).
        version: The TLS version agreed on (``None`` if the handshake failed).
        bytes_received: Application bytes received from the client.
        bytes_sent: Application bytes sent to the client.
        peer_address: The client's address (behind a load balancer that sends the
            PROXY protocol, the original client's).
    """

    code: int
    kind: ErrorKind
    reason: Reason | None
    server_name: str | None
    alpn_protocol: str | None
    peer_certificate: dict[str, Any] | None
    version: str | None
    bytes_received: int
    bytes_sent: int
    peer_address: Any

    @classmethod
    def from_stream(cls, stream: TLSStream) -> ConnectionRecord:
        """The record of an established connection."""
        info = stream.info
        return cls(
            code=1,
            kind=ErrorKind.NONE,
            reason=None,
            server_name=info.server_name,
            alpn_protocol=info.alpn_protocol,
            peer_certificate=info.peer_certificate,
            version=info.version,
            bytes_received=stream.bytes_received,
            bytes_sent=stream.bytes_sent,
            peer_address=info.client_address,
        )

    @classmethod
    def from_error(cls, error: HandshakeError) -> ConnectionRecord:
        """The record of a failed handshake."""
        return cls(
            code=error.code,
            kind=error.kind,
            reason=error.reason,
            server_name=error.server_name,
            alpn_protocol=None,
            peer_certificate=None,
            version=None,
            bytes_received=0,
            bytes_sent=0,
            peer_address=error.peer_address,
        )


@final
class Recorder:
    """Connection records, shared between the server's thread and the test's."""

    __slots__ = ("_condition", "_handed_out", "_records")

    def __init__(self) -> None:
        self._records: list[ConnectionRecord] = []
        self._handed_out = 0
        self._condition = threading.Condition()

    def add(self, record: ConnectionRecord) -> None:
        """Record a connection (from any thread)."""
        with self._condition:
            self._records.append(record)
            self._condition.notify_all()

    def records(self) -> list[ConnectionRecord]:
        """Every record so far, oldest first."""
        with self._condition:
            return list(self._records)

    def wait_next(self, timeout: float = WAIT_TIMEOUT) -> ConnectionRecord:
        """The next record not handed out yet, waiting up to ``timeout`` seconds for it.

        Raises:
            TimeoutError: nothing was recorded in time.
        """
        with self._condition:
            if not self._condition.wait_for(
                lambda: len(self._records) > self._handed_out, timeout
            ):
                raise TimeoutError(f"no connection was recorded within {timeout:g} s")
            record = self._records[self._handed_out]
            self._handed_out += 1
            return record


#: ``async def serve(recorder, task_status)``: serve on 127.0.0.1 until cancelled.
ServeFunction = Callable[[Recorder, trio.TaskStatus[int]], Awaitable[None]]


def tls_serve_function(
    handler: Handler = echo,
    ssl_context: ssl.SSLContext | None = None,
    *,
    wrap_listener: Callable[[trio.SocketListener], trio.abc.Listener[trio.abc.Stream]]
    | None = None,
    **options: Any,
) -> ServeFunction:
    """A serve function running a trio_accept server that records every connection.

    Args:
        handler: What the server does with each established connection.
        ssl_context: The server's context; ``None`` for development certificates.
        wrap_listener: Wraps the TCP listener, for servers that must alter their
            transport (a scenario that trickles its bytes out, say).
        options: :func:`trio_accept.open_server`'s other keyword arguments.
    """

    async def serve(recorder: Recorder, task_status: trio.TaskStatus[int]) -> None:
        async def recording_handler(stream: TLSStream) -> None:
            try:
                await handler(stream)
            finally:
                recorder.add(ConnectionRecord.from_stream(stream))

        def record_failure(error: HandshakeError) -> None:
            recorder.add(ConnectionRecord.from_error(error))

        (tcp_listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port: int = tcp_listener.socket.getsockname()[1]
        listener = wrap_listener(tcp_listener) if wrap_listener else tcp_listener
        async with open_server(
            recording_handler,
            listeners=[listener],
            ssl_context=ssl_context,
            on_handshake_error=record_failure,
            **options,
        ):
            task_status.started(port)
            await trio.sleep_forever()

    return serve


class _Endpoint:
    """What both kinds of test server tell a client: where, and whom to trust."""

    def __init__(
        self,
        ca: trustme.CA,
        ca_path: Path,
        server_name: str,
        client_cert: trustme.LeafCert | None = None,
    ) -> None:
        #: The CA a correct client is told to trust.
        self.ca: trustme.CA = ca
        #: A client certificate the server accepts, for servers that ask for one.
        self.client_cert: trustme.LeafCert | None = client_cert
        #: That CA as a PEM file (for ``curl --cacert``, ``requests(verify=...)``, httpx).
        self.ca_path: Path = ca_path
        #: Always the loopback address: the server listens there only.
        self.host: str = "127.0.0.1"
        self.port: int = 0
        self._server_name = server_name
        #: Where the server's connection records go (see :attr:`connections`).
        self.recorder: Recorder = Recorder()

    @property
    def url(self) -> str:
        """``https://localhost:PORT/`` (the name the certificate is for)."""
        return f"https://{self._server_name}:{self.port}/"

    @property
    def connections(self) -> list[ConnectionRecord]:
        """Every connection recorded so far, oldest first."""
        return self.recorder.records()

    def client_context(self) -> ssl.SSLContext:
        """A fresh client context that trusts :attr:`ca` (and nothing else)."""
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context


@final
class TLSTestServer(_Endpoint):
    """A test server in a background thread, for sync, asyncio and Trio tests alike.

    Use it as a context manager (or call :meth:`close`): it is stopped, its thread
    joined and its socket closed when the block ends.
    """

    def __init__(
        self,
        serve: ServeFunction,
        *,
        ca: trustme.CA,
        ca_path: Path,
        server_name: str = "localhost",
        client_cert: trustme.LeafCert | None = None,
    ) -> None:
        super().__init__(ca, ca_path, server_name, client_cert)
        self._serve = serve
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._scope: trio.CancelScope | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, name="trio-accept test server", daemon=True
        )

    def start(self) -> TLSTestServer:
        """Start serving; returns once the port is known."""
        self._thread.start()
        if not self._ready.wait(THREAD_TIMEOUT):
            raise RuntimeError("the test server did not start")
        if self._error is not None:
            self._thread.join()
            raise RuntimeError("the test server failed to start") from self._error
        return self

    @property
    def running(self) -> bool:
        """Whether the server's thread is running (started and not yet closed)."""
        return self._thread.is_alive()

    def wait_for_connection(self, timeout: float = WAIT_TIMEOUT) -> ConnectionRecord:
        """The next connection record not returned before, waiting for it if needed.

        Raises:
            TimeoutError: no connection ended within ``timeout`` seconds.
        """
        return self.recorder.wait_next(timeout)

    def close(self) -> None:
        """Stop the server and join its thread. Re-raises what crashed it, if anything."""
        token, scope = self._token, self._scope
        if token is not None and scope is not None and self._thread.is_alive():
            with contextlib.suppress(trio.RunFinishedError):  # it ended on its own
                trio.from_thread.run_sync(scope.cancel, trio_token=token)
        self._thread.join(THREAD_TIMEOUT)
        if self._thread.is_alive():
            raise RuntimeError("the test server thread did not stop")
        if self._error is not None:
            raise RuntimeError("the test server crashed") from self._error

    def __enter__(self) -> TLSTestServer:
        return self.start() if not self._thread.is_alive() else self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:  # reported by start() or close()
            self._error = exc
        finally:
            self._ready.set()

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        with trio.CancelScope() as scope:
            self._scope = scope
            async with trio.open_nursery() as nursery:
                port: int = await nursery.start(self._serve, self.recorder)
                self.port = port
                self._ready.set()


@final
class TrioTLSTestServer(_Endpoint):
    """The same server, running in the caller's Trio nursery (see
    :func:`open_trio_test_server`)."""

    # The timeout is the thread's: the wait happens in a worker thread, which a Trio
    # cancellation cannot interrupt (the same signature as TLSTestServer's).
    async def wait_for_connection(
        self,
        timeout: float = WAIT_TIMEOUT,  # noqa: ASYNC109
    ) -> ConnectionRecord:
        """The next connection record not returned before, waiting for it if needed.

        Raises:
            TimeoutError: no connection ended within ``timeout`` seconds.
        """
        wait = functools.partial(self.recorder.wait_next, timeout)
        return await trio.to_thread.run_sync(wait, abandon_on_cancel=True)


@asynccontextmanager
async def open_trio_test_server(
    serve: ServeFunction,
    *,
    ca: trustme.CA,
    ca_path: Path,
    server_name: str = "localhost",
    client_cert: trustme.LeafCert | None = None,
) -> AsyncGenerator[TrioTLSTestServer]:
    """Run a test server in this Trio run, for the duration of the block."""
    server = TrioTLSTestServer(ca, ca_path, server_name, client_cert)
    async with trio.open_nursery() as nursery:
        port: int = await nursery.start(serve, server.recorder)
        server.port = port
        yield server
        nursery.cancel_scope.cancel()
