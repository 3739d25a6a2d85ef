"""The built-in catalogue of misbehaving TLS servers (registered on import).

Certificate and protocol scenarios are trio_accept servers (``http_responder`` as the
handler, so HTTP clients such as curl work as they are); they record connections as any
test server does. The behaviour scenarios below the TLS layer are raw TCP servers; each
records one :class:`ConnectionRecord` per connection when it ends, with ``code`` -1,
``kind`` ``SSL_ERROR_SYSCALL``, no version, the ClientHello's server name when one was
read, the raw bytes received and sent, and as ``reason``:

- ``stall``, ``stall-after-hello``: ``eof`` (the client left), ``reset`` (it reset);
- ``reset-during-handshake``: ``reset`` (the server reset the connection);
- ``garbage``: ``protocol-error``; ``plain-http``: ``plain-http``;
- any of them cut off by the server stopping: ``shutdown``.

Old protocol versions: the OpenSSL this was written against (3.0) still speaks TLS 1.0
and 1.1 once the security level is 0 (``@SECLEVEL=0`` in the cipher string), so
``tls1.0-only`` and ``tls1.1-only`` are registered only when the local ``ssl`` module
can be configured for them (:data:`LEGACY_TLS_AVAILABLE`); on an OpenSSL built without
them (``no-tls1``, or a distribution policy forbidding them) they are absent from
:data:`SCENARIOS`.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import socket
import ssl
import struct
import warnings
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Final, final

import trio
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .._clienthello import ClientHello, ClientHelloReader, HelloStatus
from .._config import server_context
from .._engine import ErrorKind, Reason
from .._stream import TLSStream
from ._handlers import http_responder
from ._scenarios import ScenarioContext, ScenarioSetup, register_scenario
from ._server import (
    ConnectionRecord,
    Recorder,
    ServeFunction,
    tls_serve_function,
)

#: The names every served certificate is for (unless the scenario is about names).
SERVER_NAMES: Final = ("localhost", "127.0.0.1", "::1")
#: What ``garbage`` answers a ClientHello with: not a TLS record (``'t'`` is no content
#: type, ``"hi"`` no version).
GARBAGE: Final = b"this is not TLS, just garbage\r\n" * 4
#: What ``plain-http`` answers anything with.
PLAIN_HTTP_ANSWER: Final = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: 15\r\n"
    b"Connection: close\r\n"
    b"\r\n"
    b"plain HTTP/1.1\n"
)
#: What ``close-without-notify`` sends before closing: an HTTP response whose body ends
#: with the connection (no ``Content-Length``), so a truncation is detectable by HTTP
#: clients too.
TRUNCATED_ANSWER: Final = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Connection: close\r\n"
    b"\r\n"
    b"hello\n"
)
#: ``slow-drip``: every server byte is sent alone, followed by this pause (seconds).
DRIP_DELAY: Final = 0.001
#: ``slow-drip``: at most this many bytes per connection are dripped (a few seconds'
#: worth); the rest goes out at once, so a handshake always completes.
DRIP_BUDGET: Final = 1024
#: ``huge-chain``: intermediates between the fixtures' CA and the leaf.
HUGE_CHAIN_INTERMEDIATES: Final = 8
#: ``huge-chain``: bytes of padding in the leaf (a private, non-critical extension).
#: With it the Certificate message is over OpenSSL's default limit for a peer's
#: certificate list (``SSL_MAX_CERT_LIST_DEFAULT``, 100 KiB).
HUGE_CHAIN_PADDING: Final = 120 * 1024
#: Bounds for the raw scenarios: bytes read from one client before giving up reading,
#: and how long a server waits for the client's EOF after its own.
MAX_CLIENT_BYTES: Final = 1 << 20
LINGER_TIMEOUT: Final = 5.0
#: A private-use OID for the padding extension.
_PADDING_OID: Final = x509.ObjectIdentifier("1.3.6.1.4.1.55555.42")


# -- certificates ----------------------------------------------------------------------------


def _write_identity(directory: Path, stem: str, leaf: trustme.LeafCert) -> tuple[Path, Path]:
    """Write ``leaf``'s chain and key to ``directory``; returns their paths."""
    return _write_pems(
        directory,
        stem,
        b"".join(pem.bytes() for pem in leaf.cert_chain_pems),
        leaf.private_key_pem.bytes(),
    )


def _valid_identity(context: ScenarioContext, stem: str) -> tuple[Path, Path]:
    return _write_identity(context.directory, stem, context.ca.issue_cert(*SERVER_NAMES))


def _write_pems(directory: Path, stem: str, chain: bytes, key: bytes) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}-key.pem"
    cert_path.write_bytes(chain)
    key_path.write_bytes(key)
    return cert_path, key_path


def _context(
    cert_path: Path,
    key_path: Path,
    *,
    profile: str = "intermediate",
    alpn: Sequence[str] | None = None,
    client_ca: Path | None = None,
    require_client_cert: bool = False,
) -> ssl.SSLContext:
    """A server context with trio_accept's settings (``server_context``)."""
    return server_context(
        cert_path,
        key_path,
        profile=profile,
        alpn=alpn,
        client_ca=client_ca,
        require_client_cert=require_client_cert,
    )


def _https_with_invalid_dates(context: ScenarioContext, leaf: trustme.LeafCert) -> ServeFunction:
    """An HTTPS server for ``leaf``, whose dates ``server_context`` would warn about.

    The context is made for a valid certificate, then ``leaf`` replaces it: serving it
    is the point, so no :class:`CertificateWarning` (nor its log line) is wanted.
    """
    ssl_context = _context(*_valid_identity(context, "valid"))
    leaf.configure_cert(ssl_context)
    return tls_serve_function(http_responder, ssl_context)


def _https(
    context: ScenarioContext,
    leaf: trustme.LeafCert,
    stem: str,
    *,
    client_ca: Path | None = None,
    require_client_cert: bool = False,
) -> ServeFunction:
    """An HTTPS server (``http_responder``) for ``leaf``."""
    cert_path, key_path = _write_identity(context.directory, stem, leaf)
    return tls_serve_function(
        http_responder,
        _context(
            cert_path, key_path, client_ca=client_ca, require_client_cert=require_client_cert
        ),
    )


def _ca_key(ca: trustme.CA) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(ca.private_key_pem.bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise TypeError(f"unexpected CA key type {type(key).__name__}")
    return key


def _make_leaf(issuer: trustme.CA | None, *, padding: int = 0) -> tuple[bytes, bytes]:
    """A P-256 leaf certificate for :data:`SERVER_NAMES`, as (certificate, key) PEM.

    Issued by ``issuer``, or self-signed when it is ``None``; with ``padding`` bytes in
    a private non-critical extension.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    signing_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    if issuer is None:
        issuer_name, signing_key = subject, key
    else:
        issuer_name = x509.load_pem_x509_certificate(issuer.cert_pem.bytes()).subject
        signing_key = _ca_key(issuer)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signing_key.public_key()),
            critical=False,
        )
    if padding:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(_PADDING_OID, b"\x00" * padding), critical=False
        )
    certificate = builder.sign(signing_key, hashes.SHA256())
    return (
        certificate.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@register_scenario(
    "expired",
    description="Serves a certificate from the trusted CA for localhost that expired a day ago.",
    expected="Python ssl raises ssl.SSLCertVerificationError (verify_code 10, "
    "'certificate has expired'); curl exits 60; openssl s_client -verify_return_error "
    "reports 'verify error:num=10:certificate has expired'.",
)
def _expired(context: ScenarioContext) -> ScenarioSetup:
    now = _now()
    leaf = context.ca.issue_cert(
        *SERVER_NAMES,
        not_before=now - datetime.timedelta(days=30),
        not_after=now - datetime.timedelta(days=1),
    )
    return ScenarioSetup(_https_with_invalid_dates(context, leaf))


@register_scenario(
    "not-yet-valid",
    description="Serves a certificate from the trusted CA for localhost that becomes "
    "valid in a day.",
    expected="Python ssl raises ssl.SSLCertVerificationError (verify_code 9, "
    "'certificate is not yet valid'); curl exits 60.",
)
def _not_yet_valid(context: ScenarioContext) -> ScenarioSetup:
    now = _now()
    leaf = context.ca.issue_cert(
        *SERVER_NAMES,
        not_before=now + datetime.timedelta(days=1),
        not_after=now + datetime.timedelta(days=30),
    )
    return ScenarioSetup(_https_with_invalid_dates(context, leaf))


@register_scenario(
    "wrong-host",
    description="Serves a valid certificate from the trusted CA, for wrong.host.example "
    "only (not localhost).",
    expected="Python ssl raises ssl.SSLCertVerificationError (verify_code 62, "
    "\"Hostname mismatch, certificate is not valid for 'localhost'.\"); curl exits 60.",
)
def _wrong_host(context: ScenarioContext) -> ScenarioSetup:
    leaf = context.ca.issue_cert("wrong.host.example")
    return ScenarioSetup(_https(context, leaf, "wrong-host"))


@register_scenario(
    "self-signed",
    description="Serves a self-signed leaf certificate for localhost (not from the trusted CA).",
    expected="Python ssl raises ssl.SSLCertVerificationError (verify_code 18, "
    "'self-signed certificate'); curl exits 60; openssl s_client -verify_return_error "
    "reports 'verify error:num=18:self-signed certificate'.",
)
def _self_signed(context: ScenarioContext) -> ScenarioSetup:
    cert, key = _make_leaf(None)
    return ScenarioSetup(
        tls_serve_function(
            http_responder, _context(*_write_pems(context.directory, "self-signed", cert, key))
        )
    )


@register_scenario(
    "untrusted-root",
    description="Serves a certificate for localhost from a CA the client does not trust.",
    expected="Python ssl raises ssl.SSLCertVerificationError (verify_code 20, "
    "'unable to get local issuer certificate'); curl exits 60.",
)
def _untrusted_root(context: ScenarioContext) -> ScenarioSetup:
    leaf = trustme.CA(organization_name="untrusted root").issue_cert(*SERVER_NAMES)
    return ScenarioSetup(_https(context, leaf, "untrusted-root"))


@register_scenario(
    "incomplete-chain",
    description="Serves a leaf issued by an intermediate of the trusted CA without "
    "sending the intermediate.",
    expected="Python ssl raises ssl.SSLCertVerificationError (verify_code 20, "
    "'unable to get local issuer certificate'); curl exits 60.",
)
def _incomplete_chain(context: ScenarioContext) -> ScenarioSetup:
    leaf = context.ca.create_child_ca().issue_cert(*SERVER_NAMES)
    cert_path, key_path = _write_pems(
        context.directory,
        "incomplete-chain",
        leaf.cert_chain_pems[0].bytes(),  # the leaf alone
        leaf.private_key_pem.bytes(),
    )
    return ScenarioSetup(tls_serve_function(http_responder, _context(cert_path, key_path)))


def _client_ca_scenario(context: ScenarioContext, *, required: bool) -> ScenarioSetup:
    client_ca = trustme.CA(organization_name="trio-accept scenario client CA")
    client_ca_path = context.directory / "client-ca.pem"
    context.directory.mkdir(parents=True, exist_ok=True)
    client_ca.cert_pem.write_to_path(str(client_ca_path))
    client_cert = client_ca.issue_cert("client@example.org", common_name="scenario client")
    stem = "client-cert-required" if required else "client-cert-optional"
    leaf = context.ca.issue_cert(*SERVER_NAMES)
    serve = _https(context, leaf, stem, client_ca=client_ca_path, require_client_cert=required)
    return ScenarioSetup(serve, client_cert=client_cert)


@register_scenario(
    "client-cert-required",
    description="Requires a client certificate from its own client CA (mTLS); "
    "setup.client_cert is one it accepts.",
    expected="Without a client certificate: the TLS 1.3 handshake completes on the client, "
    "then its first read raises ssl.SSLError (reason "
    "'TLSV13_ALERT_CERTIFICATE_REQUIRED'); the server records reason 'no-client-cert'; "
    "curl exits 56. With client_cert: the request succeeds and the server records the "
    "client's certificate.",
)
def _client_cert_required(context: ScenarioContext) -> ScenarioSetup:
    return _client_ca_scenario(context, required=True)


@register_scenario(
    "client-cert-optional",
    description="Asks for a client certificate from its own client CA but accepts "
    "clients without one.",
    expected="Without a client certificate: the request succeeds, the server records no "
    "peer certificate. With client_cert: it succeeds and the server records it.",
)
def _client_cert_optional(context: ScenarioContext) -> ScenarioSetup:
    return _client_ca_scenario(context, required=False)


@register_scenario(
    "rsa-2048",
    description="Serves an RSA 2048-bit certificate from the trusted CA.",
    expected="The handshake succeeds; the server's public key is RSA, 2048 bits.",
)
def _rsa_2048(context: ScenarioContext) -> ScenarioSetup:
    leaf = context.ca.issue_cert(*SERVER_NAMES, key_type=trustme.KeyType.RSA)
    return ScenarioSetup(_https(context, leaf, "rsa-2048"))


@register_scenario(
    "ecdsa-p256",
    description="Serves an ECDSA P-256 certificate from the trusted CA.",
    expected="The handshake succeeds; the server's public key is ECDSA on secp256r1.",
)
def _ecdsa_p256(context: ScenarioContext) -> ScenarioSetup:
    leaf = context.ca.issue_cert(*SERVER_NAMES, key_type=trustme.KeyType.ECDSA)
    return ScenarioSetup(_https(context, leaf, "ecdsa-p256"))


# -- protocol --------------------------------------------------------------------------------


@register_scenario(
    "tls1.2-only",
    description="Speaks TLS 1.2 only (valid certificate).",
    expected="A default client negotiates 'TLSv1.2'; a client requiring TLS 1.3 fails: "
    "Python ssl raises ssl.SSLError (reason 'TLSV1_ALERT_PROTOCOL_VERSION'), "
    "curl --tlsv1.3 exits 35.",
)
def _tls12_only(context: ScenarioContext) -> ScenarioSetup:
    ssl_context = _context(*_valid_identity(context, "tls1.2-only"))
    ssl_context.maximum_version = ssl.TLSVersion.TLSv1_2
    return ScenarioSetup(tls_serve_function(http_responder, ssl_context))


@register_scenario(
    "tls1.3-only",
    description="Speaks TLS 1.3 only (the 'modern' profile, valid certificate).",
    expected="A default client negotiates 'TLSv1.3'; a client limited to TLS 1.2 fails: "
    "Python ssl raises ssl.SSLError (reason 'TLSV1_ALERT_PROTOCOL_VERSION'), "
    "curl --tls-max 1.2 exits 35.",
)
def _tls13_only(context: ScenarioContext) -> ScenarioSetup:
    ssl_context = _context(*_valid_identity(context, "tls1.3-only"), profile="modern")
    return ScenarioSetup(tls_serve_function(http_responder, ssl_context))


def _legacy_context(context: ScenarioContext, version: ssl.TLSVersion) -> ssl.SSLContext:
    """A server context speaking only ``version`` (TLS 1.0 or 1.1), at security level 0."""
    ssl_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.ca.issue_cert(*SERVER_NAMES).configure_cert(ssl_context)
    # Setting TLS 1.0/1.1 bounds is deprecated (DeprecationWarning): on purpose here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ssl_context.minimum_version = version
        ssl_context.maximum_version = version
    ssl_context.set_ciphers("DEFAULT:@SECLEVEL=0")
    return ssl_context


def _legacy_tls_available() -> bool:
    """Whether this ``ssl`` module can be configured to speak TLS 1.0 and 1.1."""
    if not (ssl.HAS_TLSv1 and ssl.HAS_TLSv1_1):
        return False
    try:
        probe = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            probe.minimum_version = ssl.TLSVersion.TLSv1
            probe.maximum_version = ssl.TLSVersion.TLSv1
        probe.set_ciphers("DEFAULT:@SECLEVEL=0")
    except (ValueError, ssl.SSLError):
        return False
    return True


#: Whether ``tls1.0-only`` and ``tls1.1-only`` are registered.
LEGACY_TLS_AVAILABLE: Final = _legacy_tls_available()


def _legacy_expected(version: str) -> str:
    return (
        "A default client (minimum TLS 1.2) fails: Python ssl raises ssl.SSLError (reason "
        "'TLSV1_ALERT_PROTOCOL_VERSION'), curl exits 35. A client allowing "
        f"{version} at security level 0 (ciphers 'DEFAULT:@SECLEVEL=0') connects with "
        f"version '{version}'."
    )


if LEGACY_TLS_AVAILABLE:

    @register_scenario(
        "tls1.0-only",
        description="Speaks TLS 1.0 only (security level 0, valid certificate).",
        expected=_legacy_expected("TLSv1"),
    )
    def _tls10_only(context: ScenarioContext) -> ScenarioSetup:
        ssl_context = _legacy_context(context, ssl.TLSVersion.TLSv1)
        return ScenarioSetup(tls_serve_function(http_responder, ssl_context))

    @register_scenario(
        "tls1.1-only",
        description="Speaks TLS 1.1 only (security level 0, valid certificate).",
        expected=_legacy_expected("TLSv1.1"),
    )
    def _tls11_only(context: ScenarioContext) -> ScenarioSetup:
        ssl_context = _legacy_context(context, ssl.TLSVersion.TLSv1_1)
        return ScenarioSetup(tls_serve_function(http_responder, ssl_context))


async def _alpn_reporter(stream: TLSStream) -> None:
    """Send one line naming the agreed ALPN protocol (``alpn=none`` without one)."""
    await stream.send_all(f"alpn={stream.info.alpn_protocol or 'none'}\n".encode())


@register_scenario(
    "alpn-h2",
    description="Offers ALPN 'h2' only, and sends one line naming the agreed protocol "
    "('alpn=h2') instead of speaking HTTP/2.",
    expected="A client offering ['h2', 'http/1.1'] gets selected_alpn_protocol() == 'h2' "
    "and reads 'alpn=h2'.",
)
def _alpn_h2(context: ScenarioContext) -> ScenarioSetup:
    ssl_context = _context(*_valid_identity(context, "alpn-h2"), alpn=["h2"])
    return ScenarioSetup(tls_serve_function(_alpn_reporter, ssl_context))


@register_scenario(
    "alpn-mismatch",
    description="Offers ALPN 'h2' only; a client offering other protocols gets no ALPN "
    "answer (the handshake goes on, as OpenSSL's servers do), then one line naming the "
    "agreed protocol ('alpn=none').",
    expected="A client offering only ['http/1.1'] completes the handshake with "
    "selected_alpn_protocol() None and reads 'alpn=none'; the server records "
    "alpn_protocol None.",
)
def _alpn_mismatch(context: ScenarioContext) -> ScenarioSetup:
    ssl_context = _context(*_valid_identity(context, "alpn-mismatch"), alpn=["h2"])
    return ScenarioSetup(tls_serve_function(_alpn_reporter, ssl_context))


# -- behaviour: TLS servers that misbehave ---------------------------------------------------


async def _truncating_responder(stream: TLSStream) -> None:
    """Send :data:`TRUNCATED_ANSWER`, then end the TCP stream without close_notify."""
    await stream.send_all(TRUNCATED_ANSWER)
    transport = stream.transport_stream
    if not isinstance(transport, trio.SocketStream):  # pragma: no cover - always TCP here
        raise TypeError("close-without-notify needs a TCP transport")
    await transport.send_eof()  # a FIN, and no close_notify before it
    await _drain(transport)


@register_scenario(
    "close-without-notify",
    description="Completes the handshake, sends an HTTP/1.1 200 response delimited by "
    "the connection's end (no Content-Length), then ends the TCP stream without a "
    "close_notify (truncation).",
    expected="The client reads the response, then the next read raises ssl.SSLEOFError "
    "(reason 'UNEXPECTED_EOF_WHILE_READING') with suppress_ragged_eofs=False (with the "
    "default True it returns b''). curl exits 0: it accepts a missing close_notify "
    "after a close-delimited HTTP/1.1 body.",
)
def _close_without_notify(context: ScenarioContext) -> ScenarioSetup:
    ssl_context = _context(*_valid_identity(context, "close-without-notify"))
    return ScenarioSetup(tls_serve_function(_truncating_responder, ssl_context))


@final
class _DripStream(trio.abc.Stream):
    """A transport that sends every byte alone, each followed by :data:`DRIP_DELAY`."""

    def __init__(self, inner: trio.SocketStream) -> None:
        self.inner = inner
        self._budget = DRIP_BUDGET

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while view and self._budget > 0:
            await self.inner.send_all(view[:1])
            view = view[1:]
            self._budget -= 1
            await trio.sleep(DRIP_DELAY)
        if view:
            await self.inner.send_all(view)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


@final
class _DripListener(trio.abc.Listener[trio.abc.Stream]):
    def __init__(self, inner: trio.SocketListener) -> None:
        self.inner = inner

    async def accept(self) -> trio.abc.Stream:
        return _DripStream(await self.inner.accept())

    async def aclose(self) -> None:
        await self.inner.aclose()


@register_scenario(
    "slow-drip",
    description="A real TLS server (valid certificate) whose transport sends every byte "
    f"alone with a {DRIP_DELAY * 1000:g} ms pause after it (the first {DRIP_BUDGET} bytes "
    "of a connection; the rest at once).",
    expected="The handshake and an HTTP request succeed, slowly: the server's first "
    "flight alone takes over half a second (one byte per millisecond or slower), and the "
    "whole exchange well under a few seconds.",
)
def _slow_drip(context: ScenarioContext) -> ScenarioSetup:
    ssl_context = _context(*_valid_identity(context, "slow-drip"))
    return ScenarioSetup(
        tls_serve_function(http_responder, ssl_context, wrap_listener=_DripListener)
    )


@register_scenario(
    "huge-chain",
    description=f"Sends a chain of the leaf and {HUGE_CHAIN_INTERMEDIATES} intermediates "
    f"under the trusted CA, the leaf padded with a {HUGE_CHAIN_PADDING // 1024} KiB "
    "private extension: a Certificate message over 100 KiB.",
    expected="Python ssl (OpenSSL's default limit on a peer's certificate list, 100 KiB) "
    "raises ssl.SSLError (reason 'EXCESSIVE_MESSAGE_SIZE'); the server records code -1 "
    "with reason 'peer-alert' (the client's alert) or 'reset' (the client closed with "
    "server bytes unread), as timing decides; curl exits 35.",
)
def _huge_chain(context: ScenarioContext) -> ScenarioSetup:
    intermediates: list[trustme.CA] = []
    issuer = context.ca
    for _ in range(HUGE_CHAIN_INTERMEDIATES):
        issuer = issuer.create_child_ca()
        intermediates.append(issuer)
    cert, key = _make_leaf(issuer, padding=HUGE_CHAIN_PADDING)
    chain = cert + b"".join(ca.cert_pem.bytes() for ca in reversed(intermediates))
    cert_path, key_path = _write_pems(context.directory, "huge-chain", chain, key)
    return ScenarioSetup(tls_serve_function(http_responder, _context(cert_path, key_path)))


# -- behaviour: raw TCP servers --------------------------------------------------------------


@final
class _RawConnection:
    """A raw TCP connection and the facts its record is made of."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.received = 0
        self.sent = 0
        self.hello: ClientHello | None = None
        self.reason = Reason.SHUTDOWN
        try:
            self.peer_address: object = stream.socket.getpeername()
        except OSError:  # pragma: no cover - gone already
            self.peer_address = None

    async def receive(self) -> bytes:
        data = bytes(await self.stream.receive_some())
        self.received += len(data)
        return data

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)
        self.sent += len(data)

    async def read_hello(self, *, http_too: bool = False) -> bool:
        """Read the client's ClientHello (or, with ``http_too``, an HTTP request head).

        Returns False at EOF before it was complete.
        """
        reader = ClientHelloReader()
        received = b""
        while self.received < MAX_CLIENT_BYTES:
            data = await self.receive()
            if not data:
                return False
            received += data
            reader.feed(data)
            if reader.status is HelloStatus.PARSED:
                self.hello = reader.hello
                return True
            if reader.status is HelloStatus.UNPARSED and (not http_too or b"\r\n\r\n" in received):
                return True
        return True

    async def until_eof(self) -> None:
        """Read and discard until the client leaves (or sent too much)."""
        while self.received < MAX_CLIENT_BYTES:
            if not await self.receive():
                self.reason = Reason.EOF
                return
        await trio.sleep_forever()  # still never answering

    def record(self) -> ConnectionRecord:
        return ConnectionRecord(
            code=-1,
            kind=ErrorKind.SYSCALL,
            reason=self.reason,
            server_name=self.hello.server_name if self.hello else None,
            alpn_protocol=None,
            peer_certificate=None,
            version=None,
            bytes_received=self.received,
            bytes_sent=self.sent,
            peer_address=self.peer_address,
        )


async def _drain(stream: trio.SocketStream) -> None:
    """After our EOF: read until the client's, briefly, so closing sends no RST."""
    with trio.move_on_after(LINGER_TIMEOUT):
        received = 0
        while received < MAX_CLIENT_BYTES:
            try:
                data = await stream.receive_some()
            except trio.BrokenResourceError:
                return
            if not data:
                return
            received += len(data)


async def _close_gently(stream: trio.SocketStream) -> None:
    """After our answer: our EOF, then drain, so that closing sends no RST. A client that
    has seen enough and hung up already (a reset) is the expected outcome, not a failure:
    the connection's reason stays what the answer made it."""
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await stream.send_eof()
        await _drain(stream)


RawHandler = Callable[[_RawConnection], Awaitable[None]]


def _raw_serve_function(handler: RawHandler) -> ServeFunction:
    """A raw TCP serve function running ``handler`` for each connection."""

    async def serve(recorder: Recorder, task_status: trio.TaskStatus[int]) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")

        async def connection(stream: trio.SocketStream) -> None:
            raw = _RawConnection(stream)
            try:
                await handler(raw)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                raw.reason = Reason.RESET
            finally:
                recorder.add(raw.record())
                await stream.aclose()

        async with trio.open_nursery() as nursery:
            task_status.started(listeners[0].socket.getsockname()[1])
            await trio.serve_listeners(connection, listeners, handler_nursery=nursery)

    return serve


@register_scenario(
    "stall",
    description="Accepts the TCP connection and never sends a byte (it reads and "
    "discards what the client sends).",
    expected="The client's handshake never completes: Python ssl with a socket timeout "
    "raises TimeoutError ('_ssl.c: The handshake operation timed out'); curl "
    "--max-time exits 28.",
)
def _stall(context: ScenarioContext) -> ScenarioSetup:
    return ScenarioSetup(_raw_serve_function(_RawConnection.until_eof))


async def _stall_after_hello(raw: _RawConnection) -> None:
    if await raw.read_hello():
        await raw.until_eof()
    else:
        raw.reason = Reason.EOF


@register_scenario(
    "stall-after-hello",
    description="Reads the ClientHello, then never answers.",
    expected="The client's handshake never completes: Python ssl with a socket timeout "
    "raises TimeoutError; curl --max-time exits 28. The server records the SNI name.",
)
def _stall_after_hello_scenario(context: ScenarioContext) -> ScenarioSetup:
    return ScenarioSetup(_raw_serve_function(_stall_after_hello))


async def _reset(raw: _RawConnection) -> None:
    if not await raw.read_hello():
        raw.reason = Reason.EOF
        return
    # Linger on, with a zero timeout: close() discards the connection with a RST.
    raw.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    raw.reason = Reason.RESET
    await raw.stream.aclose()


@register_scenario(
    "reset-during-handshake",
    description="Reads the ClientHello, then resets the connection (SO_LINGER 0 and "
    "close: a TCP RST).",
    expected="Python ssl raises ConnectionResetError (errno ECONNRESET); curl exits 35; "
    "the server records reason 'reset'.",
)
def _reset_during_handshake(context: ScenarioContext) -> ScenarioSetup:
    return ScenarioSetup(_raw_serve_function(_reset))


async def _garbage(raw: _RawConnection) -> None:
    if not await raw.read_hello():
        raw.reason = Reason.EOF
        return
    await raw.send(GARBAGE)
    raw.reason = Reason.PROTOCOL_ERROR
    await _close_gently(raw.stream)


@register_scenario(
    "garbage",
    description="Reads the ClientHello, answers with bytes that are not TLS, and closes.",
    expected="Python ssl raises ssl.SSLError (reason 'WRONG_VERSION_NUMBER'); curl "
    "exits 35; the server records reason 'protocol-error'.",
)
def _garbage_scenario(context: ScenarioContext) -> ScenarioSetup:
    return ScenarioSetup(_raw_serve_function(_garbage))


async def _plain_http(raw: _RawConnection) -> None:
    if not await raw.read_hello(http_too=True):
        raw.reason = Reason.EOF
        return
    await raw.send(PLAIN_HTTP_ANSWER)
    raw.reason = Reason.PLAIN_HTTP
    await _close_gently(raw.stream)


@register_scenario(
    "plain-http",
    description="Speaks plain HTTP/1.1 without TLS: answers whatever arrives first (a "
    "ClientHello or a request) with a cleartext 'HTTP/1.1 200 OK' and closes.",
    expected="Python ssl raises ssl.SSLError (reason 'WRONG_VERSION_NUMBER'); curl "
    "https:// exits 35; curl http:// gets 200 and the body 'plain HTTP/1.1'.",
)
def _plain_http_scenario(context: ScenarioContext) -> ScenarioSetup:
    return ScenarioSetup(_raw_serve_function(_plain_http))
