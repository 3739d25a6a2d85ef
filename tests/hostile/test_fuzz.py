"""Fuzzing: hypothesis-made byte streams into the sans-IO engine.

Whatever the bytes, in whatever pieces, with or without EOF: every step returns one of
the engine's results (never an exception), a failure always carries a reason, EOF always
ends the handshake, and the number of steps is the number of pieces plus one -- nothing
loops. Inputs are random bytes, TLS records with random bodies, and real ClientHellos
(TLS 1.3 and TLS 1.2) mutated byte by byte.
"""

from __future__ import annotations

import itertools
import ssl
from collections import Counter
from typing import TYPE_CHECKING, Final

import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import trio_accept
from trio_accept import (
    EngineStateError,
    ErrorKind,
    HandshakeError,
    Reason,
    State,
    TLSEngine,
    encode_proxy_v1,
    encode_proxy_v2,
)
from trio_accept._engine import TRANSITIONS, Operation
from trio_accept._proxy import (
    PP2_TYPE_NOOP,
    V1_MAX_LENGTH,
    V2_SIGNATURE,
    ProxyProtocolError,
    parse_proxy_header,
)
from trio_accept._stream import RECEIVE_SIZE

from .harness import SCALE, Snapshot, open_fds
from .report import Row
from .tls import SansIOClient, client_hello, tls12_client

if TYPE_CHECKING:
    from .report import Report

#: Inputs per session in CI (times the scale: ``nox -s soak`` runs many more).
EXAMPLES: Final = 400 * SCALE
#: The result kinds a step may return (SSL_ERROR_WANT_WRITE cannot happen over memory
#: BIOs; see the engine's module docs).
RESULT_KINDS: Final = frozenset(ErrorKind) - {ErrorKind.WANT_WRITE}


def record(content_type: int, body: bytes) -> bytes:
    return bytes([content_type, 3, 3]) + len(body).to_bytes(2, "big") + body


@st.composite
def pieces(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """``data`` cut at random places (possibly into single bytes)."""
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(data) - 1)), max_size=8)))
    bounds = [0, *[cut for cut in cuts if cut < len(data)], len(data)]
    return [data[start:end] for start, end in itertools.pairwise(bounds) if end > start]


@st.composite
def mutated(draw: st.DrawFn, hello: bytes) -> bytes:
    """A real ClientHello with a few bytes changed, inserted or deleted, or cut short."""
    data = bytearray(hello)
    for _ in range(draw(st.integers(1, 6))):
        position = draw(st.integers(0, len(data) - 1))
        operation = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        if operation == "flip":
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif operation == "set":
            data[position] = draw(st.integers(0, 255))
        elif operation == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=16))
        elif operation == "delete" and len(data) > 1:
            del data[position]
        elif operation == "truncate":
            del data[max(1, position) :]
    return bytes(data)


def inputs(hellos: list[bytes]) -> st.SearchStrategy[bytes]:
    records = st.builds(
        record,
        st.sampled_from([20, 21, 22, 23, 24, 0, 255]),
        st.binary(max_size=300),
    )
    return st.one_of(
        st.binary(min_size=1, max_size=2000),
        st.lists(records, min_size=1, max_size=4).map(b"".join),
        st.sampled_from(hellos).flatmap(mutated),
    )


def fuzz_engine(
    context: ssl.SSLContext, chunks: list[bytes], eof: bool, engine: TLSEngine | None = None
) -> str:
    """Feed ``chunks`` (then EOF, if asked) to a fresh engine -- or to ``engine``, in the
    middle of its handshake -- a step after each; check every result; return how it
    ended (a reason, or ``want-read``/``accepted``)."""
    if engine is None:
        engine = TLSEngine(context)
    result = None
    for step, chunk in enumerate([*chunks, b""] if eof else chunks):
        engine.receive_data(chunk)
        result = engine.accept()
        assert result.kind in RESULT_KINDS
        assert isinstance(engine.data_to_send(), bytes)
        if result.kind is ErrorKind.WANT_READ:
            assert result.reason is None
            assert step < len(chunks), "EOF must end the handshake"
            continue
        if result.failed or result.kind is ErrorKind.ZERO_RETURN:
            assert result.reason is not None
            assert result.code in {-1, 0}
            assert engine.state in {State.FAILED, State.CLOSED}
            try:
                engine.accept()
            except EngineStateError:
                pass
            else:
                raise AssertionError("accept() after the end must be refused")
        return result.reason.value if result.reason is not None else "accepted"
    assert result is not None
    return "want-read"


async def test_engine_fuzz(
    hostile_server_context: ssl.SSLContext, client_context: ssl.SSLContext, report: Report
) -> None:
    # Run inside trio (although the engine needs none) for the harness's Snapshot.
    before = Snapshot.take()
    hellos = [client_hello(client_context), client_hello(tls12_client(client_context))]
    endings: Counter[str] = Counter()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,  # no timing: a slow CI machine must not fail a case
        database=None,  # nothing written to the working tree
        derandomize=SCALE == 1,  # the same inputs on every CI run; a soak explores
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(data=inputs(hellos).flatmap(pieces), eof=st.booleans())
    def fuzz(data: list[bytes], eof: bool) -> None:
        endings[fuzz_engine(hostile_server_context, data, eof)] += 1

    fuzz()
    leaks = Snapshot.take().leaks_since(before)
    report.add(
        Row(
            case="engine-fuzz",
            group="fuzzing",
            connections=endings.total(),
            well_behaved=(0, 0),
            classified=dict(endings),
            leaks=leaks,
            note="inputs fed to TLSEngine (random bytes, records, mutated ClientHellos)",
        )
    )
    assert not leaks, leaks


# -- after the first flight: the second flight, and the data phase ----------------------

#: Inputs per session for each of the later-state fuzzers (times the scale).
LATER_EXAMPLES: Final = 200 * SCALE


def first_flight_done(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> tuple[TLSEngine, SansIOClient, bytes]:
    """An engine that has answered a real client's ClientHello (it waits for the
    client's second flight), the client, and that second flight (TLS 1.3: Finished;
    TLS 1.2: ClientKeyExchange, ChangeCipherSpec, Finished)."""
    engine = TLSEngine(server_context)
    client = SansIOClient(client_context)
    engine.receive_data(client.hello())
    assert engine.accept().kind is ErrorKind.WANT_READ
    second_flight = client.step(engine.data_to_send())
    assert second_flight
    return engine, client, second_flight


def established(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> tuple[TLSEngine, SansIOClient]:
    """An engine whose handshake with a real client completed, and the client."""
    engine, client, second_flight = first_flight_done(server_context, client_context)
    engine.receive_data(second_flight)
    assert engine.accept().kind is ErrorKind.NONE
    client.step(engine.data_to_send())  # TLS 1.2: our Finished
    assert client.done
    return engine, client


def later_inputs(real: bytes) -> st.SearchStrategy[bytes]:
    """Garbage for an engine past its first flight: random bytes, records with random
    bodies, and ``real`` (what the client would send now) mutated or followed by junk."""
    records = st.builds(
        record, st.sampled_from([20, 21, 22, 23, 24, 0, 255]), st.binary(max_size=300)
    )
    return st.one_of(
        st.binary(min_size=1, max_size=2000),
        st.lists(records, min_size=1, max_size=4).map(b"".join),
        mutated(real),
        st.binary(min_size=1, max_size=300).map(lambda junk: real + junk),
    )


def client_contexts(client_context: ssl.SSLContext) -> dict[str, ssl.SSLContext]:
    return {"TLS 1.3": client_context, "TLS 1.2": tls12_client(client_context)}


def later_settings() -> settings:
    return settings(
        max_examples=LATER_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=SCALE == 1,
        suppress_health_check=[HealthCheck.too_slow],
    )


def test_engine_fuzz_second_flight(
    hostile_server_context: ssl.SSLContext, client_context: ssl.SSLContext, report: Report
) -> None:
    # The engine has answered a real ClientHello (TLS 1.3 or 1.2) and waits for the
    # client's second flight; it gets garbage instead, or that flight mutated, in
    # random pieces, with or without EOF. Same checks as engine-fuzz.
    fds = open_fds()
    contexts = client_contexts(client_context)
    endings: Counter[str] = Counter()

    @later_settings()
    @given(version=st.sampled_from(sorted(contexts)), data=st.data())
    def fuzz(version: str, data: st.DataObject) -> None:
        engine, _, second_flight = first_flight_done(hostile_server_context, contexts[version])
        chunks = data.draw(later_inputs(second_flight).flatmap(pieces))
        eof = data.draw(st.booleans())
        ending = fuzz_engine(hostile_server_context, chunks, eof, engine)
        endings[f"{version} {ending}"] += 1

    fuzz()
    add_fuzz_row(
        report,
        "engine-fuzz-second-flight",
        endings,
        fds,
        "garbage in place of the client's second flight",
    )


#: What a data-phase step does after feeding its piece.
DATA_OPERATIONS: Final = (Operation.READ, Operation.SHUTDOWN)


def step_data_phase(engine: TLSEngine, operation: Operation) -> str | None:
    """One ``read()`` or ``shutdown()``, checked against the engine's transition table:
    refused (EngineStateError, nothing changed) where the table has no entry, else a
    result kind the table lists and the state it names. Returns the reason of a
    result that ended the connection."""
    before = engine.state
    allowed = TRANSITIONS.get((before, operation))
    if allowed is None:
        try:
            engine.read(RECEIVE_SIZE) if operation is Operation.READ else engine.shutdown()
        except EngineStateError:
            assert engine.state is before
            return None
        raise AssertionError(f"{operation.value}() in {before.value} must be refused")
    result = engine.read(RECEIVE_SIZE) if operation is Operation.READ else engine.shutdown()
    assert result.kind in allowed, (before, operation, result)
    assert engine.state is allowed[result.kind]
    assert isinstance(engine.data_to_send(), bytes)
    if result.failed:
        assert result.reason is not None
        assert result.code == -1
        return result.reason.value
    if result.kind is ErrorKind.ZERO_RETURN:
        assert result.reason is Reason.CLOSE_NOTIFY
    else:
        assert result.reason is None
    return None


def test_engine_fuzz_data_phase(
    hostile_server_context: ssl.SSLContext, client_context: ssl.SSLContext, report: Report
) -> None:
    # A completed handshake (TLS 1.3 or 1.2), then garbage for the data phase: random
    # bytes, records with random bodies, real application-data records (and the
    # client's close_notify) mutated or followed by junk -- in random pieces, each
    # followed by read() or shutdown(), then maybe EOF. Every call returns a result the
    # engine's transition table allows and moves to the state it names (or, where the
    # table has no entry, is refused and changes nothing); a failure has a reason.
    fds = open_fds()
    contexts = client_contexts(client_context)
    endings: Counter[str] = Counter()

    @later_settings()
    @given(version=st.sampled_from(sorted(contexts)), data=st.data())
    def fuzz(version: str, data: st.DataObject) -> None:
        engine, client = established(hostile_server_context, contexts[version])
        real = client.write(data.draw(st.binary(min_size=1, max_size=100)))
        if data.draw(st.booleans()):
            real += client.close()
        chunks = data.draw(later_inputs(real).flatmap(pieces))
        if data.draw(st.booleans()):
            chunks.append(b"")  # EOF
        reason = None
        for chunk in chunks:
            engine.receive_data(chunk)
            operation = data.draw(st.sampled_from(DATA_OPERATIONS))
            reason = step_data_phase(engine, operation) or reason
        # And a last read: whatever came, it is classified (or refused, once failed).
        reason = step_data_phase(engine, Operation.READ) or reason
        ending = engine.state.value if reason is None else f"{engine.state.value} {reason}"
        endings[f"{version} {ending}"] += 1

    fuzz()
    add_fuzz_row(
        report,
        "engine-fuzz-data-phase",
        endings,
        fds,
        "garbage after a completed handshake, into read() and shutdown()",
    )


def add_fuzz_row(report: Report, case: str, endings: Counter[str], fds: int, note: str) -> None:
    """Report a fuzzing case (a leak is a file descriptor more than before), then
    assert nothing leaked."""
    leaks = {"fds": open_fds() - fds} if open_fds() > fds else {}
    report.add(
        Row(
            case=case,
            group="fuzzing",
            connections=endings.total(),
            well_behaved=(0, 0),
            classified=dict(endings),
            leaks=leaks,
            note=note,
        )
    )
    assert not leaks, leaks


# -- the PROXY protocol header, through the real reading path ---------------------------

#: PROXY protocol inputs per session in CI (times the scale).
PROXY_EXAMPLES: Final = 300 * SCALE
#: The deadlines of a PROXY fuzzing run (on a MockClock: they cost no real time).
PROXY_HELLO_TIMEOUT: Final = 5.0
PROXY_HANDSHAKE_TIMEOUT: Final = 10.0


def ip_address(draw: st.DrawFn) -> tuple[str, int]:
    port = draw(st.integers(0, 65535))
    if draw(st.booleans()):
        return str(draw(st.ip_addresses(v=4))), port
    return str(draw(st.ip_addresses(v=6))), port


@st.composite
def proxy_headers(draw: st.DrawFn) -> bytes:
    """A valid PROXY protocol header: v1, v2 (with random TLVs, maybe a checksum), or
    a v2 LOCAL one."""
    kind = draw(st.sampled_from(["v1", "v2", "local"]))
    if kind == "local":
        return encode_proxy_v2(None, None)
    source, destination = ip_address(draw), ip_address(draw)
    if kind == "v1" and (":" in source[0]) == (":" in destination[0]):
        return encode_proxy_v1(source, destination)
    tlvs = draw(
        st.lists(
            st.tuples(st.sampled_from([PP2_TYPE_NOOP, 0xE0, 0xEE]), st.binary(max_size=64)),
            max_size=3,
        )
    )
    return encode_proxy_v2(source, destination, tlvs=tlvs, checksum=draw(st.booleans()))


def proxy_inputs() -> st.SearchStrategy[bytes]:
    signature_starts = st.sampled_from([V2_SIGNATURE[:n] for n in range(1, 13)] + [b"PROXY "])
    return st.one_of(
        proxy_headers(),
        proxy_headers().flatmap(mutated),
        st.binary(max_size=300),
        st.tuples(signature_starts, st.binary(max_size=200)).map(b"".join),
        # Past the size limits: a huge v2 length, a v1 line without its CRLF.
        st.binary(min_size=2, max_size=2).map(lambda n: V2_SIGNATURE + b"\x21\x11" + n),
        st.integers(V1_MAX_LENGTH - 10, V1_MAX_LENGTH + 10).map(lambda n: b"PROXY " + b"1" * n),
    )


def expected_endings(data: bytes, then: str) -> frozenset[str] | None:
    """What the handshake may end with, from the parser's verdict on all of ``data``
    (the split must not change it); ``None`` when the bytes after a header decide, and
    any classified failure will do."""
    try:
        parsed = parse_proxy_header(data)
    except ProxyProtocolError:
        return frozenset({"proxy-protocol"})
    if parsed is None:  # a header not finished
        if then == "stall":
            return frozenset({"timeout"})
        if then == "eof":
            return frozenset({"proxy-protocol" if data else "eof"})
        return None  # the ClientHello continues the header: the parser decides
    _, consumed = parsed
    if consumed < len(data):
        return None  # the rest goes to OpenSSL as the start of a ClientHello
    return frozenset({"timeout" if then == "stall" else "eof" if then == "eof" else "accepted"})


def check_handshake_error(error: HandshakeError) -> str:
    """A failed handshake's reason, after checking it is classified as documented."""
    assert error.code in {-1, 0}
    assert isinstance(error.reason, Reason)
    return error.reason.value


async def proxy_handshake(
    server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
    chunks: list[bytes],
    then: str,
) -> str:
    """Send ``chunks`` one by one over a memory transport to :func:`trio_accept.accept`
    with ``proxy_protocol=True``, then ``then``: ``eof``, ``stall`` (nothing more), or
    ``tls`` (a real client's handshake). Returns how the server's side ended."""
    client_transport, server_transport = trio.testing.memory_stream_pair()
    ending = ""

    async def server() -> None:
        nonlocal ending
        try:
            stream = await trio_accept.accept(
                server_transport,
                server_context,
                proxy_protocol=True,
                hello_timeout=PROXY_HELLO_TIMEOUT,
                handshake_timeout=PROXY_HANDSHAKE_TIMEOUT,
            )
        except HandshakeError as error:  # the only exception a client can cause
            ending = check_handshake_error(error)
            return
        ending = "accepted"
        await trio.aclose_forcefully(stream)

    async def client() -> None:
        try:
            for chunk in chunks:
                await client_transport.send_all(chunk)
                await trio.testing.wait_all_tasks_blocked()  # the server reads each piece
            if then == "eof":
                await client_transport.send_eof()
            elif then == "tls":
                stream = trio.SSLStream(
                    client_transport, client_context, server_hostname="localhost"
                )
                await stream.do_handshake()
            await trio.sleep_forever()  # until the server is done
        except trio.BrokenResourceError:
            pass  # the server closed: it has its verdict

    # A hang would run past every deadline: the MockClock jumps there at once.
    with trio.fail_after(10 * PROXY_HANDSHAKE_TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client)
            await server()
            nursery.cancel_scope.cancel()
    await trio.aclose_forcefully(client_transport)
    return ending


def test_proxy_fuzz(
    hostile_server_context: ssl.SSLContext, client_context: ssl.SSLContext, report: Report
) -> None:
    # Hypothesis-made PROXY protocol headers -- valid ones (v1, v2 with TLVs and
    # checksums, LOCAL), the same mutated, random bytes, signature starts followed by
    # anything, headers past the size limits -- cut into random pieces and sent through
    # the listener's real reading path (accept(..., proxy_protocol=True) over a memory
    # transport, on a MockClock), followed by an EOF, by silence, or by a real TLS
    # client. The handshake must end, with an accepted stream or a HandshakeError with
    # a reason (never another exception); the reason is proxy-protocol, eof or timeout
    # whenever the header decided, and matches the parser's verdict on the whole input
    # however it was split.
    fds = open_fds()
    endings: Counter[str] = Counter()

    @settings(
        max_examples=PROXY_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=SCALE == 1,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(
        data=proxy_inputs().flatmap(pieces),
        then=st.sampled_from(["eof", "stall", "tls"]),
    )
    def fuzz(data: list[bytes], then: str) -> None:
        ending = trio.run(
            proxy_handshake,
            hostile_server_context,
            client_context,
            data,
            then,
            clock=trio.testing.MockClock(autojump_threshold=0),
        )
        expected = expected_endings(b"".join(data), then)
        if expected is None:  # OpenSSL had the last word: any classified failure
            assert ending == "accepted" or ending in {reason.value for reason in Reason}
        else:
            assert ending in expected, (ending, expected)
        endings[ending] += 1

    fuzz()
    add_fuzz_row(
        report,
        "proxy-fuzz",
        endings,
        fds,
        "PROXY headers in random pieces through accept(proxy_protocol=True)",
    )
