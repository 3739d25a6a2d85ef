"""The Trio side's exceptions: one tree, in trio's vocabulary.

The engine returns failures as values; the driver turns them into these exceptions, here
and nowhere else (:func:`tls_error`). Both are :exc:`trio.BrokenResourceError`
subclasses, so code written for :class:`trio.SSLStream` keeps working, and the
:mod:`ssl` exception behind each one is chained as ``__cause__``.
"""

from __future__ import annotations

from typing import Any, Final, cast

import trio

from ._engine import ErrorKind, Reason, Result

# Socket addresses are (host, port) or, for IPv6, (host, port, flowinfo, scope_id).
_HOST_AND_PORT: Final = 2

# What each reason means, for the one-line messages users read in logs.
_EXPLANATIONS: Final[dict[Reason, str]] = {
    Reason.CLOSE_NOTIFY: "the peer closed the connection with close_notify",
    Reason.EOF: "the peer closed the connection without close_notify",
    Reason.RESET: "the connection failed (reset or broken pipe)",
    Reason.TIMEOUT: "the peer was too slow",
    Reason.PROXY_PROTOCOL: "no valid PROXY protocol header from the load balancer",
    Reason.PLAIN_HTTP: "the client sent plain HTTP to a TLS port",
    Reason.WRONG_VERSION: "the client did not speak TLS",
    Reason.UNSUPPORTED_VERSION: "the client offered only TLS versions this server refuses",
    Reason.NO_SHARED_CIPHER: "no cipher suite, group or signature algorithm in common",
    Reason.NO_APPLICATION_PROTOCOL: "no ALPN protocol in common",
    Reason.UNKNOWN_CA: "a certificate chain does not lead to a trusted CA",
    Reason.BAD_CERTIFICATE: "a certificate was rejected",
    Reason.NO_CLIENT_CERT: "the client sent no certificate but one is required",
    Reason.UNRECOGNIZED_NAME: "the server name the client asked for is not served here",
    Reason.OVERSIZED: "a record or message was larger than allowed",
    Reason.PEER_ALERT: "the peer aborted with a fatal alert",
    Reason.PROTOCOL_ERROR: "malformed or unexpected TLS messages",
    Reason.EVICTED: "shed to make room: it made the least progress of all handshakes",
    Reason.SHUTDOWN: "the server is shutting down",
}


class TLSError(trio.BrokenResourceError):
    """TLS failed on a stream; the stream is broken.

    Attributes:
        code: ``SSL_accept``-style result: ``0`` for a controlled shutdown by the peer,
            ``-1`` for a fatal error.
        kind: ``SSL_get_error``'s answer, an :class:`~trio_accept.ErrorKind`.
        reason: A short machine-readable :class:`~trio_accept.Reason` (a ``str``).
        peer_address: The client's address, when known.
        server_name: The server name (SNI) the client asked for, when it got that far.
    """

    def __init__(
        self,
        message: str,
        *,
        code: int,
        kind: ErrorKind,
        reason: Reason,
        peer_address: Any = None,
        server_name: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code: int = code
        self.kind: ErrorKind = kind
        self.reason: Reason = reason
        self.peer_address: Any = peer_address
        self.server_name: str | None = server_name

    def __str__(self) -> str:
        return str(self.args[0])

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.args[0]!r}, code={self.code}, "
            f"kind={self.kind.name}, reason={self.reason.value!r})"
        )


class HandshakeError(TLSError):
    """The TLS handshake did not complete (``SSL_accept`` returned 0 or < 0).

    Raised by :func:`trio_accept.accept` after the transport was closed and any alert
    OpenSSL queued was flushed to the client (best effort, bounded in time).
    """


def tls_error(
    result: Result,
    *,
    handshake: bool,
    peer_address: Any = None,
    server_name: str | None = None,
    detail: str | None = None,
    via: Any = None,
) -> TLSError:
    """Build the exception for a failed result (or a driver-level one) -- the only place
    where engine results become exceptions.

    ``peer_address`` is the client's (from a PROXY protocol header, when there is one);
    ``via`` the load balancer's that relayed it, shown in the message only.
    """
    assert result.reason is not None
    what = "TLS handshake failed" if handshake else "TLS connection failed"
    message = f"{what}: {result.reason.value} ({_EXPLANATIONS[result.reason]})"
    cause = detail or (str(result.error) if result.error is not None else None)
    if cause:
        message += f": {cause}"
    if peer_address is not None:
        via_text = f" via {_format_address(via)}" if via is not None else ""
        message += f" [peer {_format_address(peer_address)}{via_text}]"
    cls = HandshakeError if handshake else TLSError
    return cls(
        message,
        code=result.code,
        kind=result.kind,
        reason=result.reason,
        peer_address=peer_address,
        server_name=server_name,
    )


def driver_result(reason: Reason) -> Result:
    """A failed result for what only the driver can see: a transport failure or a deadline.

    Both are ``SSL_accept``'s "<0, the connection failed" case: code -1, kind SYSCALL.
    """
    return Result(-1, ErrorKind.SYSCALL, reason)


def _format_address(address: object) -> str:
    """``host:port`` for IPv4 and ``[host]:port`` for IPv6 socket addresses."""
    if not isinstance(address, tuple):
        return str(address)
    parts = cast("tuple[object, ...]", address)
    if len(parts) < _HOST_AND_PORT:
        return str(parts)
    host, port = str(parts[0]), parts[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
