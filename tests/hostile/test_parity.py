"""Every garbage input, against our listener and against ``openssl s_server`` (see
``parity.py``): the reactions must be the same."""

from __future__ import annotations

import dataclasses
import ssl
from collections import Counter
from typing import TYPE_CHECKING, Final

import pytest
import trio
from helpers import MALFORMED, open_s_server

import trio_accept

from .harness import echo
from .parity import Probe, Reaction, react, s_server_options, sending, tampered_second_flight
from .report import ParityRow
from .tls import (
    HTTP2_PREFACE,
    SSLV2_CIPHER_SPECS,
    TAMPERINGS,
    client_hello,
    garbage_random_inputs,
    proxy_v1_header,
    proxy_v2_header,
    sslv2_hello,
    tls12_client,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from .report import Report

pytestmark = pytest.mark.interop


@pytest.fixture
async def s_server_port(
    server_pem: Path, hostile_server_context: ssl.SSLContext
) -> AsyncIterator[int]:
    """``openssl s_server`` configured as our listener is (certificate, suites, group)."""
    async with open_s_server(server_pem, *s_server_options(hostile_server_context)) as port:
        yield port


@pytest.fixture
async def our_port(hostile_server_context: ssl.SSLContext) -> AsyncIterator[int]:
    """Our listener, as users get it (its defaults)."""
    async with trio_accept.open_server(
        echo, host="127.0.0.1", ssl_context=hostile_server_context
    ) as server:
        yield server.addresses[0][1]


#: The one reaction of ours that s_server does not have, by design: a readable answer
#: to plain HTTP (``plain_http_response``; ``None`` turns it off), before the same close.
OUR_HTTP_ANSWER: Final = "HTTP/1.1 400 Bad Request"
#: Why it is there (the design asks for it).
OUR_HTTP_ANSWER_WHY: Final = (
    "our readable HTTP 400 answer to plain HTTP before the same close, as nginx does "
    "(design.md); plain_http_response=None removes it"
)
#: The inputs that get it.
PLAIN_HTTP_INPUTS: Final = frozenset({"plain-http", "plain-http-options", "http2-preface"})


def probes(client_context: ssl.SSLContext) -> dict[str, Probe]:
    """Every input of the garbage cases (and a few more first records), by name."""
    hello = client_hello(client_context)
    tls12 = tls12_client(client_context)
    found = {case.name: sending(case.data) for case in MALFORMED}
    found["eof"] = sending(b"")  # no byte at all: the server waits, then meets EOF
    # Every random input of the random-bytes case, not a sample.
    for number, data in enumerate(garbage_random_inputs()):
        found[f"random-bytes-{number}"] = sending(data)
    found |= {
        "truncated-hello-header": sending(hello[:3]),
        "truncated-hello-record-header": sending(hello[:5]),
        "truncated-hello-body": sending(hello[:100]),
        "hello-in-one-byte-writes": sending(hello, piece=1),
        "duplicated-hello": sending(hello + hello),
        "sslv2-hello": sending(sslv2_hello(b"\x00\x02", SSLV2_CIPHER_SPECS)),
        "sslv2-compatible-hello": sending(sslv2_hello(b"\x03\x03", SSLV2_CIPHER_SPECS)),
        "http2-preface": sending(HTTP2_PREFACE),
        "proxy-v1-header": sending(proxy_v1_header() + hello),
        "proxy-v2-header": sending(proxy_v2_header() + hello),
        "alert-first": sending(b"\x15\x03\x03\x00\x02\x02\x28"),
        "close-notify-first": sending(b"\x15\x03\x03\x00\x02\x01\x00"),
        "change-cipher-spec-first": sending(b"\x14\x03\x03\x00\x01\x01"),
        "application-data-first": sending(b"\x17\x03\x03\x00\x05hello"),
        "heartbeat-first": sending(b"\x18\x03\x03\x00\x03\x01\x00\x00"),
        "empty-handshake-record": sending(b"\x16\x03\x01\x00\x00"),
        "record-one-byte-too-long": sending(b"\x16\x03\x01\x40\x01"),
    }
    for name, tamper in TAMPERINGS.items():
        found[f"tls1.2-{name}"] = tampered_second_flight(tls12, tamper)
    return found


async def test_reactions_match_openssl_s_server(
    our_port: int, s_server_port: int, client_context: ssl.SSLContext, report: Report
) -> None:
    different: dict[str, tuple[Reaction, Reaction]] = {}
    for name, probe in probes(client_context).items():
        reactions: dict[int, Reaction] = {}

        async def observe(
            port: int, probe: Probe = probe, reactions: dict[int, Reaction] = reactions
        ) -> None:
            reactions[port] = await react(port, probe)

        async with trio.open_nursery() as nursery:  # both at once: half the waiting
            nursery.start_soon(observe, our_port)
            nursery.start_soon(observe, s_server_port)
        ours, theirs = reactions[our_port], reactions[s_server_port]
        same, note = ours == theirs, ""
        if name in PLAIN_HTTP_INPUTS:
            # Different, deliberately -- and only by the answer in front of the close.
            assert not same
            expected = dataclasses.replace(theirs, answer=(OUR_HTTP_ANSWER, *theirs.answer))
            note = OUR_HTTP_ANSWER_WHY if ours == expected else ""
        report.add_parity(ParityRow(name, str(ours), str(theirs), same, note))
        if not (same or note):
            different[name] = (ours, theirs)
    assert not different, different


async def answer_to_prefix(port: int, data: bytes) -> bytes:
    """Send ``data`` then EOF; everything the server answered."""
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(data)
        await stream.send_eof()
        answer = bytearray()
        try:
            while chunk := await stream.receive_some():
                answer += chunk
        except trio.BrokenResourceError:
            answer += b"<reset>"
        return bytes(answer)


async def test_truncated_hello_at_every_byte_matches_openssl_s_server(
    our_port: int, s_server_port: int, client_context: ssl.SSLContext, report: Report
) -> None:
    # Every proper prefix of a real ClientHello, then EOF: byte-for-byte the same answer.
    hello = client_hello(client_context)
    ours: Counter[bytes] = Counter()
    different: list[int] = []
    with trio.fail_after(60):
        for size in range(len(hello)):
            answer = await answer_to_prefix(our_port, hello[:size])
            ours[answer] += 1
            if answer != await answer_to_prefix(s_server_port, hello[:size]):
                different.append(size)
    summary = "; ".join(f"{answer.hex()} x{count}" for answer, count in ours.items())
    theirs = summary if not different else f"differs at sizes {different}"
    name = f"every prefix of a ClientHello ({len(hello)} bytes), then EOF"
    report.add_parity(ParityRow(name, summary, theirs, not different))
    assert not different
