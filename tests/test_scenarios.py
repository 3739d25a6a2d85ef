"""The scenario catalogue: each misbehaving server does what it says, and a correct client
(Python ``ssl``; curl and ``openssl s_client`` where meaningful) reacts as documented."""

from __future__ import annotations

import errno
import shutil
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from trio_accept._engine import ErrorKind, Reason
from trio_accept.testing import TLSTestServer, tls_serve_function
from trio_accept.testing._catalogue import LEGACY_TLS_AVAILABLE, PLAIN_HTTP_ANSWER
from trio_accept.testing._scenarios import (
    SCENARIOS,
    ScenarioContext,
    ScenarioSetup,
    get_scenario,
    open_trio_scenario,
    register_scenario,
    start_scenario,
)

#: How much of the slow-drip server's first flight to read (less than its drip budget).
DRIP_SAMPLE = 512
#: A client's socket timeout: generous for loopback, short for the stalling servers.
CLIENT_TIMEOUT = 5.0
STALL_TIMEOUT = 0.3
#: How long an external program may take.
PROGRAM_TIMEOUT = 20.0

CATALOGUE = [
    "expired",
    "not-yet-valid",
    "wrong-host",
    "self-signed",
    "untrusted-root",
    "incomplete-chain",
    "client-cert-required",
    "client-cert-optional",
    "rsa-2048",
    "ecdsa-p256",
    "tls1.2-only",
    "tls1.3-only",
    *(["tls1.0-only", "tls1.1-only"] if LEGACY_TLS_AVAILABLE else []),
    "alpn-h2",
    "alpn-mismatch",
    "close-without-notify",
    "slow-drip",
    "huge-chain",
    "stall",
    "stall-after-hello",
    "reset-during-handshake",
    "garbage",
    "plain-http",
]

REQUEST = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"


@pytest.fixture(scope="session")
def ca_path(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture
def scenario(
    request: pytest.FixtureRequest, ca: trustme.CA, ca_path: Path, tmp_path: Path
) -> Iterator[TLSTestServer]:
    """The scenario named by the test's parameter, started; closed afterwards."""
    name: str = request.param
    with start_scenario(name, ca=ca, ca_path=ca_path, directory=tmp_path) as server:
        yield server


def connect(
    server: TLSTestServer,
    context: ssl.SSLContext | None = None,
    *,
    timeout: float = CLIENT_TIMEOUT,
    suppress_ragged_eofs: bool = False,
) -> ssl.SSLSocket:
    raw = socket.create_connection((server.host, server.port), timeout=timeout)
    try:
        return (context or server.client_context()).wrap_socket(
            raw, server_hostname="localhost", suppress_ragged_eofs=suppress_ragged_eofs
        )
    except BaseException:
        raw.close()
        raise


def read_all(tls: ssl.SSLSocket) -> bytes:
    received = b""
    for _ in range(1000):
        chunk = tls.recv(65536)
        if not chunk:
            return received
        received += chunk
    raise AssertionError("the server never closed")


def get(server: TLSTestServer, context: ssl.SSLContext | None = None) -> tuple[str, bytes]:
    """One HTTP request; the TLS version and the response."""
    with connect(server, context) as tls:
        tls.sendall(REQUEST)
        return str(tls.version()), read_all(tls)


# -- the registry ---------------------------------------------------------------------------


def test_catalogue_names_and_order() -> None:
    assert list(SCENARIOS) == CATALOGUE
    for name, scenario in SCENARIOS.items():
        assert scenario.name == name
        assert scenario.description
        assert scenario.expected


def test_unknown_scenario_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown scenario 'nope'") as info:
        get_scenario("nope")
    assert "expired" in str(info.value)
    assert "plain-http" in str(info.value)


def test_register_a_scenario(ca: trustme.CA, ca_path: Path, tmp_path: Path) -> None:
    @register_scenario("my-echo", description="an echo", expected="it echoes")
    def build(context: ScenarioContext) -> ScenarioSetup:
        leaf = context.ca.issue_cert("localhost")
        server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        leaf.configure_cert(server_context)
        return ScenarioSetup(tls_serve_function(ssl_context=server_context))

    try:
        assert get_scenario("my-echo").build is build
        with pytest.raises(ValueError, match="registered already"):
            register_scenario("my-echo", description="", expected="")(build)
        with (
            start_scenario("my-echo", ca=ca, ca_path=ca_path, directory=tmp_path) as server,
            connect(server) as tls,
        ):
            tls.sendall(b"ping")
            assert tls.recv(4) == b"ping"
    finally:
        del SCENARIOS["my-echo"]


# -- certificates ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scenario", "verify_code", "message", "reason"),
    [
        ("expired", 10, "certificate has expired", Reason.BAD_CERTIFICATE),
        ("not-yet-valid", 9, "certificate is not yet valid", Reason.BAD_CERTIFICATE),
        (
            "wrong-host",
            62,
            "Hostname mismatch, certificate is not valid for 'localhost'.",
            Reason.BAD_CERTIFICATE,
        ),
        ("self-signed", 18, "self-signed certificate", Reason.UNKNOWN_CA),
        ("untrusted-root", 20, "unable to get local issuer certificate", Reason.UNKNOWN_CA),
        ("incomplete-chain", 20, "unable to get local issuer certificate", Reason.UNKNOWN_CA),
    ],
    indirect=["scenario"],
)
def test_certificate_rejected(
    scenario: TLSTestServer, verify_code: int, message: str, reason: Reason
) -> None:
    with pytest.raises(ssl.SSLCertVerificationError) as info:
        connect(scenario)
    assert info.value.verify_code == verify_code
    assert info.value.verify_message == message
    record = scenario.wait_for_connection()
    assert (record.code, record.reason) == (-1, reason)


@pytest.mark.parametrize("scenario", ["client-cert-required"], indirect=True)
def test_client_cert_required(scenario: TLSTestServer) -> None:
    with connect(scenario) as tls:
        tls.sendall(REQUEST)
        with pytest.raises(ssl.SSLError) as info:
            read_all(tls)
    assert info.value.reason == "TLSV13_ALERT_CERTIFICATE_REQUIRED"
    assert scenario.wait_for_connection().reason is Reason.NO_CLIENT_CERT

    assert scenario.client_cert is not None
    context = scenario.client_context()
    scenario.client_cert.configure_cert(context)
    _, response = get(scenario, context)
    assert response.startswith(b"HTTP/1.1 200 OK")
    record = scenario.wait_for_connection()
    assert record.peer_certificate is not None
    assert (("commonName", "scenario client"),) in record.peer_certificate["subject"]


@pytest.mark.parametrize("scenario", ["client-cert-optional"], indirect=True)
def test_client_cert_optional(scenario: TLSTestServer) -> None:
    _, response = get(scenario)
    assert response.startswith(b"HTTP/1.1 200 OK")
    assert scenario.wait_for_connection().peer_certificate is None

    assert scenario.client_cert is not None
    context = scenario.client_context()
    scenario.client_cert.configure_cert(context)
    _, response = get(scenario, context)
    assert response.startswith(b"HTTP/1.1 200 OK")
    assert scenario.wait_for_connection().peer_certificate is not None


@pytest.mark.parametrize("scenario", ["rsa-2048", "ecdsa-p256"], indirect=True)
def test_key_types(scenario: TLSTestServer, request: pytest.FixtureRequest) -> None:
    with connect(scenario) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    key = x509.load_der_x509_certificate(der).public_key()
    if "rsa" in request.node.name:
        assert isinstance(key, rsa.RSAPublicKey)
        assert key.key_size == 2048
    else:
        assert isinstance(key, ec.EllipticCurvePublicKey)
        assert key.curve.name == "secp256r1"
    assert scenario.wait_for_connection().code == 1


# -- protocol -------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", ["tls1.2-only"], indirect=True)
def test_tls12_only(scenario: TLSTestServer) -> None:
    version, response = get(scenario)
    assert version == "TLSv1.2"
    assert response.startswith(b"HTTP/1.1 200 OK")
    context = scenario.client_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    with pytest.raises(ssl.SSLError) as info:
        connect(scenario, context)
    assert info.value.reason == "TLSV1_ALERT_PROTOCOL_VERSION"


@pytest.mark.parametrize("scenario", ["tls1.3-only"], indirect=True)
def test_tls13_only(scenario: TLSTestServer) -> None:
    assert get(scenario)[0] == "TLSv1.3"
    context = scenario.client_context()
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError) as info:
        connect(scenario, context)
    assert info.value.reason == "TLSV1_ALERT_PROTOCOL_VERSION"


@pytest.mark.skipif(not LEGACY_TLS_AVAILABLE, reason="this OpenSSL cannot speak TLS 1.0/1.1")
@pytest.mark.parametrize(
    ("scenario", "version"),
    [("tls1.0-only", ssl.TLSVersion.TLSv1), ("tls1.1-only", ssl.TLSVersion.TLSv1_1)],
    indirect=["scenario"],
)
def test_legacy_versions(scenario: TLSTestServer, version: ssl.TLSVersion) -> None:
    with pytest.raises(ssl.SSLError) as info:
        connect(scenario)
    assert info.value.reason == "TLSV1_ALERT_PROTOCOL_VERSION"
    assert scenario.wait_for_connection().reason is Reason.UNSUPPORTED_VERSION

    context = scenario.client_context()
    with pytest.warns(DeprecationWarning, match="deprecated"):  # as for the server
        context.minimum_version = version
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    negotiated, response = get(scenario, context)
    assert (
        negotiated == {ssl.TLSVersion.TLSv1: "TLSv1", ssl.TLSVersion.TLSv1_1: "TLSv1.1"}[version]
    )
    assert response.startswith(b"HTTP/1.1 200 OK")


@pytest.mark.parametrize(
    ("scenario", "offered", "agreed"),
    [("alpn-h2", ["h2", "http/1.1"], "h2"), ("alpn-mismatch", ["http/1.1"], None)],
    indirect=["scenario"],
)
def test_alpn(scenario: TLSTestServer, offered: list[str], agreed: str | None) -> None:
    context = scenario.client_context()
    context.set_alpn_protocols(offered)
    with connect(scenario, context) as tls:
        assert tls.selected_alpn_protocol() == agreed
        assert read_all(tls) == f"alpn={agreed or 'none'}\n".encode()
    assert scenario.wait_for_connection().alpn_protocol == agreed


# -- behaviour ------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", ["close-without-notify"], indirect=True)
def test_close_without_notify(scenario: TLSTestServer) -> None:
    with connect(scenario) as tls:
        received = b""
        for _ in range(100):
            chunk = tls.recv(4096)
            received += chunk
            if received.endswith(b"hello\n"):
                break
        with pytest.raises(ssl.SSLEOFError) as info:
            tls.recv(4096)
        assert info.value.reason == "UNEXPECTED_EOF_WHILE_READING"
    assert received.startswith(b"HTTP/1.1 200 OK")
    assert received.endswith(b"\r\n\r\nhello\n")
    assert scenario.wait_for_connection().code == 1
    # A client that tolerates ragged EOFs sees a plain end of stream.
    with connect(scenario, suppress_ragged_eofs=True) as tls:
        assert read_all(tls).endswith(b"hello\n")


@pytest.mark.parametrize("scenario", ["slow-drip"], indirect=True)
def test_slow_drip(scenario: TLSTestServer) -> None:
    # A real client still gets through...
    version, response = get(scenario)
    assert version == "TLSv1.3"
    assert response.startswith(b"HTTP/1.1 200 OK")
    assert scenario.wait_for_connection().code == 1
    # ...and the trickle is real: the server's first flight arrives in many small pieces
    # (a server that does not drip sends it in one or two segments).
    outgoing = ssl.MemoryBIO()
    client = scenario.client_context().wrap_bio(
        ssl.MemoryBIO(), outgoing, server_hostname="localhost"
    )
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    with socket.create_connection((scenario.host, scenario.port), timeout=CLIENT_TIMEOUT) as raw:
        raw.sendall(outgoing.read())
        received = pieces = 0
        while received < DRIP_SAMPLE:
            chunk = raw.recv(65536)
            if not chunk:
                break
            received += len(chunk)
            pieces += 1
    assert received >= DRIP_SAMPLE
    assert pieces > DRIP_SAMPLE // 64  # at most 64 bytes a piece on average


@pytest.mark.parametrize("scenario", ["huge-chain"], indirect=True)
def test_huge_chain(scenario: TLSTestServer) -> None:
    with pytest.raises(ssl.SSLError) as info:
        connect(scenario)
    assert info.value.reason == "EXCESSIVE_MESSAGE_SIZE"
    record = scenario.wait_for_connection()
    assert record.code == -1
    # The client's alert, or its RST when it closes with our bytes unread: timing decides.
    assert record.reason in {Reason.PEER_ALERT, Reason.RESET}


@pytest.mark.parametrize(
    ("scenario", "server_name"),
    [("stall", None), ("stall-after-hello", "localhost")],
    indirect=["scenario"],
)
def test_stalls(scenario: TLSTestServer, server_name: str | None) -> None:
    with pytest.raises(TimeoutError, match="handshake operation timed out"):
        connect(scenario, timeout=STALL_TIMEOUT)
    record = scenario.wait_for_connection()
    assert (record.code, record.kind, record.reason) == (-1, ErrorKind.SYSCALL, Reason.EOF)
    assert record.server_name == server_name
    assert record.bytes_received > 0
    assert record.bytes_sent == 0


@pytest.mark.parametrize("scenario", ["reset-during-handshake"], indirect=True)
def test_reset_during_handshake(scenario: TLSTestServer) -> None:
    with pytest.raises(ConnectionResetError) as info:
        connect(scenario)
    assert info.value.errno == errno.ECONNRESET
    record = scenario.wait_for_connection()
    assert (record.code, record.reason, record.server_name) == (-1, Reason.RESET, "localhost")


@pytest.mark.parametrize("scenario", ["garbage"], indirect=True)
def test_garbage(scenario: TLSTestServer) -> None:
    with pytest.raises(ssl.SSLError) as info:
        connect(scenario)
    assert info.value.reason == "WRONG_VERSION_NUMBER"
    record = scenario.wait_for_connection()
    assert (record.code, record.reason) == (-1, Reason.PROTOCOL_ERROR)
    assert record.bytes_sent > 0


@pytest.mark.parametrize("scenario", ["plain-http"], indirect=True)
def test_plain_http(scenario: TLSTestServer) -> None:
    with pytest.raises(ssl.SSLError) as info:
        connect(scenario)
    assert info.value.reason == "WRONG_VERSION_NUMBER"
    assert scenario.wait_for_connection().reason is Reason.PLAIN_HTTP
    with socket.create_connection((scenario.host, scenario.port), timeout=CLIENT_TIMEOUT) as raw:
        raw.sendall(REQUEST)
        response = b""
        for _ in range(100):
            chunk = raw.recv(4096)
            if not chunk:
                break
            response += chunk
    assert response == PLAIN_HTTP_ANSWER
    record = scenario.wait_for_connection()
    assert (record.reason, record.server_name) == (Reason.PLAIN_HTTP, None)


async def test_open_trio_scenario(ca: trustme.CA, ca_path: Path, tmp_path: Path) -> None:
    async with open_trio_scenario("wrong-host", ca=ca, ca_path=ca_path, directory=tmp_path) as (
        server
    ):
        assert server.url == f"https://localhost:{server.port}/"
        assert server.ca_path == ca_path

        def handshake() -> None:
            raw = socket.create_connection((server.host, server.port), timeout=CLIENT_TIMEOUT)
            with raw, server.client_context().wrap_socket(raw, server_hostname="localhost"):
                pass  # pragma: no cover - refused

        with pytest.raises(ssl.SSLCertVerificationError):
            await trio.to_thread.run_sync(handshake)
        assert (await server.wait_for_connection()).reason is Reason.BAD_CERTIFICATE


# -- curl and openssl s_client --------------------------------------------------------------


def program(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed")
    return path


@pytest.mark.interop
@pytest.mark.parametrize(
    ("scenario", "options", "status"),
    [
        ("expired", [], 60),
        ("wrong-host", [], 60),
        ("self-signed", [], 60),
        ("untrusted-root", [], 60),
        ("incomplete-chain", [], 60),
        ("client-cert-required", [], 56),
        ("rsa-2048", [], 0),
        ("tls1.2-only", ["--tlsv1.3"], 35),
        ("tls1.3-only", ["--tls-max", "1.2"], 35),
        ("close-without-notify", [], 0),
        ("slow-drip", [], 0),
        ("huge-chain", [], 35),
        ("stall", ["--max-time", "0.3"], 28),
        ("reset-during-handshake", [], 35),
        ("garbage", [], 35),
        ("plain-http", [], 35),
    ],
    indirect=["scenario"],
)
def test_curl(scenario: TLSTestServer, options: list[str], status: int) -> None:
    result = subprocess.run(
        [program("curl"), "--silent", "--cacert", str(scenario.ca_path), *options, scenario.url],
        capture_output=True,
        timeout=PROGRAM_TIMEOUT,
        check=False,
    )
    assert result.returncode == status, result.stderr


@pytest.mark.interop
@pytest.mark.parametrize("scenario", ["client-cert-required"], indirect=True)
def test_curl_with_the_client_certificate(scenario: TLSTestServer, tmp_path: Path) -> None:
    assert scenario.client_cert is not None
    cert, key = tmp_path / "client.pem", tmp_path / "client-key.pem"
    scenario.client_cert.cert_chain_pems[0].write_to_path(str(cert))
    scenario.client_cert.private_key_pem.write_to_path(str(key))
    result = subprocess.run(
        [
            program("curl"),
            *("--silent", "--cacert", str(scenario.ca_path)),
            *("--cert", str(cert), "--key", str(key), scenario.url),
        ],
        capture_output=True,
        timeout=PROGRAM_TIMEOUT,
        check=True,
    )
    assert result.stdout == b"GET /\n"


@pytest.mark.interop
@pytest.mark.parametrize("scenario", ["plain-http"], indirect=True)
def test_curl_plain_http(scenario: TLSTestServer) -> None:
    result = subprocess.run(
        [program("curl"), "--silent", f"http://127.0.0.1:{scenario.port}/"],
        capture_output=True,
        timeout=PROGRAM_TIMEOUT,
        check=True,
    )
    assert result.stdout == b"plain HTTP/1.1\n"


@pytest.mark.interop
@pytest.mark.parametrize(
    ("scenario", "message"),
    [
        ("expired", "verify error:num=10:certificate has expired"),
        ("not-yet-valid", "verify error:num=9:certificate is not yet valid"),
        ("self-signed", "verify error:num=18:self-signed certificate"),
        ("incomplete-chain", "verify error:num=20:unable to get local issuer certificate"),
        ("wrong-host", "verify error:num=62:hostname mismatch"),
    ],
    indirect=["scenario"],
)
def test_openssl_s_client(scenario: TLSTestServer, message: str) -> None:
    result = subprocess.run(
        [
            program("openssl"),
            *("s_client", "-connect", f"127.0.0.1:{scenario.port}"),
            *("-servername", "localhost", "-verify_hostname", "localhost"),
            *("-CAfile", str(scenario.ca_path), "-verify_return_error"),
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=PROGRAM_TIMEOUT,
        check=False,
    )
    assert result.returncode == 1
    assert message in result.stdout + result.stderr
