# Tests assert a state, act, and assert the next state: mypy narrows the first assertion's
# property and would call the second one unreachable.
# mypy: disable-error-code="comparison-overlap,unreachable"
"""The engine, with no I/O: a synchronous byte pump against a client ``ssl.SSLObject``.

Every result the engine can reach is reached here for real -- through OpenSSL, never by
mocking it. (WANT_WRITE, and SYSCALL coming from OpenSSL itself, cannot occur over
memory BIOs; the SSL_accept mapping page says why.)
"""

from __future__ import annotations

import contextlib
import itertools
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import trustme
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_accept import (
    TRANSITIONS,
    EngineStateError,
    ErrorKind,
    Operation,
    Reason,
    Result,
    State,
    TLSEngine,
)

TLS12, TLS13 = ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3
VERSIONS = pytest.mark.parametrize("version", [TLS12, TLS13], ids=["tls12", "tls13"])

CLOSE_NOTIFY_RECORD = b"\x15\x03\x03\x00\x02\x01\x00"  # a plaintext warning alert
GARBAGE_BODY_RECORD = b"\x16\x03\x01\x00\x10" + b"A" * 16
UNEXPECTED_MESSAGE_ALERT = b"\x15\x03\x03\x00\x02\x02\x0a"  # fatal, unexpected_message


@dataclass
class Client:
    """A client ``SSLObject`` and its two memory BIOs."""

    obj: ssl.SSLObject
    incoming: ssl.MemoryBIO
    outgoing: ssl.MemoryBIO

    def step(self) -> bool:
        """Advance the client's handshake; True when it is complete."""
        try:
            self.obj.do_handshake()
        except ssl.SSLWantReadError:
            return False
        return True

    def flight(self) -> bytes:
        return self.outgoing.read()

    def receive(self, data: bytes) -> None:
        self.incoming.write(data)


def server_context(
    cert: trustme.LeafCert, *, version: ssl.TLSVersion | None = None
) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    if version is not None:
        context.minimum_version = context.maximum_version = version
    return context


def client_context(ca: trustme.CA, *, version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    if version is not None:
        context.maximum_version = version
    return context


def make_client(context: ssl.SSLContext, server_hostname: str | None = "localhost") -> Client:
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = context.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    return Client(obj, incoming, outgoing)


def handshake(engine: TLSEngine, client: Client) -> None:
    """Pump bytes both ways until both sides are done (asserting the engine's results)."""
    client_done = False
    for _ in range(10):
        client_done = client.step()
        engine.receive_data(client.flight())
        result = engine.accept()
        client.receive(engine.data_to_send())
        if result.code == 1:
            if not client_done:
                assert client.step()
            return
        assert result.kind is ErrorKind.WANT_READ
    raise AssertionError("handshake did not finish")


@pytest.fixture
def pair(ca: trustme.CA, server_cert: trustme.LeafCert) -> Callable[..., tuple[TLSEngine, Client]]:
    def make(version: ssl.TLSVersion | None = None) -> tuple[TLSEngine, Client]:
        engine = TLSEngine(server_context(server_cert))
        return engine, make_client(client_context(ca, version=version))

    return make


def established(
    pair: Callable[..., tuple[TLSEngine, Client]], version: ssl.TLSVersion | None = None
) -> tuple[TLSEngine, Client]:
    engine, client = pair(version)
    handshake(engine, client)
    return engine, client


# -- the handshake: SSL_accept's three results --------------------------------------------


@VERSIONS
def test_handshake_completes_with_code_1(
    pair: Callable[..., tuple[TLSEngine, Client]], version: ssl.TLSVersion
) -> None:
    engine, client = pair(version)
    assert engine.state is State.HANDSHAKING
    first = engine.accept()  # nothing received yet
    assert (first.code, first.kind) == (-1, ErrorKind.WANT_READ)
    assert engine.data_to_send() == b""
    handshake(engine, client)
    assert engine.state is State.ESTABLISHED
    assert engine.version == ("TLSv1.3" if version is TLS13 else "TLSv1.2")
    assert engine.cipher
    assert engine.server_name == "localhost"
    assert engine.alpn_protocol is None
    assert engine.peer_certificate() is None


@VERSIONS
def test_close_notify_during_handshake_is_code_0(
    pair: Callable[..., tuple[TLSEngine, Client]], version: ssl.TLSVersion
) -> None:
    engine, client = pair(version)
    client.step()
    engine.receive_data(client.flight())
    assert engine.accept().kind is ErrorKind.WANT_READ
    assert engine.data_to_send()  # our first flight
    engine.receive_data(CLOSE_NOTIFY_RECORD)
    result = engine.accept()
    assert (result.code, result.kind, result.reason) == (
        0,
        ErrorKind.ZERO_RETURN,
        Reason.CLOSE_NOTIFY,
    )
    assert isinstance(result.error, ssl.SSLZeroReturnError)
    assert not result.failed
    assert engine.state is State.CLOSED


def test_eof_during_handshake_is_fatal_syscall(
    pair: Callable[..., tuple[TLSEngine, Client]],
) -> None:
    engine, _ = pair()
    engine.receive_data(b"")
    result = engine.accept()
    assert (result.code, result.kind, result.reason) == (-1, ErrorKind.SYSCALL, Reason.EOF)
    assert result.failed
    assert isinstance(result.error, ssl.SSLEOFError)
    assert engine.state is State.FAILED


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"GET / HTTP/1.1\r\nHost: example\r\n\r\n", Reason.PLAIN_HTTP),
        (b"CONNECT example:443 HTTP/1.1\r\n\r\n", Reason.PLAIN_HTTP),
        # OpenSSL knows only GET/POST/HEAD/PUT/CONNECT; the engine knows the rest.
        (b"OPTIONS * HTTP/1.1\r\n\r\n", Reason.PLAIN_HTTP),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Reason.PLAIN_HTTP),
        (b"\x00\x01\x02 not tls at all, not tls at all", Reason.WRONG_VERSION),
        (b"SSH-2.0-OpenSSH_9.2\r\n", Reason.WRONG_VERSION),
        (GARBAGE_BODY_RECORD, Reason.PROTOCOL_ERROR),
        (b"\x16\x03\x01\xff\xff" + b"A" * 10, Reason.OVERSIZED),
    ],
)
def test_malformed_input_is_classified(
    pair: Callable[..., tuple[TLSEngine, Client]], data: bytes, reason: Reason
) -> None:
    engine, _ = pair()
    engine.receive_data(data)
    result = engine.accept()
    assert (result.code, result.kind, result.reason) == (-1, ErrorKind.SSL, reason)
    assert engine.state is State.FAILED


def test_alert_is_left_for_the_driver(pair: Callable[..., tuple[TLSEngine, Client]]) -> None:
    engine, _ = pair()
    engine.receive_data(GARBAGE_BODY_RECORD)
    assert engine.accept().failed
    assert engine.data_to_send() == UNEXPECTED_MESSAGE_ALERT


def test_plain_http_gets_no_alert(pair: Callable[..., tuple[TLSEngine, Client]]) -> None:
    # OpenSSL answers an HTTP request with silence, not an alert: the listener's
    # readable "400" answer is the driver's business.
    engine, _ = pair()
    engine.receive_data(b"GET / HTTP/1.1\r\n\r\n")
    assert engine.accept().reason is Reason.PLAIN_HTTP
    assert engine.data_to_send() == b""


def test_client_rejecting_our_certificate_is_unknown_ca(server_cert: trustme.LeafCert) -> None:
    engine = TLSEngine(server_context(server_cert))
    client = make_client(client_context(trustme.CA()))  # trusts some other CA
    client.step()
    engine.receive_data(client.flight())
    engine.accept()
    client.receive(engine.data_to_send())
    with pytest.raises(ssl.SSLCertVerificationError):
        client.step()
    engine.receive_data(client.flight())  # the client's alert
    result = engine.accept()
    assert (result.kind, result.reason) == (ErrorKind.SSL, Reason.UNKNOWN_CA)


def handshake_until_failure(engine: TLSEngine, client: Client) -> Result:
    """Pump bytes until the engine's handshake stops wanting input; return that result.

    The client's own verdict is not awaited: a client whose certificate we reject only
    learns it from our alert.
    """
    for _ in range(5):
        with contextlib.suppress(ssl.SSLError):
            client.step()
        engine.receive_data(client.flight())
        result = engine.accept()
        client.receive(engine.data_to_send())
        if result.kind is not ErrorKind.WANT_READ:
            return result
    raise AssertionError("the handshake neither finished nor failed")


def mtls_server(ca: trustme.CA, cert: trustme.LeafCert) -> TLSEngine:
    context = server_context(cert)
    context.verify_mode = ssl.CERT_REQUIRED
    ca.configure_trust(context)
    return TLSEngine(context)


@VERSIONS
def test_mtls_without_client_certificate(
    ca: trustme.CA, server_cert: trustme.LeafCert, version: ssl.TLSVersion
) -> None:
    engine = mtls_server(ca, server_cert)
    client = make_client(client_context(ca, version=version))
    result = handshake_until_failure(engine, client)
    assert (result.kind, result.reason) == (ErrorKind.SSL, Reason.NO_CLIENT_CERT)


def test_mtls_with_untrusted_client_certificate(
    ca: trustme.CA, server_cert: trustme.LeafCert
) -> None:
    engine = mtls_server(ca, server_cert)
    context = client_context(ca)
    trustme.CA().issue_cert("mallory@example.com").configure_cert(context)
    client = make_client(context)
    result = handshake_until_failure(engine, client)
    assert (result.kind, result.reason) == (ErrorKind.SSL, Reason.UNKNOWN_CA)
    assert isinstance(result.error, ssl.SSLCertVerificationError)


def test_mtls_peer_certificate(ca: trustme.CA, server_cert: trustme.LeafCert) -> None:
    engine = mtls_server(ca, server_cert)
    context = client_context(ca)
    ca.issue_cert("alice@example.com").configure_cert(context)
    client = make_client(context)
    handshake(engine, client)
    certificate = engine.peer_certificate()
    assert certificate is not None
    assert ("email", "alice@example.com") in certificate["subjectAltName"]


def test_no_common_version_is_unsupported_version(
    ca: trustme.CA, server_cert: trustme.LeafCert
) -> None:
    engine = TLSEngine(server_context(server_cert, version=TLS13))
    client = make_client(client_context(ca, version=TLS12))
    client.step()
    engine.receive_data(client.flight())
    result = engine.accept()
    assert (result.kind, result.reason) == (ErrorKind.SSL, Reason.UNSUPPORTED_VERSION)
    assert engine.data_to_send()  # a protocol_version alert


def test_no_common_cipher(ca: trustme.CA, server_cert: trustme.LeafCert) -> None:
    server = server_context(server_cert, version=TLS12)
    server.set_ciphers("ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384")
    client = client_context(ca, version=TLS12)
    client.set_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256")
    engine, peer = TLSEngine(server), make_client(client)
    peer.step()
    engine.receive_data(peer.flight())
    assert engine.accept().reason is Reason.NO_SHARED_CIPHER


def test_alpn_is_reported(ca: trustme.CA, server_cert: trustme.LeafCert) -> None:
    server = server_context(server_cert)
    server.set_alpn_protocols(["h2", "http/1.1"])
    client = client_context(ca)
    client.set_alpn_protocols(["http/1.1"])
    engine, peer = TLSEngine(server), make_client(client)
    handshake(engine, peer)
    assert engine.alpn_protocol == "http/1.1"
    assert engine.client_hello is not None
    assert engine.client_hello.alpn_protocols == ("http/1.1",)


def test_no_sni(pair: Callable[..., tuple[TLSEngine, Client]], ca: trustme.CA) -> None:
    engine, _ = pair()
    context = client_context(ca)
    context.check_hostname = False
    client = make_client(context, server_hostname=None)
    handshake(engine, client)
    assert engine.server_name is None


def test_hello_received(pair: Callable[..., tuple[TLSEngine, Client]]) -> None:
    engine, client = pair()
    client.step()
    hello = client.flight()
    engine.receive_data(hello[:-1])
    assert not engine.hello_received
    engine.receive_data(hello[-1:])
    assert engine.hello_received
    assert engine.client_hello is not None
    assert engine.client_hello.versions[0] == "TLSv1.3"


def test_hello_received_after_unparseable_input(
    pair: Callable[..., tuple[TLSEngine, Client]],
) -> None:
    engine, _ = pair()
    engine.receive_data(b"\x80")  # an SSLv2-style header: not ours to parse
    assert engine.hello_received
    assert engine.client_hello is None


# -- the data phase ------------------------------------------------------------------


@VERSIONS
def test_data_both_ways(
    pair: Callable[..., tuple[TLSEngine, Client]], version: ssl.TLSVersion
) -> None:
    engine, client = established(pair, version)
    client.obj.write(b"ping")
    engine.receive_data(client.flight())
    result = engine.read(100)
    assert (result.code, result.kind, result.data) == (4, ErrorKind.NONE, b"ping")
    assert engine.read(100).kind is ErrorKind.WANT_READ
    result = engine.write(b"pong")
    assert (result.code, result.kind) == (4, ErrorKind.NONE)
    client.receive(engine.data_to_send())
    assert client.obj.read(100) == b"pong"


def test_read_honours_max_bytes(pair: Callable[..., tuple[TLSEngine, Client]]) -> None:
    engine, client = established(pair)
    client.obj.write(b"abcdef")
    engine.receive_data(client.flight())
    assert engine.read(4).data == b"abcd"
    assert engine.read(4).data == b"ef"


@VERSIONS
def test_read_takes_every_buffered_record(
    pair: Callable[..., tuple[TLSEngine, Client]], version: ssl.TLSVersion
) -> None:
    # SSL_read returns one record (<= 16 KiB) per call; read() takes all that arrived.
    engine, client = established(pair, version)
    sent = bytes(range(256)) * 200  # 51,200 bytes: four records
    client.obj.write(sent)
    engine.receive_data(client.flight())
    result = engine.read(65536)
    assert (result.code, result.data) == (len(sent), sent)
    assert engine.read(65536).kind is ErrorKind.WANT_READ
    # max_bytes still bounds it, across records.
    client.obj.write(sent)
    engine.receive_data(client.flight())
    assert [len(engine.read(20000).data) for _ in range(3)] == [20000, 20000, 11200]


def test_close_notify_behind_data_comes_after_it(
    pair: Callable[..., tuple[TLSEngine, Client]],
) -> None:
    engine, client = established(pair)
    client.obj.write(b"a" * 20000)
    with pytest.raises(ssl.SSLWantReadError):
        client.obj.unwrap()
    engine.receive_data(client.flight())
    assert engine.read(65536).data == b"a" * 20000
    assert engine.state is State.ESTABLISHED
    result = engine.read(65536)
    assert (result.code, result.kind) == (0, ErrorKind.ZERO_RETURN)
    assert engine.state is State.PEER_CLOSED


@pytest.mark.parametrize("then", ["read", "write", "shutdown"])
def test_failure_behind_data_comes_after_it_with_its_alert(
    pair: Callable[..., tuple[TLSEngine, Client]], then: str
) -> None:
    engine, client = established(pair)
    engine.write(b"")  # releases the session tickets: only the alert is left to send
    engine.data_to_send()
    client.obj.write(b"a" * 20000)
    engine.receive_data(client.flight() + b"\x17\x03\x03\x00\x20" + b"\x00" * 32)
    assert engine.read(65536).data == b"a" * 20000
    assert engine.data_to_send() == b""  # the alert waits for its failure
    result = {"read": lambda: engine.read(100), "write": lambda: engine.write(b"x")}.get(
        then, engine.shutdown
    )()
    assert (result.code, result.kind, result.reason) == (-1, ErrorKind.SSL, Reason.PROTOCOL_ERROR)
    assert engine.state is State.FAILED
    client.receive(engine.data_to_send())
    with pytest.raises(ssl.SSLError, match="BAD_RECORD_MAC"):
        client.obj.read(100)


def test_ragged_eof_behind_data_comes_after_it(
    pair: Callable[..., tuple[TLSEngine, Client]],
) -> None:
    engine, client = established(pair)
    client.obj.write(b"a" * 20000)
    engine.receive_data(client.flight())
    engine.receive_data(b"")
    assert engine.read(65536).data == b"a" * 20000
    result = engine.read(65536)
    assert (result.code, result.kind, result.reason) == (-1, ErrorKind.SYSCALL, Reason.EOF)


def test_write_empty_is_a_no_op(pair: Callable[..., tuple[TLSEngine, Client]]) -> None:
    engine, _ = established(pair, TLS12)
    result = engine.write(b"")
    assert (result.code, result.kind) == (0, ErrorKind.NONE)
    assert engine.data_to_send() == b""


def test_tls13_tickets_wait_for_the_first_write(
    pair: Callable[..., tuple[TLSEngine, Client]],
) -> None:
    engine, client = established(pair, TLS13)
    assert engine.data_to_send() == b""  # held back (trio #819)
    engine.write(b"hello")
    client.receive(engine.data_to_send())
    assert client.obj.read(100) == b"hello"
    session = client.obj.session
    assert session is not None
    assert session.has_ticket


def test_tls13_tickets_precede_close_notify(pair: Callable[..., tuple[TLSEngine, Client]]) -> None:
    engine, client = established(pair, TLS13)
    result = engine.shutdown()
    assert (result.code, result.kind) == (0, ErrorKind.WANT_READ)
    client.receive(engine.data_to_send())
    assert client.obj.read(100) == b""  # close_notify, after the tickets
    session = client.obj.session
    assert session is not None
    assert session.has_ticket


def test_tls13_tickets_are_not_released_by_reads(
    pair: Callable[..., tuple[TLSEngine, Client]],
) -> None:
    # A read with nothing to answer leaves the tickets held: a server that only listens
    # must not push unexpected bytes at a client that may be blocked sending. (A read
    # that *must* answer -- a KeyUpdate request -- releases them first; Python cannot
    # send one, so tests/test_interop.py does it with openssl s_client.)
    engine, client = established(pair, TLS13)
    client.obj.write(b"first")
    engine.receive_data(client.flight())
    assert engine.read(100).data == b"first"
    assert engine.data_to_send() == b""
    engine.write(b"reply")
    client.receive(engine.data_to_send())
    assert client.obj.read(100) == b"reply"
    session = client.obj.session
    assert session is not None
    assert session.has_ticket


def test_tls12_final_flight_is_not_held(pair: Callable[..., tuple[TLSEngine, Client]]) -> None:
    engine, client = pair(TLS12)
    client.step()
    engine.receive_data(client.flight())
    engine.accept()
    client.receive(engine.data_to_send())
    assert not client.step()  # waits for our Finished
    engine.receive_data(client.flight())
    assert engine.accept().code == 1
    client.receive(engine.data_to_send())
    assert client.step()


@VERSIONS
def test_peer_close_notify_then_our_shutdown(
    pair: Callable[..., tuple[TLSEngine, Client]], version: ssl.TLSVersion
) -> None:
    engine, client = established(pair, version)
    with pytest.raises(ssl.SSLWantReadError):
        client.obj.unwrap()
    engine.receive_data(client.flight())
    for _ in range(2):  # and on every call after it
        result = engine.read(100)
        assert (result.code, result.kind, result.reason) == (
            0,
            ErrorKind.ZERO_RETURN,
            Reason.CLOSE_NOTIFY,
        )
    assert engine.state is State.PEER_CLOSED
    assert engine.write(b"still talking").code == len(b"still talking")  # half-close
    result = engine.shutdown()
    assert (result.code, result.kind) == (1, ErrorKind.NONE)
    assert engine.state is State.CLOSED
    client.receive(engine.data_to_send())
    assert client.obj.read(100) == b"still talking"


@VERSIONS
def test_our_shutdown_then_peer_close_notify(
    pair: Callable[..., tuple[TLSEngine, Client]], version: ssl.TLSVersion
) -> None:
    engine, client = established(pair, version)
    result = engine.shutdown()
    assert (result.code, result.kind) == (0, ErrorKind.WANT_READ)
    assert engine.state is State.LOCAL_CLOSED
    assert engine.shutdown().code == 0  # still waiting
    client.receive(engine.data_to_send())
    assert client.obj.read(100) == b""
    client.obj.unwrap()  # answers our close_notify with its own
    engine.receive_data(client.flight())
    result = engine.shutdown()
    assert (result.code, result.kind) == (1, ErrorKind.NONE)
    assert engine.state is State.CLOSED
    assert engine.shutdown().code == 1  # idempotent once closed
    assert engine.read(100).kind is ErrorKind.ZERO_RETURN


def test_read_after_our_shutdown_sees_the_peer_close_notify(
    pair: Callable[..., tuple[TLSEngine, Client]],
) -> None:
    engine, client = established(pair)
    engine.shutdown()
    client.receive(engine.data_to_send())
    assert engine.read(100).kind is ErrorKind.WANT_READ
    assert client.obj.read(100) == b""
    client.obj.unwrap()
    engine.receive_data(client.flight())
    result = engine.read(100)
    assert result.kind is ErrorKind.ZERO_RETURN
    assert engine.state is State.CLOSED


@VERSIONS
def test_ragged_eof_is_fatal_syscall(
    pair: Callable[..., tuple[TLSEngine, Client]], version: ssl.TLSVersion
) -> None:
    engine, _ = established(pair, version)
    engine.receive_data(b"")
    result = engine.read(100)
    assert (result.code, result.kind, result.reason) == (-1, ErrorKind.SYSCALL, Reason.EOF)
    assert engine.state is State.FAILED


def test_garbage_after_handshake_is_a_protocol_error(
    pair: Callable[..., tuple[TLSEngine, Client]],
) -> None:
    engine, _ = established(pair)
    engine.receive_data(b"\x17\x03\x03\x00\x20" + b"\x00" * 32)  # undecryptable record
    result = engine.read(100)
    assert (result.code, result.kind) == (-1, ErrorKind.SSL)
    assert result.reason is Reason.PROTOCOL_ERROR
    assert engine.data_to_send()  # bad_record_mac alert, for the driver to flush


def test_garbage_while_waiting_for_close_notify(
    pair: Callable[..., tuple[TLSEngine, Client]],
) -> None:
    engine, _ = established(pair)
    engine.shutdown()
    engine.receive_data(b"\x17\x03\x03\x00\x20" + b"\x00" * 32)
    result = engine.shutdown()
    assert result.failed
    assert engine.state is State.FAILED


@VERSIONS
def test_read_after_our_shutdown_delivers_data_sent_before_it(
    pair: Callable[..., tuple[TLSEngine, Client]], version: ssl.TLSVersion
) -> None:
    # The peer's data and our close_notify cross on the wire: it is read, not refused
    # (found by the hostile suite's data-phase fuzzing: read() raised KeyError).
    engine, client = established(pair, version)
    engine.shutdown()
    client.obj.write(b"crossed in flight")
    engine.receive_data(client.flight())
    result = engine.read(100)
    assert (result.kind, result.data) == (ErrorKind.NONE, b"crossed in flight")
    assert engine.state is State.LOCAL_CLOSED


# -- the state machine ---------------------------------------------------------------


def reach(state: State, pair: Callable[..., tuple[TLSEngine, Client]]) -> TLSEngine:
    """An engine in ``state``, reached through real traffic."""
    engine, client = pair()
    if state is State.HANDSHAKING:
        return engine
    if state is State.FAILED:
        engine.receive_data(b"")
        engine.accept()
        return engine
    handshake(engine, client)
    if state is State.PEER_CLOSED or state is State.CLOSED:
        with pytest.raises(ssl.SSLWantReadError):
            client.obj.unwrap()
        engine.receive_data(client.flight())
        engine.read(100)
        if state is State.CLOSED:
            engine.shutdown()
    elif state is State.LOCAL_CLOSED:
        engine.shutdown()
    assert engine.state is state
    return engine


def call(engine: TLSEngine, operation: Operation) -> object:
    calls: dict[Operation, Callable[[], object]] = {
        Operation.ACCEPT: engine.accept,
        Operation.READ: lambda: engine.read(10),
        Operation.WRITE: lambda: engine.write(b"x"),
        Operation.SHUTDOWN: engine.shutdown,
    }
    return calls[operation]()


def illegal_calls() -> Iterator[tuple[State, Operation]]:
    for state in State:
        for operation in Operation:
            if (state, operation) not in TRANSITIONS:
                yield state, operation


@pytest.mark.parametrize(("state", "operation"), list(illegal_calls()))
def test_illegal_calls_raise_and_change_nothing(
    pair: Callable[..., tuple[TLSEngine, Client]], state: State, operation: Operation
) -> None:
    engine = reach(state, pair)
    engine.data_to_send()  # drain what reaching the state produced
    received = engine.bytes_received
    with pytest.raises(EngineStateError, match=operation.value):
        call(engine, operation)
    assert engine.state is state
    assert engine.bytes_received == received
    assert engine.data_to_send() == b""


def test_every_state_is_reachable(pair: Callable[..., tuple[TLSEngine, Client]]) -> None:
    for state in State:
        assert reach(state, pair).state is state


def test_table_targets_are_states() -> None:
    for (state, operation), outcomes in TRANSITIONS.items():
        assert isinstance(state, State)
        assert isinstance(operation, Operation)
        assert ErrorKind.WANT_WRITE not in outcomes  # cannot happen over memory BIOs
        for target in outcomes.values():
            assert isinstance(target, State)
    assert not any(state is State.FAILED for state, _ in TRANSITIONS)


def test_receive_data_after_eof_raises(pair: Callable[..., tuple[TLSEngine, Client]]) -> None:
    engine, _ = pair()
    engine.receive_data(b"")
    with pytest.raises(EngineStateError, match="after EOF"):
        engine.receive_data(b"more")
    assert engine.bytes_received == 0


def test_bytes_received_counts_input(pair: Callable[..., tuple[TLSEngine, Client]]) -> None:
    engine, client = pair()
    client.step()
    hello = client.flight()
    engine.receive_data(hello)
    assert engine.bytes_received == len(hello)


# -- chunking does not matter (hypothesis) --------------------------------------------


def chop(data: bytes, cuts: set[int]) -> list[bytes]:
    points = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(points)]


@settings(max_examples=60, deadline=None)
@given(data=st.data(), tls13=st.booleans())
def test_each_flight_is_answered_at_once_however_chopped(
    ca: trustme.CA, server_cert: trustme.LeafCert, data: st.DataObject, tls13: bool
) -> None:
    version = TLS13 if tls13 else TLS12
    engine = TLSEngine(server_context(server_cert))
    client = make_client(client_context(ca, version=version))
    answers: list[bool] = []
    result, answer = engine.accept(), b""
    for _flight_number in range(3):
        client_done = client.step()
        flight = client.flight()
        cuts = data.draw(st.sets(st.integers(1, len(flight) - 1), max_size=8))
        chunks = chop(flight, cuts)
        for index, chunk in enumerate(chunks):
            engine.receive_data(chunk)
            result = engine.accept()
            answer = engine.data_to_send()
            if index < len(chunks) - 1:
                # Nothing before the flight is complete...
                assert (result.kind, answer) == (ErrorKind.WANT_READ, b"")
        # ...and the answer right after its last byte.
        answers.append(bool(answer))
        client.receive(answer)
        if result.code == 1:
            assert client_done or client.step()
            break
    assert engine.state is State.ESTABLISHED
    # TLS 1.3: we answer the ClientHello; the tickets that would answer the client's
    # Finished are held back. TLS 1.2: we answer both flights.
    assert answers == ([True, False] if tls13 else [True, True])


@settings(max_examples=60, deadline=None)
@given(cuts=st.sets(st.integers(1, len(GARBAGE_BODY_RECORD) - 1), max_size=10))
def test_malformed_outcome_and_alert_do_not_depend_on_chopping(
    server_cert: trustme.LeafCert, cuts: set[int]
) -> None:
    engine = TLSEngine(server_context(server_cert))
    chunks = chop(GARBAGE_BODY_RECORD, cuts)
    for chunk in chunks[:-1]:
        engine.receive_data(chunk)
        assert engine.accept().kind is ErrorKind.WANT_READ
        assert engine.data_to_send() == b""
    engine.receive_data(chunks[-1])
    result = engine.accept()
    assert (result.code, result.kind, result.reason) == (-1, ErrorKind.SSL, Reason.PROTOCOL_ERROR)
    assert engine.data_to_send() == UNEXPECTED_MESSAGE_ALERT


@settings(max_examples=100, deadline=None)
@given(garbage=st.binary(min_size=1, max_size=300), eof=st.booleans())
def test_arbitrary_bytes_never_escape_as_exceptions(
    server_cert: trustme.LeafCert, garbage: bytes, eof: bool
) -> None:
    engine = TLSEngine(server_context(server_cert))
    engine.receive_data(garbage)
    if eof:
        engine.receive_data(b"")
    result = engine.accept()
    if eof:
        assert result.failed
    if result.failed:
        assert result.reason is not None
        assert engine.state is State.FAILED
    else:
        assert result.kind is ErrorKind.WANT_READ
