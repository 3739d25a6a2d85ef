"""Garbage: first flights that are not a usable TLS handshake, and one that is, in pieces.

Each case sends its inputs on many connections while well-behaved clients keep being
served; every hostile connection must be refused with the right reason (and, where
OpenSSL sends one, the right alert). The same inputs go to ``openssl s_server`` in
``test_parity.py``.
"""

from __future__ import annotations

import ssl
from collections import Counter
from typing import Final

import trio
from helpers import DECODE_ERROR_ALERT, MALFORMED, Malformed

from trio_accept._handshake import PLAIN_HTTP_RESPONSE

from .harness import (
    Case,
    DelayedWrites,
    Hostile,
    Target,
    in_parallel,
    send_and_close,
    until_closed,
)
from .parity import Probe, tampered_second_flight
from .tls import (
    HTTP2_PREFACE,
    SSLV2_CIPHER_SPECS,
    TAMPERINGS,
    client_hello,
    describe,
    garbage_random_inputs,
    proxy_v1_header,
    proxy_v2_header,
    sslv2_hello,
    tls12_client,
)

#: Hostile connections open at once in a garbage case.
CONCURRENCY: Final = 16
#: What garbage may be classified as (random bytes can look like the start of anything).
PROTOCOL_REASONS: Final = frozenset(
    {
        "wrong-version",
        "protocol-error",
        "oversized",
        "unsupported-version",
        "plain-http",
        "eof",
    }
)


def malformed(name: str) -> Malformed:
    [case] = [case for case in MALFORMED if case.name == name]
    return case


async def answers_to(target: Target, inputs: list[bytes]) -> list[tuple[bytes, bool]]:
    """Send each input on its own connection (then EOF); what the server answered."""
    answers: list[tuple[bytes, bool]] = [(b"", False)] * len(inputs)

    async def one(index: int) -> None:
        answers[index] = await send_and_close(target, inputs[index])

    await in_parallel(len(inputs), CONCURRENCY, one)
    return answers


def note_answers(target: Target, answers: list[tuple[bytes, bool]]) -> Counter[str]:
    """Count the distinct answers (described, e.g. ``alert fatal decode_error``) and
    note them for the report."""
    seen = Counter(", ".join(describe(answer)) or "nothing" for answer, _ in answers)
    target.notes.append("answers: " + "; ".join(f"{a} x{n}" for a, n in seen.most_common()))
    return seen


async def test_random_bytes(hostile: Hostile) -> None:
    # Seeded random inputs of every size up to a few records, plus two classics.
    inputs = garbage_random_inputs()
    inputs += [malformed("garbage").data, malformed("ssh-banner").data]

    async def attack(target: Target) -> None:
        answers = await answers_to(target, inputs)
        note_answers(target, answers)

    await hostile.run(Case("random-bytes", "garbage", len(inputs), attack, PROTOCOL_REASONS))


def malformed_case(name: str, count: int) -> Case:
    """A case that sends one of the known malformed inputs (``helpers.MALFORMED``) on
    ``count`` connections: each must get OpenSSL's alert, and the known reason."""
    expected = malformed(name)

    async def attack(target: Target) -> None:
        answers = await answers_to(target, [expected.data] * count)
        note_answers(target, answers)
        assert [answer for answer, _ in answers] == [expected.alert] * count

    return Case(name, "garbage", count, attack, {expected.reason.value})


async def test_record_with_a_garbage_body(hostile: Hostile) -> None:
    await hostile.run(malformed_case("record-garbage-body", 20))


async def test_oversized_record(hostile: Hostile) -> None:
    await hostile.run(malformed_case("oversized-record", 20))


async def test_client_hello_truncated_at_every_byte(
    hostile: Hostile, client_context: ssl.SSLContext
) -> None:
    # Every proper prefix of a real ClientHello (0 to len - 1 bytes), then EOF: the
    # server waits for the rest, then refuses the truncation with decode_error.
    hello = client_hello(client_context)
    inputs = [hello[:size] for size in range(len(hello))]

    async def attack(target: Target) -> None:
        answers = await answers_to(target, inputs)
        note_answers(target, answers)
        assert {answer for answer, _ in answers} == {DECODE_ERROR_ALERT}

    await hostile.run(Case("truncated-hello", "garbage", len(inputs), attack, {"eof"}))


async def test_client_hello_in_one_byte_writes(hostile: Hostile) -> None:
    # Not an attack: a real client whose every write is split into 1-byte writes must
    # complete its handshake and be echoed.
    count = 5

    async def attack(target: Target) -> None:
        async def one(index: int) -> None:
            transport = DelayedWrites(await target.connect(), piece=1)
            stream = trio.SSLStream(transport, target.client_context, server_hostname="localhost")
            async with stream:
                await stream.send_all(b"in pieces %d" % index)
                assert await stream.receive_some() == b"in pieces %d" % index

        await in_parallel(count, count, one)

    await hostile.run(Case("one-byte-writes", "garbage", count, attack, {"completed"}))


async def test_duplicated_client_hello(hostile: Hostile, client_context: ssl.SSLContext) -> None:
    # The same ClientHello twice: the second one arrives where the client's Finished
    # should (unexpected_message, encrypted under the TLS 1.3 handshake keys).
    hello = client_hello(client_context)

    async def attack(target: Target) -> None:
        note_answers(target, await answers_to(target, [hello + hello] * 10))

    await hostile.run(Case("duplicated-hello", "garbage", 10, attack, {"protocol-error"}))


async def tampered(target: Target, probe: Probe) -> tuple[bytes, bool]:
    """Run ``probe`` on a hostile connection, then EOF; the server's whole answer."""
    async with await target.connect() as stream:
        received = await probe(stream)
        await stream.send_eof()
        answer, reset = await until_closed(stream)
        return received + answer, reset


async def test_reordered_and_duplicated_handshake_messages(
    hostile: Hostile, client_context: ssl.SSLContext
) -> None:
    tls12 = tls12_client(client_context)
    per_kind = 5
    count = per_kind * len(TAMPERINGS)

    async def attack(target: Target) -> None:
        tamperings = [tamper for tamper in TAMPERINGS.values() for _ in range(per_kind)]
        answers: list[tuple[bytes, bool]] = [(b"", False)] * count

        async def one(index: int) -> None:
            probe = tampered_second_flight(tls12, tamperings[index])
            answers[index] = await tampered(target, probe)

        await in_parallel(count, CONCURRENCY, one)
        note_answers(target, answers)

    await hostile.run(Case("reordered-flight", "garbage", count, attack, {"protocol-error"}))


async def test_sslv2_hello(hostile: Hostile) -> None:
    # SSL 2.0 itself (refused: protocol_version), and the SSLv2-format hello old clients
    # used to offer TLS 1.2 (parsed, but it cannot carry the extensions ECDHE needs:
    # handshake_failure).
    inputs = [sslv2_hello(b"\x00\x02", SSLV2_CIPHER_SPECS)] * 5
    inputs += [sslv2_hello(b"\x03\x03", SSLV2_CIPHER_SPECS)] * 5

    async def attack(target: Target) -> None:
        seen = note_answers(target, await answers_to(target, inputs))
        assert seen == {"alert fatal protocol_version": 5, "alert fatal handshake_failure": 5}

    await hostile.run(
        Case(
            "sslv2-hello",
            "garbage",
            len(inputs),
            attack,
            {"unsupported-version", "no-shared-cipher"},
        )
    )


async def test_plain_http(hostile: Hostile) -> None:
    # nginx's courtesy: a readable 400 instead of silence.
    request = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"

    async def attack(target: Target) -> None:
        answers = await answers_to(target, [request] * 20)
        assert [answer for answer, _ in answers] == [PLAIN_HTTP_RESPONSE] * 20
        target.notes.append("every client got the HTTP 400 answer")

    await hostile.run(Case("plain-http", "garbage", 20, attack, {"plain-http"}))


async def test_http2_preface(hostile: Hostile) -> None:
    # HTTP/2 with prior knowledge on the TLS port: plain HTTP too.
    async def attack(target: Target) -> None:
        answers = await answers_to(target, [HTTP2_PREFACE] * 10)
        assert [answer for answer, _ in answers] == [PLAIN_HTTP_RESPONSE] * 10
        target.notes.append("every client got the HTTP 400 answer")

    await hostile.run(Case("http2-preface", "garbage", 10, attack, {"plain-http"}))


async def test_proxy_header_where_none_is_expected(
    hostile: Hostile, client_context: ssl.SSLContext
) -> None:
    # A load balancer configured to send the PROXY protocol to a listener that does not
    # expect it: not TLS (OpenSSL says "wrong version number"), and not HTTP either --
    # so no HTTP answer, just the close.
    hello = client_hello(client_context)
    inputs = [proxy_v1_header() + hello] * 5 + [proxy_v2_header() + hello] * 5

    async def attack(target: Target) -> None:
        answers = await answers_to(target, inputs)
        note_answers(target, answers)
        assert {answer for answer, _ in answers} == {b""}

    await hostile.run(Case("proxy-header", "garbage", len(inputs), attack, {"wrong-version"}))
