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

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trio_accept import EngineStateError, ErrorKind, State, TLSEngine

from .harness import SCALE, Snapshot
from .report import Row
from .tls import client_hello, tls12_client

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


def fuzz_engine(context: ssl.SSLContext, chunks: list[bytes], eof: bool) -> str:
    """Feed ``chunks`` (then EOF, if asked) to a fresh engine, a step after each; check
    every result; return how it ended (a reason, or ``want-read``/``accepted``)."""
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
