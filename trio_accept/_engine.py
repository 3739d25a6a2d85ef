"""The sans-IO TLS server engine: OpenSSL's ``SSL_accept`` over a BIO pair.

Theory of operation
===================

OpenSSL's ``SSL_accept(3)`` drives the server side of a TLS handshake over a *BIO*,
OpenSSL's name for whatever carries the bytes. Over a non-blocking BIO it returns early
whenever it cannot go on, and ``SSL_get_error(3)`` says why: ``SSL_ERROR_WANT_READ``
(feed me more input) or ``SSL_ERROR_WANT_WRITE`` (drain my output); the caller must
"take appropriate action" and call again. Over a *BIO pair* (Python's
:class:`ssl.MemoryBIO`), that action is ours: move bytes in and out of two memory buffers.

:class:`TLSEngine` owns exactly that: one server-side :class:`ssl.SSLObject` and its two
:class:`~ssl.MemoryBIO` buffers. Its call shape is h11's:

- :meth:`TLSEngine.receive_data` only buffers what the client sent (``b""`` means EOF);
- a stepping call (:meth:`~TLSEngine.accept`, :meth:`~TLSEngine.read`,
  :meth:`~TLSEngine.write`, :meth:`~TLSEngine.shutdown`) runs OpenSSL on what is
  buffered and returns a :class:`Result`;
- :meth:`TLSEngine.data_to_send` returns what must go to the client next.

What it never does: I/O, clocks, threads, or importing trio. It raises only for
programming errors (:class:`EngineStateError`); everything the *peer* can cause -- want
conditions, a controlled shutdown, a fatal error -- comes back as a :class:`Result`
value, so the driver decides what becomes an exception.

Invariants (each one has a test in ``tests/test_engine.py``):

1. A stepping call consumes everything OpenSSL can use from the input buffer: when a
   complete client flight has been received, the call that follows answers it at once.
   The one deliberate exception is the TLS 1.3 session tickets, see below.
2. Want conditions never escape as exceptions; they are results with
   :attr:`ErrorKind.WANT_READ`. ``SSL_ERROR_WANT_WRITE`` cannot occur: a memory BIO grows
   without bound, so OpenSSL can always write. The kind exists so that the result type
   covers all of ``SSL_get_error``; no code path produces it.
3. States and transitions are data (:data:`TRANSITIONS`). A call that the table does not
   allow in the current state raises :class:`EngineStateError` and changes nothing.
4. After a failed step the engine is :attr:`State.FAILED`, and the alert OpenSSL queued
   (if any) is still waiting in :meth:`data_to_send`, so the driver can tell the client
   why before closing (trio's ``SSLStream`` and asyncio drop it).

TLS 1.3 session tickets (trio issue #819): when a TLS 1.3 server handshake completes,
OpenSSL immediately queues its NewSessionTicket messages. A client may be waiting to send
rather than to receive at that moment, and on a transport without buffering (trio's
lockstep streams) sending them would deadlock. As BoringSSL does, the engine holds them
back and releases them in front of the first output of the data phase (the first
:meth:`~TLSEngine.write`, a :meth:`~TLSEngine.read` that must answer something, or
:meth:`~TLSEngine.shutdown`). That also saves one write on the wire.

How Python's exceptions map to ``SSL_accept`` / ``SSL_get_error`` results is a table in
the docs ("How SSL_accept maps to trio_accept") and in :func:`_failure`.
"""

from __future__ import annotations

import enum
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, final

from ._clienthello import ClientHello, ClientHelloReader, HelloStatus

#: What the engine accepts as bytes (what :class:`ssl.MemoryBIO` and
#: :meth:`ssl.SSLObject.write` accept).
Buffer = bytes | bytearray | memoryview


class ErrorKind(enum.Enum):
    """``SSL_get_error(3)``'s answer for a step, as an enum.

    Python exposes neither ``SSL_accept``'s return value nor ``SSL_get_error``; the engine
    derives both from the :mod:`ssl` exception classes (see the SSL_accept mapping page).
    """

    NONE = "SSL_ERROR_NONE"
    """The operation succeeded."""
    SSL = "SSL_ERROR_SSL"
    """A protocol error: the handshake or connection is dead."""
    WANT_READ = "SSL_ERROR_WANT_READ"
    """OpenSSL needs more bytes from the peer; feed them and call again."""
    WANT_WRITE = "SSL_ERROR_WANT_WRITE"
    """OpenSSL needs its output drained. Never produced over memory BIOs (see module doc)."""
    SYSCALL = "SSL_ERROR_SYSCALL"
    """The transport failed: EOF without close_notify, a reset, or our own deadline."""
    ZERO_RETURN = "SSL_ERROR_ZERO_RETURN"
    """The peer sent close_notify: a controlled shutdown."""


class Reason(enum.StrEnum):
    """Why a handshake or connection ended: short, stable, machine-readable.

    The engine produces every reason except :attr:`RESET`, :attr:`TIMEOUT` and
    :attr:`PROXY_PROTOCOL`, which belong to the driver (the engine has neither sockets
    nor clocks, and never sees a PROXY protocol header), and :attr:`EVICTED` and
    :attr:`SHUTDOWN`, which belong to the listener.
    """

    CLOSE_NOTIFY = "close-notify"
    """The peer shut the connection down in a controlled way (result code 0)."""
    EOF = "eof"
    """The transport reached EOF without a close_notify (truncation, or a client that
    gave up)."""
    RESET = "reset"
    """The transport failed (connection reset, broken pipe). Produced by the driver."""
    TIMEOUT = "timeout"
    """A deadline of ours expired. Produced by the driver."""
    PROXY_PROTOCOL = "proxy-protocol"
    """A listener expecting the PROXY protocol got no valid header: a client that
    bypassed the load balancer, or a balancer not configured to send it. Produced by
    the driver; no TLS alert is sent."""
    PLAIN_HTTP = "plain-http"
    """The client spoke plain HTTP (or HTTP/2 prior knowledge) to the TLS port."""
    WRONG_VERSION = "wrong-version"
    """The first bytes are not a TLS record (OpenSSL: ``WRONG_VERSION_NUMBER``): garbage,
    or a protocol other than TLS."""
    UNSUPPORTED_VERSION = "unsupported-version"
    """A TLS client that offers only protocol versions this server refuses."""
    NO_SHARED_CIPHER = "no-shared-cipher"
    """No cipher suite, group or signature algorithm in common."""
    NO_APPLICATION_PROTOCOL = "no-application-protocol"
    """ALPN: the client's protocols and ours do not overlap."""
    UNKNOWN_CA = "unknown-ca"
    """A certificate chain does not lead to a trusted CA: ours as the client judged it
    (the client's alert), or the client's as we judged it (mTLS)."""
    BAD_CERTIFICATE = "bad-certificate"
    """A certificate was rejected for another reason (expired, wrong use, revoked, ...)."""
    NO_CLIENT_CERT = "no-client-cert"
    """mTLS: a client certificate is required and the client sent none."""
    UNRECOGNIZED_NAME = "unrecognized-name"
    """SNI: the server refuses the server name the client asked for."""
    OVERSIZED = "oversized"
    """A record or handshake message larger than TLS or OpenSSL allows."""
    PEER_ALERT = "peer-alert"
    """The peer aborted with a fatal alert not covered by a more specific reason."""
    PROTOCOL_ERROR = "protocol-error"
    """Malformed or unexpected TLS messages."""
    EVICTED = "evicted"
    """The listener shed this handshake to make room for a newcomer: it made the least
    progress. Produced by the listener."""
    SHUTDOWN = "shutdown"
    """The server shut down while the handshake was in flight. Produced by the listener."""


class State(enum.Enum):
    """Where a connection is in its life. See :data:`TRANSITIONS`."""

    HANDSHAKING = "handshaking"
    """Waiting for, or in the middle of, the client's handshake."""
    ESTABLISHED = "established"
    """Handshake done; data flows both ways."""
    PEER_CLOSED = "peer-closed"
    """The peer sent close_notify; we may still write, then shut down."""
    LOCAL_CLOSED = "local-closed"
    """We sent close_notify; waiting for the peer's."""
    CLOSED = "closed"
    """Both directions are shut down (or the peer closed during the handshake)."""
    FAILED = "failed"
    """A fatal error ended the connection. Only :meth:`TLSEngine.data_to_send` remains."""


class Operation(enum.Enum):
    """The stepping calls of :class:`TLSEngine`."""

    ACCEPT = "accept"
    READ = "read"
    WRITE = "write"
    SHUTDOWN = "shutdown"


_H, _E, _PC, _LC, _C, _F = (
    State.HANDSHAKING,
    State.ESTABLISHED,
    State.PEER_CLOSED,
    State.LOCAL_CLOSED,
    State.CLOSED,
    State.FAILED,
)
_OK, _WANT, _ZERO = ErrorKind.NONE, ErrorKind.WANT_READ, ErrorKind.ZERO_RETURN
_FATAL: Final = {ErrorKind.SSL: _F, ErrorKind.SYSCALL: _F}

#: The engine's state machine: ``(state, operation) -> {result kind: next state}``.
#: A pair that is missing is a call the engine refuses in that state; a kind that is
#: missing cannot happen. The docs' state diagram is generated from this table.
TRANSITIONS: Final[Mapping[tuple[State, Operation], Mapping[ErrorKind, State]]] = {
    (_H, Operation.ACCEPT): {_OK: _E, _WANT: _H, _ZERO: _C, **_FATAL},
    (_E, Operation.READ): {_OK: _E, _WANT: _E, _ZERO: _PC, **_FATAL},
    (_E, Operation.WRITE): {_OK: _E, **_FATAL},
    (_E, Operation.SHUTDOWN): {_OK: _C, _WANT: _LC, **_FATAL},
    (_PC, Operation.READ): {_ZERO: _PC},
    (_PC, Operation.WRITE): {_OK: _PC, **_FATAL},
    (_PC, Operation.SHUTDOWN): {_OK: _C, **_FATAL},
    # Data the peer sent before our close_notify reached it is still delivered.
    (_LC, Operation.READ): {_OK: _LC, _WANT: _LC, _ZERO: _C, **_FATAL},
    (_LC, Operation.SHUTDOWN): {_OK: _C, _WANT: _LC, **_FATAL},
    (_C, Operation.READ): {_ZERO: _C},
    (_C, Operation.SHUTDOWN): {_OK: _C},
}


class EngineStateError(RuntimeError):
    """A call the engine does not allow in its current state (a bug in the caller).

    The engine is left exactly as it was.
    """


@final
@dataclass(frozen=True, slots=True)
class Result:
    """The outcome of one stepping call, in ``SSL_accept``/``SSL_get_error`` terms.

    Attributes:
        code: The OpenSSL-style return value. :meth:`TLSEngine.accept`: ``1`` done, ``0``
            the peer shut the handshake down in a controlled way, ``-1`` fatal or "call
            again" (see :attr:`kind`). :meth:`~TLSEngine.read` and
            :meth:`~TLSEngine.write`: the number of bytes, ``0`` at close_notify, ``-1``
            otherwise. :meth:`~TLSEngine.shutdown`: ``1`` both close_notify alerts
            exchanged, ``0`` ours sent and the peer's not yet received, ``-1`` fatal.
        kind: ``SSL_get_error``'s answer for :attr:`code`.
        reason: Why the connection ended (``None`` while it has not).
        data: Decrypted bytes, for :meth:`~TLSEngine.read`.
        error: The :mod:`ssl` exception behind a failure, for chaining.
    """

    code: int
    kind: ErrorKind
    reason: Reason | None = None
    data: bytes = b""
    error: ssl.SSLError | None = field(default=None, compare=False, repr=False)

    @property
    def failed(self) -> bool:
        """True for a fatal result (:attr:`ErrorKind.SSL` or :attr:`ErrorKind.SYSCALL`)."""
        return self.kind is ErrorKind.SSL or self.kind is ErrorKind.SYSCALL


# Results without payload are shared, so the hot paths allocate nothing for them.
_ACCEPTED: Final = Result(1, ErrorKind.NONE)
_WANT_READ: Final = Result(-1, ErrorKind.WANT_READ)
_ZERO_RETURN: Final = Result(0, ErrorKind.ZERO_RETURN, Reason.CLOSE_NOTIFY)
_SHUTDOWN_DONE: Final = Result(1, ErrorKind.NONE)
_SHUTDOWN_SENT: Final = Result(0, ErrorKind.WANT_READ)

# OpenSSL reason codes (``SSLError.reason``) -> our reasons. Peer alerts not listed here
# become PEER_ALERT, anything else PROTOCOL_ERROR.
_OPENSSL_REASONS: Final[Mapping[str, Reason]] = {
    "HTTP_REQUEST": Reason.PLAIN_HTTP,
    "HTTPS_PROXY_REQUEST": Reason.PLAIN_HTTP,
    "WRONG_VERSION_NUMBER": Reason.WRONG_VERSION,
    "UNSUPPORTED_PROTOCOL": Reason.UNSUPPORTED_VERSION,
    "UNKNOWN_PROTOCOL": Reason.UNSUPPORTED_VERSION,  # an SSL 2.0 ClientHello
    "VERSION_TOO_LOW": Reason.UNSUPPORTED_VERSION,
    "TLSV1_ALERT_PROTOCOL_VERSION": Reason.UNSUPPORTED_VERSION,
    "NO_SHARED_CIPHER": Reason.NO_SHARED_CIPHER,
    "NO_SHARED_GROUPS": Reason.NO_SHARED_CIPHER,
    "NO_SUITABLE_KEY_SHARE": Reason.NO_SHARED_CIPHER,  # TLS 1.3: no group in common
    "NO_SUITABLE_SIGNATURE_ALGORITHM": Reason.NO_SHARED_CIPHER,
    "SSLV3_ALERT_HANDSHAKE_FAILURE": Reason.NO_SHARED_CIPHER,
    "TLSV1_ALERT_INSUFFICIENT_SECURITY": Reason.NO_SHARED_CIPHER,
    "NO_APPLICATION_PROTOCOL": Reason.NO_APPLICATION_PROTOCOL,
    "TLSV1_ALERT_NO_APPLICATION_PROTOCOL": Reason.NO_APPLICATION_PROTOCOL,
    "TLSV1_ALERT_UNKNOWN_CA": Reason.UNKNOWN_CA,
    "SSLV3_ALERT_BAD_CERTIFICATE": Reason.BAD_CERTIFICATE,
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": Reason.BAD_CERTIFICATE,
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": Reason.BAD_CERTIFICATE,
    "SSLV3_ALERT_CERTIFICATE_REVOKED": Reason.BAD_CERTIFICATE,
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE": Reason.BAD_CERTIFICATE,
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": Reason.NO_CLIENT_CERT,
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": Reason.NO_CLIENT_CERT,
    "TLSV1_ALERT_UNRECOGNIZED_NAME": Reason.UNRECOGNIZED_NAME,
    "TLSV1_UNRECOGNIZED_NAME": Reason.UNRECOGNIZED_NAME,
    "PACKET_LENGTH_TOO_LONG": Reason.OVERSIZED,
    "ENCRYPTED_LENGTH_TOO_LONG": Reason.OVERSIZED,
    "DATA_LENGTH_TOO_LONG": Reason.OVERSIZED,
    "EXCESSIVE_MESSAGE_SIZE": Reason.OVERSIZED,
    "TLSV1_ALERT_RECORD_OVERFLOW": Reason.OVERSIZED,
}
_PEER_ALERT_PREFIXES: Final = ("SSLV3_ALERT_", "TLSV1_ALERT_", "TLSV13_ALERT_")
# X509_V_ERR_* codes meaning "the chain does not lead to a trusted CA".
_UNKNOWN_ISSUER_CODES: Final = frozenset({2, 18, 19, 20, 21})
# An HTTP request line starts with an upper-case method token and a space
# ("GET ", "OPTIONS ", "PRI " for the HTTP/2 preface). OpenSSL itself recognises only
# GET/POST/HEAD/PUT/CONNECT; other methods surface as WRONG_VERSION_NUMBER. A PROXY
# protocol v1 line ("PROXY TCP4 ...") looks like one but is not HTTP: it stays
# WRONG_VERSION, and gets no HTTP answer (a load balancer would relay it to its client).
_HTTP_METHOD: Final = re.compile(rb"(?!PROXY )[A-Z]{3,10} ")


@final
class TLSEngine:
    """The server side of one TLS connection, driven by the caller, with no I/O.

    Args:
        context: A server-side :class:`ssl.SSLContext`. The engine does not change it.

    Resource handling:
        Holds memory only (the ``SSLObject`` and two buffers); nothing to close.

    Example (a byte pump, as the tests do)::

        engine = TLSEngine(server_context)
        engine.receive_data(client_hello)
        result = engine.accept()          # WANT_READ: our flight is ready
        send(engine.data_to_send())
    """

    __slots__ = (
        "_client_hello",
        "_close_seen",
        "_deferred",
        "_eof",
        "_hello",
        "_incoming",
        "_outgoing",
        "_ssl",
        "_state",
        "_tickets",
        "bytes_received",
    )

    def __init__(self, context: ssl.SSLContext) -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._state = State.HANDSHAKING
        self._eof = False
        # The peer's close_notify was met behind data that read() returned first.
        self._close_seen = False
        # Watches the client's first flight; dropped once the handshake is done (an idle
        # server holds thousands of engines), keeping only what it found.
        self._hello: ClientHelloReader | None = ClientHelloReader()
        self._client_hello: ClientHello | None = None
        # TLS 1.3 session tickets held back until the data phase (see module doc).
        self._tickets = b""
        # A failure met by read() after it had data to return, and the alert OpenSSL
        # queued for it: reported by the next call, so that the data comes first.
        self._deferred: tuple[ssl.SSLError, bytes] | None = None
        #: Bytes received from the client so far (progress, for admission control).
        self.bytes_received: int = 0

    # -- input and output -----------------------------------------------------------

    def receive_data(self, data: Buffer) -> None:
        """Buffer bytes that arrived from the client; ``b""`` means the transport hit EOF.

        Nothing is processed until the next stepping call.

        Raises:
            EngineStateError: if EOF was already signalled.
        """
        if self._eof:
            raise EngineStateError("receive_data() after EOF")
        if data:
            self._incoming.write(data)
            self.bytes_received += len(data)
            hello = self._hello
            if hello is not None and not hello.finished:
                hello.feed(data)
        else:
            self._incoming.write_eof()
            self._eof = True

    def data_to_send(self) -> bytes:
        """Return (and forget) the bytes that must go to the client next, maybe ``b""``.

        After a failed step this holds the fatal alert OpenSSL queued, if any.
        """
        return self._outgoing.read()

    # -- stepping calls -------------------------------------------------------------

    def accept(self) -> Result:
        """Run the handshake as far as the buffered input allows (``SSL_accept``).

        Returns:
            ``code 1`` when the handshake completed; ``code -1`` with
            :attr:`ErrorKind.WANT_READ` when it needs more input (send
            :meth:`data_to_send` first); ``code 0`` with :attr:`ErrorKind.ZERO_RETURN`
            when the client sent close_notify; ``code -1`` with :attr:`ErrorKind.SSL` or
            :attr:`ErrorKind.SYSCALL` and a :class:`Reason` when it failed.
        """
        self._check(Operation.ACCEPT)
        obj = self._ssl
        queued = self._outgoing.pending
        try:
            obj.do_handshake()
        except ssl.SSLWantReadError:
            return _WANT_READ
        except ssl.SSLError as exc:
            return self._fail(Operation.ACCEPT, exc)
        self._state = State.ESTABLISHED
        assert self._hello is not None
        self._client_hello = self._hello.hello
        self._hello = None
        if obj.version() == "TLSv1.3" and self._outgoing.pending > queued:
            # Everything OpenSSL queued during this call is session tickets: the final
            # server flight of TLS 1.3 went out before the client's Finished arrived.
            flight = self._outgoing.read()
            self._tickets = flight[queued:]
            if queued:
                self._outgoing.write(flight[:queued])
        return _ACCEPTED

    def read(self, max_bytes: int) -> Result:
        """Decrypt up to ``max_bytes`` of application data (``SSL_read``).

        Returns:
            The bytes in :attr:`Result.data` (``code`` = their number);
            :attr:`ErrorKind.WANT_READ` when more input is needed; ``code 0``
            :attr:`ErrorKind.ZERO_RETURN` once the peer's close_notify arrived (and on
            every call after it); a failure otherwise -- :attr:`Reason.EOF` for a
            transport EOF without close_notify.
        """
        self._check(Operation.READ)
        if self._state is State.PEER_CLOSED or self._state is State.CLOSED:
            return _ZERO_RETURN
        if self._deferred is not None:
            return self._fail_deferred(Operation.READ)
        obj = self._ssl
        if not (self._incoming.pending or self._eof or self._close_seen or obj.pending()):
            # Nothing to decrypt, nothing decrypted: SSL_read could only want more
            # input. Saying so without asking it saves raising and catching an
            # exception on every read that finds the buffer empty (OpenSSL reads one
            # record at a time from the BIO, so none can be waiting inside it).
            return _WANT_READ
        try:
            data = obj.read(max_bytes)
        except ssl.SSLWantReadError:
            result = _WANT_READ
        except ssl.SSLError as exc:
            return self._fail(Operation.READ, exc)
        else:
            # Python returns b"" when close_notify arrives; it does not raise
            # SSLZeroReturnError from SSLObject.read().
            if not data:
                result = _ZERO_RETURN
            else:
                if len(data) < max_bytes:
                    data = self._read_more(data, max_bytes)
                result = Result(len(data), ErrorKind.NONE, data=data)
        if self._tickets and self._outgoing.pending:  # pragma: no cover
            # Something must be answered, and the tickets must go first. OpenSSL 1.1.1
            # to 3.x never answers from SSL_read on the server side (it queues its
            # answer to a KeyUpdate for the next write; see test_interop), so this does
            # not run with them; it keeps the order right should a version answer here.
            self._outgoing.write(self._release_tickets() + self._outgoing.read())
        self._state = TRANSITIONS[self._state, Operation.READ][result.kind]
        return result

    def _read_more(self, data: bytes, max_bytes: int) -> bytes:
        """SSL_read returns one record at a time: take the next whole records already
        buffered too, up to ``max_bytes`` (one call per 16 KiB otherwise).

        Whatever ends the run is left for the next call, so results come in the same
        order as one record at a time: a close_notify is seen again (OpenSSL keeps
        returning it), a failure is kept with its alert (OpenSSL would not repeat it).
        """
        chunks = [data]
        total = len(data)
        queued = self._outgoing.pending
        while total < max_bytes:
            try:
                more = self._ssl.read(max_bytes - total)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLError as exc:
                pending = self._outgoing.read()
                if queued:
                    self._outgoing.write(pending[:queued])
                self._deferred = (exc, pending[queued:])
                break
            if not more:  # close_notify: OpenSSL returns it again to the next call
                self._close_seen = True
                break
            chunks.append(more)
            total += len(more)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _fail_deferred(self, operation: Operation) -> Result:
        assert self._deferred is not None
        exc, alert = self._deferred
        self._deferred = None
        self._outgoing.write(alert)
        return self._fail(operation, exc)

    def write(self, data: Buffer) -> Result:
        """Encrypt ``data`` for the peer (``SSL_write``); fetch it with :meth:`data_to_send`.

        Returns:
            ``code`` = ``len(data)`` on success, or a failure.
        """
        self._check(Operation.WRITE)
        if self._deferred is not None:
            return self._fail_deferred(Operation.WRITE)
        if self._tickets:
            self._outgoing.write(self._release_tickets())
        if not data:
            # SSLObject.write(b"") would be taken as an error; there is nothing to do.
            return Result(0, ErrorKind.NONE)
        try:
            written = self._ssl.write(data)
        except ssl.SSLError as exc:
            return self._fail(Operation.WRITE, exc)
        return Result(written, ErrorKind.NONE)

    def shutdown(self) -> Result:
        """Send close_notify (``SSL_shutdown``); call again later to await the peer's.

        Returns:
            ``code 1`` when both close_notify alerts have been exchanged; ``code 0`` with
            :attr:`ErrorKind.WANT_READ` when ours is queued and the peer's has not
            arrived (it is not necessary to wait for it before closing the transport);
            a failure otherwise.
        """
        self._check(Operation.SHUTDOWN)
        if self._deferred is not None:
            return self._fail_deferred(Operation.SHUTDOWN)
        if self._tickets:
            self._outgoing.write(self._release_tickets())
        if self._state is State.CLOSED:
            return _SHUTDOWN_DONE
        try:
            self._ssl.unwrap()
        except ssl.SSLWantReadError:
            result = _SHUTDOWN_SENT
        except ssl.SSLError as exc:
            return self._fail(Operation.SHUTDOWN, exc)
        else:
            result = _SHUTDOWN_DONE
        self._state = TRANSITIONS[self._state, Operation.SHUTDOWN][result.kind]
        return result

    # -- facts ----------------------------------------------------------------------

    @property
    def state(self) -> State:
        """The current :class:`State`."""
        return self._state

    @property
    def hello_received(self) -> bool:
        """True once the client's first flight is in: a complete ClientHello was read,
        the bytes turned out not to be one, or the handshake already ended."""
        hello = self._hello
        return hello is None or hello.status is not HelloStatus.NEED_DATA or self._state is not _H

    @property
    def client_hello(self) -> ClientHello | None:
        """What the client offered (SNI, ALPN, versions), once a ClientHello was read."""
        return self._client_hello if self._hello is None else self._hello.hello

    @property
    def version(self) -> str | None:
        """The negotiated protocol version, e.g. ``"TLSv1.3"`` (``None`` before)."""
        return self._ssl.version()

    @property
    def cipher(self) -> str | None:
        """The negotiated cipher suite's OpenSSL name (``None`` before)."""
        cipher = self._ssl.cipher()
        return cipher[0] if cipher else None

    @property
    def alpn_protocol(self) -> str | None:
        """The ALPN protocol selected, or ``None``."""
        return self._ssl.selected_alpn_protocol()

    @property
    def session_reused(self) -> bool:
        """Whether the handshake resumed an earlier session."""
        return self._ssl.session_reused

    @property
    def server_name(self) -> str | None:
        """The server name (SNI) the client asked for, or ``None``."""
        hello = self.client_hello
        return hello.server_name if hello else None

    def peer_certificate(self) -> dict[str, Any] | None:
        """The client's verified certificate as :meth:`ssl.SSLSocket.getpeercert` gives
        it, or ``None`` when the client sent none (or it was not verified)."""
        if self._state is _H:
            return None
        # An unverified certificate (CERT_NONE) is reported as {}: treat it as absent.
        return dict(self._ssl.getpeercert() or {}) or None

    # -- internals ------------------------------------------------------------------

    def _check(self, operation: Operation) -> None:
        if (self._state, operation) not in TRANSITIONS:
            raise EngineStateError(
                f"{operation.value}() is not allowed in state {self._state.name}"
            )

    def _classify_by_alert(self, result: Result) -> Result:
        """Reclassify a failure by the fatal alert queued for the peer, if it tells more."""
        queued = self._outgoing.read()
        self._outgoing.write(queued)
        if (
            len(queued) == _PLAINTEXT_ALERT_SIZE
            and queued[0] == _ALERT_RECORD
            and queued[5] == _ALERT_FATAL
        ):
            reason = _ALERT_REASONS.get(queued[6])
            if reason is not None:
                return Result(result.code, result.kind, reason, error=result.error)
        return result

    def _release_tickets(self) -> bytes:
        tickets, self._tickets = self._tickets, b""
        return tickets

    def _fail(self, operation: Operation, exc: ssl.SSLError) -> Result:
        head = b"" if self._hello is None else self._hello.head
        result = _failure(exc, head, self._state is _H)
        if exc.reason == "CALLBACK_FAILED":
            # A callback (SNI, most often) refused the client with an alert of its
            # choice: that alert says why, OpenSSL's reason does not.
            result = self._classify_by_alert(result)
        self._state = TRANSITIONS[self._state, operation][result.kind]
        return result


# Alert descriptions (RFC 8446 §6) a callback may choose, and what they mean for us.
_ALERT_REASONS: Final[Mapping[int, Reason]] = {
    112: Reason.UNRECOGNIZED_NAME,  # unrecognized_name
    120: Reason.NO_APPLICATION_PROTOCOL,  # no_application_protocol
    40: Reason.NO_SHARED_CIPHER,  # handshake_failure
}
_ALERT_RECORD: Final = 21  # the record type of alerts
_ALERT_FATAL: Final = 2  # the alert level that ends the connection
_PLAINTEXT_ALERT_SIZE: Final = 7  # type, version (2), length (2), level, description


def _failure(exc: ssl.SSLError, head: bytes, handshaking: bool) -> Result:
    """Map an :mod:`ssl` exception to ``SSL_accept``'s result code, kind and reason.

    ``SSLZeroReturnError`` is the peer's close_notify: code 0. ``SSLEOFError`` is EOF
    without close_notify; OpenSSL 3 reports it as ``SSL_ERROR_SSL`` with reason
    ``UNEXPECTED_EOF_WHILE_READING``, OpenSSL 1.1 as ``SSL_ERROR_SYSCALL`` -- we keep
    the SYSCALL kind, as it means "the transport ended", not "the peer misbehaved".
    ``SSLSyscallError`` would be a failing BIO, which a memory BIO is not; mapped the same.
    Everything else is a protocol error, code -1, kind SSL, with a reason from OpenSSL's.
    """
    if isinstance(exc, ssl.SSLZeroReturnError):
        return Result(0, ErrorKind.ZERO_RETURN, Reason.CLOSE_NOTIFY, error=exc)
    if isinstance(exc, ssl.SSLEOFError | ssl.SSLSyscallError):
        return Result(-1, ErrorKind.SYSCALL, Reason.EOF, error=exc)
    if isinstance(exc, ssl.SSLCertVerificationError):
        unknown_issuer = exc.verify_code in _UNKNOWN_ISSUER_CODES
        reason = Reason.UNKNOWN_CA if unknown_issuer else Reason.BAD_CERTIFICATE
        return Result(-1, ErrorKind.SSL, reason, error=exc)
    openssl_reason = exc.reason or ""
    if openssl_reason in _OPENSSL_REASONS:
        reason = _OPENSSL_REASONS[openssl_reason]
    elif openssl_reason.startswith(_PEER_ALERT_PREFIXES):
        reason = Reason.PEER_ALERT
    else:
        reason = Reason.PROTOCOL_ERROR
    if reason is Reason.WRONG_VERSION and handshaking and _HTTP_METHOD.match(head):
        reason = Reason.PLAIN_HTTP
    return Result(-1, ErrorKind.SSL, reason, error=exc)
