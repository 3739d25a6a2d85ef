"""TLSStream: a :class:`trio.abc.Stream` over a transport stream and a :class:`TLSEngine`.

This is a driver, not a protocol implementation: the engine decides, the stream moves
bytes. The loop rule, after trio's ``SSLStream._retry``:

    *touch the engine, then await exactly one thing that makes progress, then loop or exit.*

Never await while in the middle of touching the engine, and never take bytes out of the
engine without getting in line to send them before the next await -- bytes must reach
the wire in the order the engine produced them.

Who touches what:

- ``receive_some`` is the only caller of ``transport_stream.receive_some`` (one receiver
  at a time, enforced with :exc:`trio.BusyResourceError`). Reading may make the engine
  answer something (a TLS 1.3 KeyUpdate, say), so it may also send.
- ``send_all`` only sends: on the server side, writing never needs to read (OpenSSL 3.0
  refuses client-initiated renegotiation by default, and TLS 1.3 has none).
- Both send through :meth:`TLSStream._send`, serialised by a FIFO lock; when nobody else
  is sending (almost always), taking the lock costs no trip through the scheduler.
- Bytes move through ``_transport.py`` (straight on the socket for TCP): a transport call
  says whether it waited, and a public method that never did ends with trio's
  ``cancel_shielded_checkpoint()``, so every one of them is a checkpoint, once.

Cancellation: cancelling ``receive_some`` is safe (trio's transports never lose received
bytes to a cancel). Cancelling ``send_all`` after it started sending leaves an unknown
amount on the wire: the stream becomes broken, as in trio.
"""

from __future__ import annotations

import enum
import operator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, final

import trio

from ._engine import ErrorKind, Reason, Result, State, TLSEngine
from ._errors import TLSError, tls_error
from ._proxy import ProxyHeader
from ._transport import transport_for

if TYPE_CHECKING:
    from types import TracebackType

# How much to ask the transport for, and to decrypt, per call. A TLS record carries at
# most 16 KiB; asking for 64 KiB lets one receive pick up several records that arrived
# together (bulk transfers), at the cost of one larger temporary buffer per call.
RECEIVE_SIZE: Final = 65536


@final
@dataclass(frozen=True, slots=True)
class TLSInfo:
    """The facts of a finished handshake, as ``stream.info``.

    Attributes:
        version: The protocol version as :mod:`ssl` names it, e.g. ``"TLSv1.3"``.
        cipher: The cipher suite's OpenSSL name, e.g. ``"TLS_AES_256_GCM_SHA384"``.
        alpn_protocol: The protocol chosen by ALPN, or ``None``.
        server_name: The server name (SNI) the client asked for, or ``None``.
        peer_certificate: The client's verified certificate as
            :meth:`ssl.SSLSocket.getpeercert` returns it, or ``None`` without one.
        peer_address: The transport's peer (``getpeername()`` of a socket transport, or
            what the caller passed), or ``None`` when the transport has none. Behind a
            load balancer that is the balancer: see :attr:`client_address`.
        handshake_seconds: From the start of :func:`~trio_accept.accept` to the
            handshake's completion, on trio's clock.
        resumed: Whether the client resumed an earlier session (a TLS 1.3 ticket or a
            TLS 1.2 session), skipping the certificate exchange.
        proxy: The PROXY protocol header the load balancer in front of us sent, or
            ``None`` when the listener does not expect one.
    """

    version: str
    cipher: str
    alpn_protocol: str | None
    server_name: str | None
    peer_certificate: dict[str, Any] | None
    peer_address: Any
    handshake_seconds: float
    resumed: bool = False
    proxy: ProxyHeader | None = None

    @property
    def client_address(self) -> Any:
        """The original client's address: the PROXY header's source when a load
        balancer sent one, else :attr:`peer_address`."""
        if self.proxy is not None and self.proxy.source is not None:
            return self.proxy.source
        return self.peer_address


class _Status(enum.Enum):
    OPEN = "open"
    BROKEN = "broken"
    CLOSED = "closed"


@final
class _ConflictDetector:
    """Raises :exc:`trio.BusyResourceError` when two tasks enter at once (a flag, no await)."""

    __slots__ = ("_busy", "_message")

    def __init__(self, message: str) -> None:
        self._message = message
        self._busy = False

    def __enter__(self) -> None:
        if self._busy:
            raise trio.BusyResourceError(self._message)
        self._busy = True

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._busy = False


@final
class _SendLock:
    """The stream's strict FIFO send lock, at the cost of a flag while nobody waits.

    :class:`trio.StrictFIFOLock` allocates its parking lot up front, ~340 bytes that an
    idle connection never uses (an idle server holds thousands); here it is made on the
    first contention. :meth:`release` hands the lock straight to the longest waiter.
    """

    __slots__ = ("_held", "_lot")

    def __init__(self) -> None:
        self._held = False
        self._lot: trio.lowlevel.ParkingLot | None = None

    def acquire_nowait(self) -> None:
        if self._held:
            raise trio.WouldBlock
        self._held = True

    async def acquire_after_nowait(self) -> None:
        """Wait for the lock, right after :meth:`acquire_nowait` said it was held."""
        if self._lot is None:
            self._lot = trio.lowlevel.ParkingLot()
        await self._lot.park()  # woken by release(), which hands the lock over

    def release(self) -> None:
        if self._lot is not None and self._lot.unpark(count=1):
            return  # handed over: still held, now by the woken task
        self._held = False

    async def __aenter__(self) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            self.acquire_nowait()
        except trio.WouldBlock:
            await self.acquire_after_nowait()
        else:
            await trio.lowlevel.cancel_shielded_checkpoint()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


@final
class TLSStream(trio.abc.Stream):
    """An established TLS connection: encrypted :class:`trio.abc.Stream` over a transport.

    You get one from :func:`trio_accept.accept` (or a listener), never half-made: the
    handshake is finished and its facts are in :attr:`info`.

    Attributes:
        transport_stream: The stream carrying the encrypted bytes (a
            :class:`trio.SocketStream` for TCP).
        info: The handshake's facts, a :class:`TLSInfo`.

    Error handling:
        A TLS failure raises :exc:`~trio_accept.TLSError` (a
        :exc:`trio.BrokenResourceError`); a transport failure raises the transport's
        :exc:`trio.BrokenResourceError`. After either, the stream is broken: every call
        but :meth:`aclose` raises :exc:`trio.BrokenResourceError`. Calls after
        :meth:`aclose` raise :exc:`trio.ClosedResourceError`; two tasks sending (or two
        receiving) at once raise :exc:`trio.BusyResourceError`.

        When the peer closes the transport without close_notify (a "ragged EOF", which
        could be a truncation attack), :meth:`receive_some` raises
        :exc:`~trio_accept.TLSError` with reason ``"eof"`` -- unless the stream was made
        with ``tolerate_ragged_eof=True``, which makes it an ordinary end of stream
        (``b""``), as HTTPS clients commonly require.

    Resource handling:
        :meth:`aclose` sends close_notify, waiting at most ``close_timeout`` seconds for
        it to leave, then closes the transport; a peer that vanished cannot hang it.
    """

    __slots__ = (
        "_close_timeout",
        "_engine",
        "_io",
        "_ragged_eof",
        "_receive_conflict",
        "_send_conflict",
        "_send_lock",
        "_status",
        "_tolerate_ragged_eof",
        "bytes_received",
        "bytes_sent",
        "info",
        "last_activity",
        "transport_stream",
    )

    def __init__(
        self,
        transport_stream: trio.abc.Stream,
        engine: TLSEngine,
        info: TLSInfo,
        *,
        tolerate_ragged_eof: bool = False,
        close_timeout: float = 1.0,
    ) -> None:
        self.transport_stream: trio.abc.Stream = transport_stream
        self.info: TLSInfo = info
        self._engine = engine
        self._io = transport_for(transport_stream)
        self._tolerate_ragged_eof = tolerate_ragged_eof
        self._close_timeout = close_timeout
        self._status = _Status.OPEN
        self._ragged_eof = False
        #: Application bytes received and sent so far (decrypted, not counting TLS).
        self.bytes_received: int = 0
        self.bytes_sent: int = 0
        #: When bytes last moved on the transport, either way (trio's clock); a listener
        #: uses it to close idle connections.
        self.last_activity: float = trio.current_time()
        self._send_lock = _SendLock()
        self._send_conflict = _ConflictDetector("another task is sending on this TLSStream")
        self._receive_conflict = _ConflictDetector("another task is receiving on this TLSStream")

    def _check_status(self) -> None:
        if self._status is _Status.CLOSED:
            raise trio.ClosedResourceError("this TLSStream was closed")
        if self._status is _Status.BROKEN:
            raise trio.BrokenResourceError("this TLSStream is broken")

    def _break(self) -> None:
        if self._status is _Status.OPEN:
            self._status = _Status.BROKEN

    def _error(self, result: Result) -> TLSError:
        """The exception for a failed read or write, naming the original client."""
        info = self.info
        relayed = info.proxy is not None and info.proxy.source is not None
        return tls_error(
            result,
            handshake=False,
            peer_address=info.client_address,
            via=info.peer_address if relayed else None,
        )

    async def _send(self, data: bytes) -> bool:
        """Send bytes the engine produced, in order; any failure breaks the stream.
        Returns whether it waited (see ``_transport.py``)."""
        lock = self._send_lock
        waited = False
        try:
            try:
                lock.acquire_nowait()
            except trio.WouldBlock:
                waited = True
                await lock.acquire_after_nowait()
        except BaseException:
            self._break()  # cancelled while queueing: these bytes never leave
            raise
        try:
            waited |= await self._io.send_all(data)
        except BaseException:
            self._break()  # an unknown part of the bytes left: the stream is doomed
            raise
        finally:
            lock.release()
        self.last_activity = trio.current_time()
        return waited

    async def _send_alert(self, alert: bytes) -> None:
        """Send the alert of a failed read: best effort, within ``close_timeout``.

        The TLS failure is what the caller must hear about, so a peer that is gone (or
        not reading) must turn it into neither a transport error nor a hang.
        """
        try:
            with trio.move_on_after(self._close_timeout):
                async with self._send_lock:
                    await self.transport_stream.send_all(alert)
        except trio.BrokenResourceError:
            pass  # the peer is gone: it cannot hear why any more
        except BaseException:
            self._break()  # e.g. cancelled: the failed engine must not be read again
            raise

    async def _answer(self, answer: bytes, *, failed: bool) -> bool:
        """Send what a read made the engine answer; whether it waited. A failed read's
        answer is its alert, sent best effort (see :meth:`_send_alert`)."""
        if failed:
            await self._send_alert(answer)
            return True
        return await self._send(answer)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Receive and decrypt some data; ``b""`` at the end of the stream.

        See :meth:`trio.abc.ReceiveStream.receive_some`. The end of the stream is the
        peer's close_notify (or, with ``tolerate_ragged_eof``, a bare transport EOF).
        """
        with self._receive_conflict:
            if max_bytes is None:
                max_bytes = RECEIVE_SIZE
            else:
                max_bytes = operator.index(max_bytes)
                if max_bytes < 1:
                    raise ValueError("max_bytes must be >= 1")
            self._check_status()
            await trio.lowlevel.checkpoint_if_cancelled()
            if self._ragged_eof:
                await trio.lowlevel.cancel_shielded_checkpoint()
                return b""
            engine = self._engine
            io = self._io
            yielded = False
            while True:
                result = engine.read(max_bytes)
                answer = engine.data_to_send()
                if answer:
                    yielded |= await self._answer(answer, failed=result.failed)
                if result.kind is not ErrorKind.WANT_READ:
                    break
                try:
                    data, waited = await io.receive(RECEIVE_SIZE)
                except trio.BrokenResourceError:
                    self._break()
                    raise
                yielded |= waited
                self.last_activity = trio.current_time()
                engine.receive_data(data)
            if result.failed:
                if result.reason is Reason.EOF and self._tolerate_ragged_eof:
                    self._ragged_eof = True
                else:
                    self._break()
                    raise self._error(result) from result.error
            if not yielded:
                await trio.lowlevel.cancel_shielded_checkpoint()
            self.bytes_received += len(result.data)
            return result.data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Encrypt ``data`` and send it all. See :meth:`trio.abc.SendStream.send_all`.

        .. warning:: If this is cancelled after it started sending, an unknown part of
           the data reached the transport and the stream is broken: any later call
           raises :exc:`trio.BrokenResourceError`.
        """
        with self._send_conflict:
            self._check_status()
            if self._ragged_eof:
                # OpenSSL failed the session at that EOF: nothing can be sent any more.
                raise trio.BrokenResourceError(
                    "the peer closed the connection without close_notify"
                )
            if not data:
                await trio.lowlevel.checkpoint()
                return
            await trio.lowlevel.checkpoint_if_cancelled()
            result = self._engine.write(data)
            if result.failed:
                self._break()
                raise self._error(result) from result.error
            if not await self._send(self._engine.data_to_send()):
                await trio.lowlevel.cancel_shielded_checkpoint()
            self.bytes_sent += len(data)

    async def wait_send_all_might_not_block(self) -> None:
        """See :meth:`trio.abc.SendStream.wait_send_all_might_not_block`."""
        with self._send_conflict:
            self._check_status()
            async with self._send_lock:
                await self.transport_stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        """Send close_notify (bounded by ``close_timeout``), then close the transport.

        Idempotent. We do not wait for the peer's close_notify: a peer that is not
        reading would make us wait for nothing, and TLS allows closing right after
        sending ours. If another task is in the middle of sending, no close_notify can
        be slotted in; the transport is closed without it.
        """
        await self._close(checkpoint=True)

    async def _close(self, *, checkpoint: bool) -> None:
        """:meth:`aclose`; without ``checkpoint``, see :func:`close_at_end`."""
        if self._status is _Status.CLOSED:
            if checkpoint:
                await trio.lowlevel.checkpoint()
            return
        clean = self._status is _Status.OPEN and self._engine.state in (
            State.ESTABLISHED,
            State.PEER_CLOSED,
        )
        self._status = _Status.CLOSED
        transport = self.transport_stream
        if clean:
            try:
                await self._send_close_notify()
            except BaseException:
                await trio.aclose_forcefully(transport)
                raise
        if not checkpoint and isinstance(transport, trio.SocketStream):
            transport.socket.close()  # SocketStream.aclose() is this, then a checkpoint
        else:
            await transport.aclose()

    async def _send_close_notify(self) -> None:
        # Cancelled (a hard stop): no goodbye, only the close -- as if sending it had
        # been cancelled, although it would not have had to wait.
        await trio.lowlevel.checkpoint_if_cancelled()
        engine = self._engine
        result = engine.shutdown()
        close_notify = engine.data_to_send()
        if result.failed or not close_notify:
            return
        try:
            self._send_lock.acquire_nowait()
        except trio.WouldBlock:
            return  # another task is mid-send: closing the transport is all we can do
        try:
            # Almost always the send buffer takes it at once; a deadline is only needed
            # for a peer that stopped reading.
            sent = self._io.try_send(close_notify)
            if sent < len(close_notify):
                with trio.move_on_after(self._close_timeout):
                    await self._io.send_all(close_notify[sent:])
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the peer is gone already, which is what we were telling it to do
        finally:
            self._send_lock.release()


async def close_at_end(stream: TLSStream) -> None:
    """:meth:`TLSStream.aclose` for a listener, as a connection's task ends.

    The same goodbye (close_notify, bounded by ``close_timeout``, skipped when cancelled),
    but a socket transport is closed without the final checkpoint: a trip through the
    scheduler that the public method owes its caller, and that a task about to end only
    pays for. It still waits when it must: for room to send close_notify.
    """
    await stream._close(checkpoint=False)  # pyright: ignore[reportPrivateUsage] - same module
