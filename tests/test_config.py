"""Certificates and TLS settings: ``server_context``, its profiles, the files it loads,
SNI, mTLS, ALPN, resumption, key logging and ``CertificateStore`` reloads.

What a client sees is checked with real clients over real sockets on 127.0.0.1: Python's
``ssl`` module (in threads), ``openssl s_client`` and ``curl`` (marked ``interop``).
"""

from __future__ import annotations

import datetime
import logging
import math
import os
import re
import shutil
import socket
import ssl
import warnings
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Final, Literal

import pytest
import trio
import trio.lowlevel
import trio.testing
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from helpers import replace_certificate

import trio_accept
from trio_accept import (
    PROFILES,
    CertificateError,
    CertificateStore,
    CertificateWarning,
    HandshakeError,
    Reason,
    TLSInfo,
    TLSStream,
)

#: Safety net around everything that waits on a peer (real clock); never a timing assertion.
GUARD: Final = 20.0
#: Socket timeout of the blocking clients run in threads, for the same purpose.
CLIENT_TIMEOUT: Final = 10.0

#: Mozilla's server-side TLS guidelines 5.7, "intermediate": the TLS 1.2 suites, in order.
#: Written out here rather than taken from the library, so that a change there shows.
MOZILLA_INTERMEDIATE_TLS12: Final = (
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
    "DHE-RSA-AES128-GCM-SHA256",
    "DHE-RSA-AES256-GCM-SHA384",
    "DHE-RSA-CHACHA20-POLY1305",
)

VERSIONS: Final = [
    pytest.param(ssl.TLSVersion.TLSv1_3, "TLSv1.3", id="tls1.3"),
    pytest.param(ssl.TLSVersion.TLSv1_2, "TLSv1.2", id="tls1.2"),
]

#: The name of the default (main) certificates, which clients ask for unless told otherwise.
DEFAULT_NAME: Final = "localhost"


# -- certificates on disk ------------------------------------------------------------------


def write_pair(leaf: trustme.LeafCert, directory: Path, stem: str) -> tuple[Path, Path]:
    """Write the certificate chain (leaf first) and the key as two PEM files."""
    cert, key = directory / f"{stem}.pem", directory / f"{stem}-key.pem"
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    return cert, key


def der_of(leaf: trustme.LeafCert) -> bytes:
    """The leaf certificate as DER, what a client's ``getpeercert(True)`` returns."""
    return ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())


def dns_names(certificate: x509.Certificate) -> list[str]:
    alt_names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return alt_names.value.get_values_for_type(x509.DNSName)


def peer_dns_names(peer: Mapping[str, Any] | None) -> list[str]:
    """The DNS names of a certificate as ``getpeercert()`` shows it."""
    assert peer is not None
    return [value for kind, value in peer["subjectAltName"] if kind == "DNS"]


def common_name(peer: Mapping[str, Any] | None) -> str | None:
    """The subject's commonName of a certificate as ``getpeercert()`` shows it."""
    if peer is None:
        return None
    for rdn in peer["subject"]:
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture
def pair(ca: trustme.CA, tmp_path: Path) -> tuple[Path, Path]:
    """A certificate for localhost (ECDSA, from the session CA) and its key."""
    return write_pair(ca.issue_cert(DEFAULT_NAME, "127.0.0.1"), tmp_path, "server")


def trusting(ca: trustme.CA, maximum_version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    if maximum_version is not None:
        context.maximum_version = maximum_version
    return context


# -- a server on 127.0.0.1 -----------------------------------------------------------------

Handler = Callable[[TLSStream], Awaitable[None]]


async def echo_once(stream: TLSStream) -> None:
    """Send the first chunk back, then close (with close_notify)."""
    data = await stream.receive_some()
    if data:
        await stream.send_all(data)


async def echo_all(stream: TLSStream) -> None:
    async for data in stream:
        await stream.send_all(data)


async def http_hello(stream: TLSStream) -> None:
    """A tiny HTTP/1.1 server: answers any request with what the handshake chose."""
    request = b""
    while b"\r\n\r\n" not in request:
        data = await stream.receive_some()
        if not data:
            return
        request += data
    info = stream.info
    body = (
        f"server_name={info.server_name} alpn={info.alpn_protocol} "
        f"client={common_name(info.peer_certificate)}\n"
    ).encode()
    head = (
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    await stream.send_all(head + body)


@dataclass
class Running:
    """A server under test: its port, the handshakes it completed and those it refused."""

    server: trio_accept.Server
    port: int
    infos: list[TLSInfo]
    refusals: trio.MemoryReceiveChannel[HandshakeError]

    async def next_refusal(self) -> HandshakeError:
        """The next handshake failure (the client may learn of it before the hook runs)."""
        with trio.fail_after(GUARD):
            return await self.refusals.receive()

    def assert_no_refusal(self) -> None:
        with pytest.raises(trio.WouldBlock):
            self.refusals.receive_nowait()


@asynccontextmanager
async def running(
    ssl_context: ssl.SSLContext | CertificateStore, handler: Handler = echo_once
) -> AsyncGenerator[Running]:
    infos: list[TLSInfo] = []
    send_refusal, refusals = trio.open_memory_channel[HandshakeError](math.inf)

    async def serve(stream: TLSStream) -> None:
        infos.append(stream.info)  # before the handler answers: the client waits for that
        await handler(stream)

    with trio.fail_after(GUARD):
        async with trio_accept.open_server(
            serve,
            0,
            host="127.0.0.1",
            ssl_context=ssl_context,
            on_handshake_error=send_refusal.send_nowait,
        ) as server:
            yield Running(server, server.addresses[0][1], infos, refusals)


# -- Python's ssl module as the client (blocking, run in threads) --------------------------


@dataclass(frozen=True)
class Exchange:
    """What a client saw of one connection."""

    echoed: bytes
    certificate: bytes  # DER
    peer: dict[str, Any] | None  # getpeercert(): the verified certificate
    version: str | None
    cipher: str
    alpn: str | None
    session: ssl.SSLSession | None
    resumed: bool


def open_tls(
    port: int,
    context: ssl.SSLContext,
    server_hostname: str | None = DEFAULT_NAME,
    session: ssl.SSLSession | None = None,
) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT)
    try:
        return context.wrap_socket(
            raw, server_hostname=server_hostname, session=session, suppress_ragged_eofs=False
        )
    except BaseException:
        raw.close()
        raise


def roundtrip(tls: ssl.SSLSocket, message: bytes) -> bytes:
    tls.sendall(message)
    received = b""
    while len(received) < len(message):
        chunk = tls.recv(4096)
        if not chunk:
            break
        received += chunk
    return received


def exchange(
    port: int,
    context: ssl.SSLContext,
    server_hostname: str | None = DEFAULT_NAME,
    session: ssl.SSLSession | None = None,
) -> Exchange:
    """Connect, send a message and read its echo (so that TLS 1.3 tickets arrived too)."""
    with open_tls(port, context, server_hostname, session) as tls:
        echoed = roundtrip(tls, b"ping")
        der = tls.getpeercert(binary_form=True)
        cipher = tls.cipher()
        assert der is not None
        assert cipher is not None
        return Exchange(
            echoed=echoed,
            certificate=der,
            peer=tls.getpeercert(),
            version=tls.version(),
            cipher=cipher[0],
            alpn=tls.selected_alpn_protocol(),
            session=tls.session,
            resumed=tls.session_reused is True,
        )


def refused(
    port: int, context: ssl.SSLContext, server_hostname: str | None = DEFAULT_NAME
) -> ssl.SSLError:
    """Connect and read; returns the error the client gets. A TLS 1.3 client learns of a
    refusal after its handshake (mTLS), at its first read."""
    try:
        with open_tls(port, context, server_hostname) as tls:
            tls.recv(4096)
    except ssl.SSLError as exc:
        return exc
    raise AssertionError("the server accepted the client")


def served_certificate(context: ssl.SSLContext, server_name: str = DEFAULT_NAME) -> bytes:
    """The certificate (DER) ``context`` serves, by a handshake over memory buffers: no
    socket, no clock (for the tests on trio's mock clock)."""
    client_context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_context.check_hostname = False
    client_context.verify_mode = ssl.CERT_NONE
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    server_in, server_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_context.wrap_bio(to_client, to_server, server_hostname=server_name)
    server = context.wrap_bio(server_in, server_out, server_side=True)
    for _ in range(10):
        try:
            client.do_handshake()
        except ssl.SSLWantReadError:
            pass
        else:
            der = client.getpeercert(binary_form=True)
            assert der is not None
            return der
        server_in.write(to_server.read())
        with suppress(ssl.SSLWantReadError):
            server.do_handshake()
        to_client.write(server_out.read())
    raise AssertionError("no handshake over memory buffers")


# -- external programs ---------------------------------------------------------------------


def program(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed")
    return path


async def s_client(port: int, *options: str) -> tuple[int, str]:
    """``openssl s_client``: sends a line, waits for the server to close. Returns the exit
    status and everything it printed."""
    result = await trio.run_process(
        [program("openssl"), "s_client", "-connect", f"127.0.0.1:{port}", "-ign_eof", *options],
        stdin=b"ping\n",
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    return result.returncode, (result.stdout + result.stderr).decode()


def s_client_certificate(output: str) -> x509.Certificate:
    """The server certificate s_client printed."""
    match = re.search(
        r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", output, re.DOTALL
    )
    assert match is not None, output
    return x509.load_pem_x509_certificate(match.group().encode())


async def curl(*arguments: str) -> tuple[int, str, str]:
    """Run curl; returns the exit status, the body (stdout) and the verbose log (stderr)."""
    result = await trio.run_process(
        [
            *(program("curl"), "--silent", "--show-error"),
            *("--max-time", str(CLIENT_TIMEOUT), *arguments),
        ],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    return result.returncode, result.stdout.decode(), result.stderr.decode()


def curl_to(name: str, port: int, ca_file: Path) -> list[str]:
    """curl's arguments to reach ``https://name:port/`` on 127.0.0.1, trusting ``ca_file``."""
    return [
        *("--resolve", f"{name}:{port}:127.0.0.1", "--cacert", str(ca_file)),
        f"https://{name}:{port}/",
    ]


# == profiles ===============================================================================


@pytest.mark.parametrize("profile", ["intermediate", "modern"])
def test_profile_options(pair: tuple[Path, Path], profile: str) -> None:
    context = trio_accept.server_context(*pair, profile=profile)
    assert context.options & ssl.OP_NO_COMPRESSION
    assert context.options & ssl.OP_NO_RENEGOTIATION
    assert not context.options & ssl.OP_CIPHER_SERVER_PREFERENCE  # the client chooses
    assert context.verify_mode == ssl.CERT_NONE  # no client certificates unless asked
    assert not context.keylog_filename  # None


def test_intermediate_offers_exactly_mozillas_tls12_suites(pair: tuple[Path, Path]) -> None:
    context = trio_accept.server_context(*pair)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.maximum_version == ssl.TLSVersion.MAXIMUM_SUPPORTED
    tls12 = [cipher["name"] for cipher in context.get_ciphers() if cipher["protocol"] == "TLSv1.2"]
    assert tls12 == list(MOZILLA_INTERMEDIATE_TLS12)
    assert PROFILES["intermediate"].minimum_version == ssl.TLSVersion.TLSv1_2


def test_modern_is_tls13_only(pair: tuple[Path, Path]) -> None:
    context = trio_accept.server_context(*pair, profile="modern")
    assert context.minimum_version == ssl.TLSVersion.TLSv1_3
    assert PROFILES["modern"].minimum_version == ssl.TLSVersion.TLSv1_3


@pytest.mark.parametrize(("version", "name"), VERSIONS)
async def test_intermediate_accepts_tls12_and_tls13(
    pair: tuple[Path, Path], ca: trustme.CA, version: ssl.TLSVersion, name: str
) -> None:
    async with running(trio_accept.server_context(*pair)) as server:
        seen = await trio.to_thread.run_sync(exchange, server.port, trusting(ca, version))
    assert seen.echoed == b"ping"
    assert seen.version == name
    [info] = server.infos
    assert info.version == name
    if name == "TLSv1.2":
        assert info.cipher in MOZILLA_INTERMEDIATE_TLS12


@pytest.mark.parametrize(
    "client_suites",
    [
        ("ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-ECDSA-AES128-GCM-SHA256"),
        ("ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-ECDSA-AES128-GCM-SHA256"),
    ],
)
async def test_the_client_chooses_the_tls12_suite(
    pair: tuple[Path, Path], ca: trustme.CA, client_suites: tuple[str, str]
) -> None:
    # With server preference, AES128-GCM (the server's first) would win both times.
    client = trusting(ca, ssl.TLSVersion.TLSv1_2)
    client.set_ciphers(":".join(client_suites))
    async with running(trio_accept.server_context(*pair)) as server:
        seen = await trio.to_thread.run_sync(exchange, server.port, client)
    assert seen.cipher == client_suites[0]
    assert server.infos[0].cipher == client_suites[0]


async def test_intermediate_refuses_suites_outside_the_list(
    pair: tuple[Path, Path], ca: trustme.CA
) -> None:
    client = trusting(ca, ssl.TLSVersion.TLSv1_2)
    client.set_ciphers("ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES128-SHA")  # CBC: not Mozilla's
    async with running(trio_accept.server_context(*pair)) as server:
        await trio.to_thread.run_sync(refused, server.port, client)
        refusal = await server.next_refusal()
    assert refusal.reason is Reason.NO_SHARED_CIPHER
    assert server.infos == []


async def test_modern_refuses_a_tls12_only_client(pair: tuple[Path, Path], ca: trustme.CA) -> None:
    context = trio_accept.server_context(*pair, profile="modern")
    async with running(context) as server:
        error = await trio.to_thread.run_sync(
            refused, server.port, trusting(ca, ssl.TLSVersion.TLSv1_2)
        )
        refusal = await server.next_refusal()
        seen = await trio.to_thread.run_sync(exchange, server.port, trusting(ca))
    assert error.reason == "TLSV1_ALERT_PROTOCOL_VERSION"
    assert refusal.reason is Reason.UNSUPPORTED_VERSION
    assert seen.version == "TLSv1.3"
    assert [info.version for info in server.infos] == ["TLSv1.3"]


def test_unknown_profile(pair: tuple[Path, Path]) -> None:
    with pytest.raises(ValueError, match=r"unknown profile 'old'.*intermediate.*modern"):
        trio_accept.server_context(*pair, profile="old")


def test_invalid_options(pair: tuple[Path, Path]) -> None:
    with pytest.raises(ValueError, match="session_tickets"):
        trio_accept.server_context(*pair, session_tickets=-1)
    with pytest.raises(ValueError, match="client_ca"):
        trio_accept.server_context(*pair, require_client_cert=True)


# -- the key-exchange group (openssl s_client chooses what it offers) ----------------------


@pytest.mark.interop
@pytest.mark.parametrize(
    ("group", "client_groups", "key"),
    [
        pytest.param("profile", "X25519", "X25519", id="default-x25519"),
        pytest.param("prime256v1", "P-256", "prime256v1", id="p256-p256"),
        pytest.param("prime256v1", "X25519:P-256", "prime256v1", id="p256-retry"),
        pytest.param(None, "P-256", "prime256v1", id="openssl-list-p256"),
        pytest.param(None, "X25519", "X25519", id="openssl-list-x25519"),
    ],
)
async def test_groups_accepted(
    pair: tuple[Path, Path], ca_file: Path, group: str | None, client_groups: str, key: str
) -> None:
    options: dict[str, Any] = {} if group == "profile" else {"group": group}
    async with running(trio_accept.server_context(*pair, **options)) as server:
        status, output = await s_client(
            server.port, "-groups", client_groups, "-CAfile", str(ca_file)
        )
    assert status == 0, output
    assert re.search(rf"Server Temp Key: .*{key}", output), output
    assert "\nping\n" in output
    assert len(server.infos) == 1


@pytest.mark.interop
@pytest.mark.parametrize("version_option", ["-tls1_3", "-tls1_2"])
async def test_default_group_refuses_a_p256_only_client(
    pair: tuple[Path, Path], ca_file: Path, version_option: str
) -> None:
    async with running(trio_accept.server_context(*pair)) as server:
        status, output = await s_client(
            server.port, "-groups", "P-256", version_option, "-CAfile", str(ca_file)
        )
        refusal = await server.next_refusal()
    assert status != 0
    assert "alert handshake failure" in output
    assert server.infos == []
    if version_option == "-tls1_2":
        assert refusal.reason is Reason.NO_SHARED_CIPHER


@pytest.mark.interop
async def test_no_common_group_in_tls13_is_no_shared_cipher(
    pair: tuple[Path, Path], ca_file: Path
) -> None:
    async with running(trio_accept.server_context(*pair)) as server:
        await s_client(server.port, "-groups", "P-256", "-tls1_3", "-CAfile", str(ca_file))
        refusal = await server.next_refusal()
    assert refusal.reason is Reason.NO_SHARED_CIPHER


# == files ==================================================================================


async def test_chain_with_an_intermediate_verifies_against_the_root(
    tmp_path: Path, ca: trustme.CA
) -> None:
    intermediate = ca.create_child_ca()
    leaf = intermediate.issue_cert(DEFAULT_NAME)
    assert len(leaf.cert_chain_pems) == 2  # the leaf, then the intermediate
    cert, key = write_pair(leaf, tmp_path, "chained")
    leaf_only = tmp_path / "leaf-only.pem"
    leaf.cert_chain_pems[0].write_to_path(str(leaf_only))
    client = trusting(ca)  # the root only
    async with running(trio_accept.server_context(cert, key)) as server:
        seen = await trio.to_thread.run_sync(exchange, server.port, client)
    assert seen.certificate == der_of(leaf)
    # The intermediate is what makes it verify: without it, the same client refuses.
    async with running(trio_accept.server_context(leaf_only, key)) as server:
        error = await trio.to_thread.run_sync(refused, server.port, client)
    assert isinstance(error, ssl.SSLCertVerificationError)


@pytest.mark.parametrize("key_type", [trustme.KeyType.RSA, trustme.KeyType.ECDSA])
@pytest.mark.parametrize(("version", "name"), VERSIONS)
async def test_rsa_and_ecdsa_keys(
    tmp_path: Path, ca: trustme.CA, key_type: trustme.KeyType, version: ssl.TLSVersion, name: str
) -> None:
    leaf = ca.issue_cert(DEFAULT_NAME, key_type=key_type)
    context = trio_accept.server_context(*write_pair(leaf, tmp_path, "server"))
    async with running(context) as server:
        seen = await trio.to_thread.run_sync(exchange, server.port, trusting(ca, version))
    assert seen.certificate == der_of(leaf)
    assert seen.version == name
    if name == "TLSv1.2":  # the suite's signature algorithm is the key's
        assert seen.cipher.startswith(f"ECDHE-{key_type.name}-")


@pytest.fixture
def encrypted_pair(ca: trustme.CA, tmp_path: Path) -> tuple[Path, Path, trustme.LeafCert]:
    """A certificate and its key, encrypted with the password "s3cret"."""
    leaf = ca.issue_cert(DEFAULT_NAME)
    cert, key = write_pair(leaf, tmp_path, "server")
    private_key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), None)
    key.write_bytes(
        private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"s3cret"),
        )
    )
    assert key.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    return cert, key, leaf


@pytest.mark.parametrize("password", ["s3cret", b"s3cret"])
async def test_encrypted_key_with_its_password(
    encrypted_pair: tuple[Path, Path, trustme.LeafCert],
    ca: trustme.CA,
    password: str | bytes,
) -> None:
    cert, key, leaf = encrypted_pair
    context = trio_accept.server_context(cert, key, password=password)
    async with running(context) as server:
        seen = await trio.to_thread.run_sync(exchange, server.port, trusting(ca))
    assert seen.certificate == der_of(leaf)


async def test_encrypted_sni_key_with_its_password(
    encrypted_pair: tuple[Path, Path, trustme.LeafCert], ca: trustme.CA, tmp_path: Path
) -> None:
    cert, key, leaf = encrypted_pair  # issued for DEFAULT_NAME
    default_cert, default_key = write_pair(ca.issue_cert("default.example"), tmp_path, "default")
    context = trio_accept.server_context(
        default_cert, default_key, sni={DEFAULT_NAME: (cert, key, "s3cret")}
    )
    async with running(context) as server:
        seen = await trio.to_thread.run_sync(exchange, server.port, trusting(ca))
    assert seen.certificate == der_of(leaf)
    with pytest.raises(CertificateError, match="password"):
        trio_accept.server_context(default_cert, default_key, sni={DEFAULT_NAME: (cert, key)})


def test_encrypted_key_without_a_password(
    encrypted_pair: tuple[Path, Path, trustme.LeafCert],
) -> None:
    # An error, not a prompt: were OpenSSL asking on the terminal, this would hang or
    # fail with OpenSSL's own message.
    cert, key, _ = encrypted_pair
    with pytest.raises(CertificateError, match="password") as excinfo:
        trio_accept.server_context(cert, key)
    assert str(key) in str(excinfo.value)
    assert "encrypted" in str(excinfo.value)


def test_encrypted_key_with_a_wrong_password(
    encrypted_pair: tuple[Path, Path, trustme.LeafCert],
) -> None:
    cert, key, _ = encrypted_pair
    with pytest.raises(CertificateError, match="password") as excinfo:
        trio_accept.server_context(cert, key, password="wrong")
    assert str(key) in str(excinfo.value)


@pytest.mark.parametrize("missing", ["certificate", "private key", "client CA"])
def test_missing_file(pair: tuple[Path, Path], tmp_path: Path, missing: str) -> None:
    cert, key = pair
    client_ca = tmp_path / "clients.pem"
    trustme.CA().cert_pem.write_to_path(str(client_ca))
    gone = tmp_path / "gone.pem"
    files = {"certificate": cert, "private key": key, "client CA": client_ca}
    files[missing] = gone
    with pytest.raises(CertificateError, match="no such file") as excinfo:
        trio_accept.server_context(
            files["certificate"], files["private key"], client_ca=files["client CA"]
        )
    assert str(gone) in str(excinfo.value)
    assert f"the {missing}" in str(excinfo.value)


def test_key_of_another_certificate(
    pair: tuple[Path, Path], ca: trustme.CA, tmp_path: Path
) -> None:
    cert, _ = pair
    _, other_key = write_pair(ca.issue_cert(DEFAULT_NAME), tmp_path, "other")
    with pytest.raises(CertificateError, match="does not belong") as excinfo:
        trio_accept.server_context(cert, other_key)
    assert str(cert) in str(excinfo.value)
    assert str(other_key) in str(excinfo.value)


def test_chain_in_the_wrong_order(tmp_path: Path, ca: trustme.CA) -> None:
    leaf = ca.create_child_ca().issue_cert(DEFAULT_NAME)
    cert, key = write_pair(leaf, tmp_path, "server")
    cert.write_bytes(b"".join(blob.bytes() for blob in reversed(leaf.cert_chain_pems)))
    with pytest.raises(CertificateError, match="server certificate first") as excinfo:
        trio_accept.server_context(cert, key)
    assert str(cert) in str(excinfo.value)


@pytest.mark.parametrize(
    "content",
    [b"", b"not a certificate\n", b"-----BEGIN CERTIFICATE-----\nnot base64\n"],
    ids=["empty", "text", "broken-pem"],
)
def test_file_without_a_pem_certificate(
    pair: tuple[Path, Path], tmp_path: Path, content: bytes
) -> None:
    cert = tmp_path / "nothing.pem"
    cert.write_bytes(content)
    with pytest.raises(CertificateError, match="no PEM certificate") as excinfo:
        trio_accept.server_context(cert, pair[1])
    assert str(cert) in str(excinfo.value)


@pytest.mark.parametrize(
    ("not_before", "not_after", "problem"),
    [
        pytest.param(-30, -1, "expired on", id="expired"),
        pytest.param(1, 30, "is not valid before", id="not-yet-valid"),
    ],
)
def test_certificate_outside_its_validity_warns(
    tmp_path: Path, ca: trustme.CA, not_before: int, not_after: int, problem: str
) -> None:
    now = datetime.datetime.now(datetime.UTC)
    leaf = ca.issue_cert(
        DEFAULT_NAME,
        not_before=now + datetime.timedelta(days=not_before),
        not_after=now + datetime.timedelta(days=not_after),
    )
    cert, key = write_pair(leaf, tmp_path, "server")
    with pytest.warns(CertificateWarning, match=problem) as record:
        context = trio_accept.server_context(cert, key)
    assert isinstance(context, ssl.SSLContext)  # it still loads
    assert len(record) == 1
    assert str(cert) in str(record[0].message)
    assert served_certificate(context) == der_of(leaf)


def test_valid_certificate_does_not_warn(pair: tuple[Path, Path]) -> None:
    # Warnings are errors in this test suite: a spurious one fails here.
    trio_accept.server_context(*pair)


# == development certificates ==============================================================


async def test_without_a_certificate_the_dev_ca_issues_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "state"
    monkeypatch.setenv("XDG_STATE_HOME", str(state))
    dev = tmp_path / "dev"
    context = trio_accept.server_context(dev_ca_directory=dev)
    ca_path = trio_accept.dev_ca_path(dev)
    assert ca_path.parent == dev
    client = ssl.create_default_context(cafile=str(ca_path))
    async with running(context) as server:
        by_name = await trio.to_thread.run_sync(exchange, server.port, client)
        by_address = await trio.to_thread.run_sync(exchange, server.port, client, "127.0.0.1")
    assert by_name.echoed == by_address.echoed == b"ping"
    assert set(peer_dns_names(by_name.peer)) == {"localhost"}
    assert not state.exists()  # the per-user CA was not touched


def test_a_given_certificate_never_uses_the_dev_ca(
    pair: tuple[Path, Path], tmp_path: Path
) -> None:
    dev = tmp_path / "dev"
    trio_accept.server_context(*pair, dev_ca_directory=dev)
    assert not dev.exists()


# == SNI ====================================================================================


@dataclass(frozen=True)
class SNIFiles:
    default: tuple[Path, Path]  # localhost
    sni: dict[str, Path | tuple[Path, Path]]


@pytest.fixture
def sni_files(ca: trustme.CA, tmp_path: Path) -> SNIFiles:
    wildcard = tmp_path / "wildcard.pem"  # certificate and key in one file
    ca.issue_cert("*.example.com").private_key_and_cert_chain_pem.write_to_path(str(wildcard))
    return SNIFiles(
        default=write_pair(ca.issue_cert(DEFAULT_NAME), tmp_path, "default"),
        sni={
            "api.example.com": write_pair(ca.issue_cert("api.example.com"), tmp_path, "api"),
            "*.example.com": wildcard,
        },
    )


def sni_client(ca: trustme.CA) -> ssl.SSLContext:
    """Verifies the chain but not the name: the test compares the names itself."""
    context = trusting(ca)
    context.check_hostname = False
    return context


SNI_CHOICES: Final = [
    pytest.param("api.example.com", "api.example.com", id="exact"),
    pytest.param("www.example.com", "*.example.com", id="wildcard"),
    pytest.param("a.b.example.com", DEFAULT_NAME, id="wildcard-is-one-label"),
    pytest.param("example.com", DEFAULT_NAME, id="wildcard-needs-a-label"),
    pytest.param("other.test", DEFAULT_NAME, id="unknown"),
    pytest.param(DEFAULT_NAME, DEFAULT_NAME, id="default"),
]


@pytest.mark.parametrize(("name", "served"), SNI_CHOICES)
async def test_sni_chooses_the_certificate(
    sni_files: SNIFiles, ca: trustme.CA, name: str, served: str
) -> None:
    context = trio_accept.server_context(*sni_files.default, sni=sni_files.sni)
    async with running(context) as server:
        seen = await trio.to_thread.run_sync(exchange, server.port, sni_client(ca), name)
    assert peer_dns_names(seen.peer) == [served]
    [info] = server.infos
    assert info.server_name is not None
    assert info.server_name.lower() == name.lower()


async def test_sni_without_a_name_gets_the_default(sni_files: SNIFiles, ca: trustme.CA) -> None:
    context = trio_accept.server_context(*sni_files.default, sni=sni_files.sni)
    async with running(context) as server:
        seen = await trio.to_thread.run_sync(exchange, server.port, sni_client(ca), None)
    assert peer_dns_names(seen.peer) == [DEFAULT_NAME]
    assert server.infos[0].server_name is None


@pytest.mark.interop
@pytest.mark.parametrize(
    ("name", "served", "verify"),
    [
        ("api.example.com", "api.example.com", True),
        ("www.example.com", "*.example.com", True),
        ("API.Example.COM", "api.example.com", True),  # sent as is, unlike Python's
        ("a.b.example.com", DEFAULT_NAME, False),
    ],
)
async def test_sni_with_openssl(
    sni_files: SNIFiles, ca_file: Path, name: str, served: str, verify: bool
) -> None:
    context = trio_accept.server_context(*sni_files.default, sni=sni_files.sni)
    verify_options = ["-verify_hostname", name, "-verify_return_error"] if verify else []
    async with running(context) as server:
        status, output = await s_client(
            server.port, "-servername", name, "-CAfile", str(ca_file), *verify_options
        )
    assert status == 0, output
    assert "Verify return code: 0 (ok)" in output
    assert dns_names(s_client_certificate(output)) == [served]
    [info] = server.infos
    assert info.server_name is not None
    assert info.server_name.lower() == name.lower()


@pytest.mark.parametrize(
    ("name", "served"),
    [
        ("api.example.com", "api.example.com"),
        ("www.example.com", "*.example.com"),
        (DEFAULT_NAME, DEFAULT_NAME),  # the default certificate's own name
    ],
)
async def test_strict_sni_serves_known_names(
    sni_files: SNIFiles, ca: trustme.CA, name: str, served: str
) -> None:
    context = trio_accept.server_context(*sni_files.default, sni=sni_files.sni, strict_sni=True)
    async with running(context) as server:
        seen = await trio.to_thread.run_sync(exchange, server.port, trusting(ca), name)
    assert peer_dns_names(seen.peer) == [served]
    server.assert_no_refusal()


@pytest.mark.parametrize("name", ["other.test", "a.b.example.com", None])
async def test_strict_sni_refuses_unknown_names(
    sni_files: SNIFiles, ca: trustme.CA, name: str | None
) -> None:
    context = trio_accept.server_context(*sni_files.default, sni=sni_files.sni, strict_sni=True)
    async with running(context) as server:
        error = await trio.to_thread.run_sync(refused, server.port, sni_client(ca), name)
        refusal = await server.next_refusal()
    assert error.reason == "TLSV1_UNRECOGNIZED_NAME"
    assert refusal.reason is Reason.UNRECOGNIZED_NAME
    assert server.infos == []


async def test_strict_sni_without_an_sni_map(pair: tuple[Path, Path], ca: trustme.CA) -> None:
    # The default certificate's names (localhost, 127.0.0.1) are all there is.
    context = trio_accept.server_context(*pair, strict_sni=True)
    async with running(context) as server:
        seen = await trio.to_thread.run_sync(exchange, server.port, trusting(ca))
        await trio.to_thread.run_sync(refused, server.port, sni_client(ca), "other.test")
        refusal = await server.next_refusal()
    assert seen.echoed == b"ping"
    assert refusal.reason is Reason.UNRECOGNIZED_NAME


@pytest.mark.interop
@pytest.mark.parametrize(
    "name_option", [["-servername", "other.test"], ["-noservername"]], ids=["unknown", "none"]
)
async def test_strict_sni_alert_seen_by_openssl(
    sni_files: SNIFiles, ca_file: Path, name_option: list[str]
) -> None:
    context = trio_accept.server_context(*sni_files.default, sni=sni_files.sni, strict_sni=True)
    async with running(context) as server:
        status, output = await s_client(server.port, *name_option, "-CAfile", str(ca_file))
        refusal = await server.next_refusal()
    assert status != 0
    assert "unrecognized name" in output
    assert "alert number 112" in output
    assert refusal.reason is Reason.UNRECOGNIZED_NAME


@pytest.mark.interop
@pytest.mark.parametrize("name", ["api.example.com", "www.example.com", DEFAULT_NAME])
async def test_sni_with_curl(sni_files: SNIFiles, ca_file: Path, name: str) -> None:
    context = trio_accept.server_context(*sni_files.default, sni=sni_files.sni, strict_sni=True)
    async with running(context, http_hello) as server:
        status, body, log = await curl(*curl_to(name, server.port, ca_file))
    assert status == 0, log
    assert body.startswith(f"server_name={name} ")
    assert [info.server_name for info in server.infos] == [name]


# == mTLS ===================================================================================


@dataclass(frozen=True)
class Clients:
    """Client certificates: ``alice`` from the CA the server trusts, ``mallory`` not."""

    ca_file: Path  # what the server trusts
    alice: trustme.LeafCert
    mallory: trustme.LeafCert


def clients(directory: Path, key_type: trustme.KeyType = trustme.KeyType.ECDSA) -> Clients:
    client_ca = trustme.CA(key_type=key_type)
    ca_file = directory / "client-ca.pem"
    client_ca.cert_pem.write_to_path(str(ca_file))
    return Clients(
        ca_file=ca_file,
        alice=client_ca.issue_cert(
            "alice.clients.example", common_name="alice", key_type=key_type
        ),
        mallory=trustme.CA().issue_cert("mallory.clients.example", key_type=key_type),
    )


def with_certificate(
    context: ssl.SSLContext, certificate: trustme.LeafCert | None
) -> ssl.SSLContext:
    if certificate is not None:
        certificate.configure_cert(context)
    return context


#: TLS 1.2 with RSA client certificates: see test_tls12_mtls_with_an_ecdsa_certificate.
MTLS_VERSIONS: Final = [
    pytest.param(ssl.TLSVersion.TLSv1_3, trustme.KeyType.ECDSA, id="tls1.3-ecdsa"),
    pytest.param(ssl.TLSVersion.TLSv1_3, trustme.KeyType.RSA, id="tls1.3-rsa"),
    pytest.param(ssl.TLSVersion.TLSv1_2, trustme.KeyType.RSA, id="tls1.2-rsa"),
]


@pytest.mark.parametrize(("version", "key_type"), MTLS_VERSIONS)
async def test_required_client_certificate(
    pair: tuple[Path, Path],
    ca: trustme.CA,
    tmp_path: Path,
    version: ssl.TLSVersion,
    key_type: trustme.KeyType,
) -> None:
    certs = clients(tmp_path, key_type)
    context = trio_accept.server_context(*pair, client_ca=certs.ca_file, require_client_cert=True)
    assert context.verify_mode == ssl.CERT_REQUIRED
    async with running(context) as server:
        seen = await trio.to_thread.run_sync(
            exchange, server.port, with_certificate(trusting(ca, version), certs.alice)
        )
        assert seen.echoed == b"ping"
        [info] = server.infos
        assert common_name(info.peer_certificate) == "alice"
        assert peer_dns_names(info.peer_certificate) == ["alice.clients.example"]

        without = await trio.to_thread.run_sync(refused, server.port, trusting(ca, version))
        assert (await server.next_refusal()).reason is Reason.NO_CLIENT_CERT
        assert without.reason in {
            "TLSV13_ALERT_CERTIFICATE_REQUIRED",  # TLS 1.3
            "SSLV3_ALERT_HANDSHAKE_FAILURE",  # TLS 1.2 has no alert of its own for it
        }

        unknown = await trio.to_thread.run_sync(
            refused, server.port, with_certificate(trusting(ca, version), certs.mallory)
        )
        assert (await server.next_refusal()).reason is Reason.UNKNOWN_CA
        assert unknown.reason == "TLSV1_ALERT_UNKNOWN_CA"
    assert len(server.infos) == 1


@pytest.mark.parametrize(("version", "key_type"), MTLS_VERSIONS)
async def test_optional_client_certificate(
    pair: tuple[Path, Path],
    ca: trustme.CA,
    tmp_path: Path,
    version: ssl.TLSVersion,
    key_type: trustme.KeyType,
) -> None:
    certs = clients(tmp_path, key_type)
    context = trio_accept.server_context(*pair, client_ca=certs.ca_file)
    assert context.verify_mode == ssl.CERT_OPTIONAL
    async with running(context) as server:
        with_cert = await trio.to_thread.run_sync(
            exchange, server.port, with_certificate(trusting(ca, version), certs.alice)
        )
        without = await trio.to_thread.run_sync(exchange, server.port, trusting(ca, version))
        # Optional, but verified when sent.
        await trio.to_thread.run_sync(
            refused, server.port, with_certificate(trusting(ca, version), certs.mallory)
        )
        assert (await server.next_refusal()).reason is Reason.UNKNOWN_CA
    assert with_cert.echoed == without.echoed == b"ping"
    first, second = server.infos
    assert common_name(first.peer_certificate) == "alice"
    assert second.peer_certificate is None


async def test_tls12_mtls_with_an_ecdsa_certificate(
    pair: tuple[Path, Path], ca: trustme.CA, tmp_path: Path
) -> None:
    certs = clients(tmp_path)
    context = trio_accept.server_context(*pair, client_ca=certs.ca_file, require_client_cert=True)
    client = with_certificate(trusting(ca, ssl.TLSVersion.TLSv1_2), certs.alice)
    async with running(context) as server:
        seen = await trio.to_thread.run_sync(exchange, server.port, client)
    assert seen.echoed == b"ping"


@pytest.mark.interop
async def test_mtls_with_curl(pair: tuple[Path, Path], ca_file: Path, tmp_path: Path) -> None:
    certs = clients(tmp_path)
    cert, key = write_pair(certs.alice, tmp_path, "alice")
    context = trio_accept.server_context(*pair, client_ca=certs.ca_file, require_client_cert=True)
    async with running(context, http_hello) as server:
        status, body, log = await curl(
            "--cert", str(cert), "--key", str(key), *curl_to(DEFAULT_NAME, server.port, ca_file)
        )
        assert status == 0, log
        assert body == f"server_name={DEFAULT_NAME} alpn=None client=alice\n"

        status, body, log = await curl(*curl_to(DEFAULT_NAME, server.port, ca_file))
        assert status != 0
        assert body == ""
        assert (await server.next_refusal()).reason is Reason.NO_CLIENT_CERT


# == ALPN ===================================================================================


@pytest.mark.parametrize(
    ("offered", "chosen"),
    [
        pytest.param(["http/1.1", "h2"], "h2", id="server-preference"),
        pytest.param(["h2", "http/1.1"], "h2", id="both-agree"),
        pytest.param(["http/1.1"], "http/1.1", id="second-choice"),
        pytest.param(["spdy/3"], None, id="no-overlap-continues"),
        pytest.param(None, None, id="no-alpn"),
    ],
)
async def test_alpn(
    pair: tuple[Path, Path], ca: trustme.CA, offered: list[str] | None, chosen: str | None
) -> None:
    client = trusting(ca)
    if offered is not None:
        client.set_alpn_protocols(offered)
    context = trio_accept.server_context(*pair, alpn=["h2", "http/1.1"])
    async with running(context) as server:
        seen = await trio.to_thread.run_sync(exchange, server.port, client)
    assert seen.echoed == b"ping"
    assert seen.alpn == chosen
    assert server.infos[0].alpn_protocol == chosen
    server.assert_no_refusal()


@pytest.mark.interop
async def test_alpn_with_curl(pair: tuple[Path, Path], ca_file: Path) -> None:
    context = trio_accept.server_context(*pair, alpn=["h2", "http/1.1"])
    async with running(context, http_hello) as server:
        # HTTP/1.1 over TLS: our tiny server answers it.
        status, version, log = await curl(
            "--http1.1", "--output", os.devnull, "--write-out", "%{http_version}",
            *curl_to(DEFAULT_NAME, server.port, ca_file),
        )  # fmt: skip
        assert status == 0, log
        assert version == "1.1"
        # HTTP/2: ALPN says h2; our server speaks no HTTP/2, so the request itself fails.
        _, _, log = await curl(
            "--http2", "--verbose", *curl_to(DEFAULT_NAME, server.port, ca_file)
        )
        assert re.search(r"ALPN[:,] server accepted (to use )?h2", log), log
    assert [info.alpn_protocol for info in server.infos] == ["http/1.1", "h2"]


# == session resumption =====================================================================


@pytest.mark.parametrize(("version", "name"), VERSIONS)
async def test_session_resumption(
    pair: tuple[Path, Path], ca: trustme.CA, version: ssl.TLSVersion, name: str
) -> None:
    client = trusting(ca, version)
    async with running(trio_accept.server_context(*pair)) as server:
        first = await trio.to_thread.run_sync(exchange, server.port, client)
        assert first.session is not None
        assert first.session.has_ticket
        second = await trio.to_thread.run_sync(
            partial(exchange, server.port, client, session=first.session)
        )
    assert (first.version, second.version) == (name, name)
    assert (first.resumed, second.resumed) == (False, True)
    assert [info.resumed for info in server.infos] == [False, True]


async def test_no_session_tickets_no_tls13_resumption(
    pair: tuple[Path, Path], ca: trustme.CA
) -> None:
    client = trusting(ca, ssl.TLSVersion.TLSv1_3)
    async with running(trio_accept.server_context(*pair, session_tickets=0)) as server:
        first = await trio.to_thread.run_sync(exchange, server.port, client)
        assert first.session is not None
        assert not first.session.has_ticket
        second = await trio.to_thread.run_sync(
            partial(exchange, server.port, client, session=first.session)
        )
    assert (first.resumed, second.resumed) == (False, False)
    assert [info.resumed for info in server.infos] == [False, False]


async def test_no_session_tickets_in_tls12(pair: tuple[Path, Path], ca: trustme.CA) -> None:
    # No tickets in TLS 1.2 either; but, as documented, a TLS 1.2 client still resumes
    # by session ID from OpenSSL's server-side cache, which Python cannot turn off.
    client = trusting(ca, ssl.TLSVersion.TLSv1_2)
    context = trio_accept.server_context(*pair, session_tickets=0)
    assert context.options & ssl.OP_NO_TICKET
    async with running(context) as server:
        first = await trio.to_thread.run_sync(exchange, server.port, client)
        assert first.session is not None
        assert not first.session.has_ticket
        second = await trio.to_thread.run_sync(
            partial(exchange, server.port, client, session=first.session)
        )
    assert (first.version, second.version) == ("TLSv1.2", "TLSv1.2")
    assert [info.resumed for info in server.infos] == [False, True]
    assert context.session_stats()["hits"] == 1  # by session ID: there was no ticket


# == key logging ============================================================================


async def test_sslkeylogfile_is_ignored(
    pair: tuple[Path, Path], ca: trustme.CA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from_environment = tmp_path / "environment-keys"
    monkeypatch.setenv("SSLKEYLOGFILE", str(from_environment))
    context = trio_accept.server_context(*pair)
    assert not context.keylog_filename  # None
    # A client that does not read the variable either (create_default_context does).
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(client)
    async with running(context) as server:
        seen = await trio.to_thread.run_sync(exchange, server.port, client)
    assert seen.echoed == b"ping"
    assert not from_environment.exists()


async def test_keylog_file(
    pair: tuple[Path, Path], ca: trustme.CA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SSLKEYLOGFILE", raising=False)
    keys = tmp_path / "keys"
    context = trio_accept.server_context(*pair, keylog_file=keys)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(client)
    async with running(context) as server:
        await trio.to_thread.run_sync(exchange, server.port, client)
    lines = keys.read_text().splitlines()
    labels = {line.split()[0] for line in lines if line and not line.startswith("#")}
    assert {
        "CLIENT_HANDSHAKE_TRAFFIC_SECRET",
        "SERVER_HANDSHAKE_TRAFFIC_SECRET",
        "CLIENT_TRAFFIC_SECRET_0",
        "SERVER_TRAFFIC_SECRET_0",
    } <= labels


# == CertificateStore =======================================================================


def last_error(store: CertificateStore) -> Exception | None:
    """``store.last_error``, read afresh (type checkers keep narrowing an attribute)."""
    return store.last_error


async def test_reload_reaches_new_handshakes_only(ca: trustme.CA, tmp_path: Path) -> None:
    first = ca.issue_cert(DEFAULT_NAME, "v1.example")
    second = ca.issue_cert(DEFAULT_NAME, "v2.example")
    cert, key = write_pair(first, tmp_path, "server")
    store = CertificateStore.from_files(cert, key)
    client = trusting(ca)
    async with running(store, echo_all) as server:
        established = await trio.to_thread.run_sync(open_tls, server.port, client)
        with established:
            assert await trio.to_thread.run_sync(roundtrip, established, b"before") == b"before"
            assert established.getpeercert(binary_form=True) == der_of(first)

            replace_certificate(second, cert, key)
            assert store.reload() is True
            assert store.reloads == 1
            assert store.last_error is None

            seen = await trio.to_thread.run_sync(exchange, server.port, client)
            assert seen.certificate == der_of(second)
            assert peer_dns_names(seen.peer) == [DEFAULT_NAME, "v2.example"]
            # The connection made before the reload goes on, with its certificate.
            assert await trio.to_thread.run_sync(roundtrip, established, b"after") == b"after"
    server.assert_no_refusal()


def break_certificate(cert: Path, key: Path, spare: trustme.LeafCert) -> None:
    cert.write_text("not a certificate\n")


def replace_only_the_certificate(cert: Path, key: Path, spare: trustme.LeafCert) -> None:
    cert.write_bytes(spare.cert_chain_pems[0].bytes())  # the key is still the old one


def remove_the_key(cert: Path, key: Path, spare: trustme.LeafCert) -> None:
    key.unlink()


@pytest.mark.parametrize(
    "breakage", [break_certificate, replace_only_the_certificate, remove_the_key]
)
async def test_failed_reload_keeps_the_current_certificate(
    ca: trustme.CA,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    breakage: Callable[[Path, Path, trustme.LeafCert], None],
) -> None:
    first = ca.issue_cert(DEFAULT_NAME)
    cert, key = write_pair(first, tmp_path, "server")
    store = CertificateStore.from_files(cert, key)
    client = trusting(ca)
    async with running(store) as server:
        breakage(cert, key, ca.issue_cert(DEFAULT_NAME))
        assert store.reload() is False
        assert isinstance(last_error(store), CertificateError)
        assert store.reloads == 0
        seen = await trio.to_thread.run_sync(exchange, server.port, client)
        assert seen.certificate == der_of(first)
        # Fixed: the next reload works, and forgets the error.
        second = ca.issue_cert(DEFAULT_NAME)
        replace_certificate(second, cert, key)
        assert store.reload() is True
        assert last_error(store) is None
        seen = await trio.to_thread.run_sync(exchange, server.port, client)
        assert seen.certificate == der_of(second)
    server.assert_no_refusal()
    [failure] = [r for r in caplog.records if "reload failed" in r.getMessage()]
    assert failure.levelno == logging.ERROR
    assert str(cert) in failure.getMessage() or str(key) in failure.getMessage()


def expired(ca: trustme.CA) -> trustme.LeafCert:
    now = datetime.datetime.now(datetime.UTC)
    return ca.issue_cert(
        DEFAULT_NAME,
        not_before=now - datetime.timedelta(days=30),
        not_after=now - datetime.timedelta(days=1),
    )


def test_reload_of_an_expired_certificate_warns_every_time(ca: trustme.CA, tmp_path: Path) -> None:
    cert, key = write_pair(ca.issue_cert(DEFAULT_NAME), tmp_path, "server")
    store = CertificateStore.from_files(cert, key)
    late = expired(ca)
    replace_certificate(late, cert, key)
    with warnings.catch_warnings(record=True) as caught:
        warnings.resetwarnings()  # no filter at all: Python would warn once per place
        assert store.reload() is True
        assert store.reload() is True
    assert [warning.category for warning in caught] == [CertificateWarning] * 2
    assert served_certificate(store.context) == der_of(late)  # loaded all the same


@pytest.mark.parametrize("action", ["ignore", "error"])
def test_reload_obeys_the_applications_warning_filters(
    ca: trustme.CA,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    action: Literal["ignore", "error"],
) -> None:
    first = ca.issue_cert(DEFAULT_NAME)
    cert, key = write_pair(first, tmp_path, "server")
    store = CertificateStore.from_files(cert, key)
    late = expired(ca)
    replace_certificate(late, cert, key)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter(action, CertificateWarning)
        reloaded = store.reload()
    assert caught == []
    assert "the certificate expired on" in caplog.text  # logged either way
    if action == "ignore":
        assert reloaded is True
        assert served_certificate(store.context) == der_of(late)
    else:  # the documented way to refuse expired certificates
        assert reloaded is False
        assert isinstance(store.last_error, CertificateWarning)
        assert served_certificate(store.context) == der_of(first)


async def test_reloads_during_handshakes_lose_none(ca: trustme.CA, tmp_path: Path) -> None:
    clients_count = 16
    leaves = [ca.issue_cert(DEFAULT_NAME, f"v{n}.example") for n in range(2)]
    cert, key = write_pair(leaves[0], tmp_path, "server")
    store = CertificateStore.from_files(cert, key)
    client = trusting(ca)
    seen: list[Exchange] = []

    async def one_client() -> None:
        seen.append(await trio.to_thread.run_sync(exchange, server.port, client))

    async with running(store) as server, trio.open_nursery() as nursery:
        for _ in range(clients_count):
            nursery.start_soon(one_client)
        # Reload, alternating the certificate, for as long as handshakes are going on.
        while len(seen) < clients_count:
            replace_certificate(leaves[(store.reloads + 1) % 2], cert, key)
            assert store.reload() is True
            await trio.lowlevel.checkpoint()
    assert store.reloads >= 1
    assert len(seen) == clients_count
    assert all(one.echoed == b"ping" for one in seen)
    assert {one.certificate for one in seen} <= {der_of(leaf) for leaf in leaves}
    assert len(server.infos) == clients_count
    server.assert_no_refusal()


INTERVAL: Final = 10.0


async def test_watch_reloads_when_a_file_changes(
    autojump_clock: trio.testing.MockClock,
    ca: trustme.CA,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    first = ca.issue_cert(DEFAULT_NAME)
    cert, key = write_pair(first, tmp_path, "server")
    store = CertificateStore.from_files(cert, key)
    # Half an interval off the watcher's ticks: no ties on the mock clock.
    async with trio.open_nursery() as nursery:
        nursery.start_soon(store.watch, INTERVAL)
        await trio.sleep(3.5 * INTERVAL)
        assert store.reloads == 0  # nothing changed, nothing reloaded

        # Only the modification time changes.
        stat = key.stat()
        os.utime(key, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
        await trio.sleep(INTERVAL)
        assert store.reloads == 1

        # A new certificate, of another size, with the old modification time.
        second = ca.issue_cert(DEFAULT_NAME, "a-longer-name.example")
        stats = {path: path.stat() for path in (cert, key)}
        replace_certificate(second, cert, key)
        for path, stat in stats.items():
            os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        assert cert.stat().st_size != stats[cert].st_size
        await trio.sleep(INTERVAL)
        assert store.reloads == 2
        assert served_certificate(store.context) == der_of(second)

        # A broken file: one failed reload (not one per interval), the certificate stays.
        cert.write_text("not a certificate\n")
        await trio.sleep(3 * INTERVAL)
        assert store.reloads == 2
        assert isinstance(store.last_error, CertificateError)
        assert served_certificate(store.context) == der_of(second)
        nursery.cancel_scope.cancel()
    assert len([r for r in caplog.records if "reload failed" in r.getMessage()]) == 1


@pytest.mark.parametrize(
    ("racing_read", "expected"),
    [
        pytest.param(0, ["1", "1+"], id="while-constructing"),
        pytest.param(1, ["1", "22", "22+"], id="while-reloading"),
    ],
)
async def test_watch_sees_a_change_made_while_reading(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, racing_read: int, expected: list[str]
) -> None:
    # A writer that finishes just after the store read the file: its final version must
    # be loaded too, on the watcher's next tick.
    path = tmp_path / "settings"
    path.write_text("1")
    read: list[str] = []

    def factory() -> ssl.SSLContext:
        read.append(path.read_text())
        if len(read) == racing_read + 1:
            path.write_text(read[-1] + "+")  # the writer, just after the read
        return ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)

    store = CertificateStore(factory, files=[path])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(store.watch, INTERVAL)
        if racing_read:
            path.write_text("22")
        await trio.sleep(3.5 * INTERVAL)
        nursery.cancel_scope.cancel()
    assert read == expected
    assert store.reloads == len(expected) - 1
