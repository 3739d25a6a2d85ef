"""PROXY protocol: hostile clients of a listener that expects a PROXY protocol header.

A listener behind a load balancer (``proxy_protocol=True``) reads a PROXY protocol header
before the ClientHello (``trio_accept/_handshake.py``, ``Handshake._receive_proxy_header``),
under the ClientHello deadline. Whoever reaches the port can send anything in its place:
garbage inside a header, a header dripped a byte at a time and left unfinished, a header
that claims to be huge. Each must end with reason ``proxy-protocol`` (or ``timeout``, for
the stalled ones) while the well-behaved clients -- which send a valid PROXY v2 header, as
a load balancer does -- keep being served.

Inputs are sent *without* an EOF after them: a header the server cannot complete ends on
its deadline, so a case that allows only ``proxy-protocol`` also shows that the server
refused the bytes as soon as they were wrong, not when the client went away.
"""

from __future__ import annotations

import ssl
import struct
from typing import Final

import trio

from trio_accept import encode_proxy_v1, encode_proxy_v2
from trio_accept._proxy import MAX_HEADER_SIZE, PP2_TYPE_NOOP, V1_MAX_LENGTH, V2_SIGNATURE

from .harness import SCALE, Case, Hostile, Limits, Target, drip, in_parallel, until_closed
from .tls import client_hello

#: Hostile connections open at once.
CONCURRENCY: Final = 16

_SOURCE: Final = ("192.0.2.7", 56324)
_DESTINATION: Final = ("192.0.2.1", 443)


def _v2(command: int = 0x21, family: int = 0x11, body: bytes | None = None) -> bytes:
    """A PROXY v2 header with the given version/command and family bytes."""
    if body is None:
        body = bytes([192, 0, 2, 7, 192, 0, 2, 1]) + struct.pack(">HH", 56324, 443)
    return V2_SIGNATURE + bytes([command, family]) + struct.pack(">H", len(body)) + body


def _bad_checksum() -> bytes:
    header = bytearray(encode_proxy_v2(_SOURCE, _DESTINATION, checksum=True))
    header[-1] ^= 0x01  # the CRC32C field is the last TLV
    return bytes(header)


#: Headers with garbage inside: each is refused (``proxy-protocol``) once its bytes are in.
GARBAGE_HEADERS: Final = {
    "v1-bad-address": b"PROXY TCP4 999.0.2.7 192.0.2.1 56324 443\r\n",
    "v1-bad-port": b"PROXY TCP4 192.0.2.7 192.0.2.1 65536 443\r\n",
    "v1-lf-only": b"PROXY TCP4 192.0.2.7 192.0.2.1 56324 443\n",
    "v1-nul": b"PROXY TCP4 192.0.2.7\x00192.0.2.1 56324 443\r\n",
    "v1-unknown-family": b"PROXY UDP4 192.0.2.7 192.0.2.1 56324 443\r\n",
    "v1-missing-field": b"PROXY TCP4 192.0.2.7 192.0.2.1 56324\r\n",
    "v1-lowercase": b"proxy TCP4 192.0.2.7 192.0.2.1 56324 443\r\n",
    "v2-signature-typo": V2_SIGNATURE[:-1] + b"X" + b"\x21\x11\x00\x0c" + bytes(12),
    "v2-version-1": _v2(command=0x11),
    "v2-unknown-command": _v2(command=0x2F),
    "v2-unknown-family": _v2(family=0x51),
    "v2-too-short-for-addresses": _v2(body=bytes(4)),
    "v2-tlv-past-the-end": _v2(body=bytes(12) + b"\x04\x00\x10" + bytes(4)),
    "v2-bad-checksum": _bad_checksum(),
}

#: Headers larger than allowed: the server must refuse them at once, without waiting
#: for (or buffering) the size they claim.
OVERSIZED_HEADERS: Final = {
    # A version 2 length field of 65535: refused on the 16th byte.
    "v2-length-65535": V2_SIGNATURE + b"\x21\x11\xff\xff" + bytes(1024),
    # One byte more than MAX_HEADER_SIZE, with every byte of it sent.
    "v2-one-byte-too-many": _v2(body=bytes(MAX_HEADER_SIZE - 16 + 1)),
    # A version 1 line with no CRLF: refused at its 107th byte.
    "v1-no-crlf": b"PROXY UNKNOWN " + b"f" * (2 * V1_MAX_LENGTH),
}

#: The largest header allowed: addresses plus NOOP padding up to MAX_HEADER_SIZE. A
#: real client sends it and completes its handshake (the limit is not off by one).
LARGEST_HEADER_SIZE: Final = MAX_HEADER_SIZE


def largest_header(source: object, destination: object) -> bytes:
    padding = MAX_HEADER_SIZE - len(encode_proxy_v2(source, destination)) - 3
    header = encode_proxy_v2(source, destination, tlvs=[(PP2_TYPE_NOOP, bytes(padding))])
    assert len(header) == LARGEST_HEADER_SIZE
    return header


async def send_and_wait(target: Target, data: bytes) -> tuple[bytes, bool]:
    """Send ``data`` (no EOF) and read until the server closes."""
    async with await target.connect() as stream:
        await stream.send_all(data)
        return await until_closed(stream)


async def answers_to(target: Target, inputs: list[bytes]) -> list[bytes]:
    answers = [b""] * len(inputs)

    async def one(index: int) -> None:
        answers[index], _ = await send_and_wait(target, inputs[index])

    await in_parallel(len(inputs), CONCURRENCY, one)
    return answers


async def test_garbage_inside_a_proxy_header(
    hostile: Hostile, client_context: ssl.SSLContext
) -> None:
    # Each malformed header, followed by a real ClientHello (as a load balancer would
    # relay it): refused as proxy-protocol, and the client is sent nothing at all -- it
    # is not speaking TLS yet, so an alert would mean nothing to it.
    hello = client_hello(client_context)
    per_kind = 2 * SCALE
    inputs = [header + hello for header in GARBAGE_HEADERS.values() for _ in range(per_kind)]

    async def attack(target: Target) -> None:
        answers = await answers_to(target, inputs)
        assert answers == [b""] * len(inputs)
        target.notes.append(f"{len(GARBAGE_HEADERS)} kinds of malformed header; none was answered")

    await hostile.run(
        Case(
            "proxy-garbage",
            "proxy",
            len(inputs),
            attack,
            {"proxy-protocol"},
            proxy_protocol=True,
        )
    )


async def test_proxy_header_dripped_and_stalled(hostile: Hostile) -> None:
    # Slowloris on the header: a valid PROXY header (v1 or v2) dripped a byte every
    # 20 ms, all but its last byte, then nothing. The first byte makes the connection talking
    # (it counts for max_handshakes); the ClientHello deadline (1 s) ends every one.
    count = 48 * SCALE

    async def attack(target: Target) -> None:
        async def one(index: int) -> None:
            async with await target.connect() as stream, trio.open_nursery() as nursery:
                encode = encode_proxy_v2 if index % 2 else encode_proxy_v1
                header = encode(stream.socket.getsockname(), stream.socket.getpeername())
                nursery.start_soon(drip, stream, header[:-1])
                answer, _ = await until_closed(stream)
                assert answer == b""
                nursery.cancel_scope.cancel()

        await in_parallel(count, count, one)

    await hostile.run(
        Case(
            "proxy-slowloris",
            "proxy",
            count,
            attack,
            {"timeout", "evicted"},
            limits=Limits(hello_timeout=1.0),
            proxy_protocol=True,
        )
    )


async def test_oversized_proxy_header(hostile: Hostile) -> None:
    # Headers past the size limit are refused at once (a deadline would classify them
    # timeout, which this case does not allow); a header of exactly the limit, from a
    # real client, is accepted and its handshake completes.
    per_kind = 4 * SCALE
    inputs = [header for header in OVERSIZED_HEADERS.values() for _ in range(per_kind)]
    largest = 4 * SCALE

    async def attack(target: Target) -> None:
        answers = await answers_to(target, inputs)
        assert answers == [b""] * len(inputs)

        async def at_the_limit(_: int) -> None:
            transport = await target.connect()
            sockname, peername = transport.socket.getsockname(), transport.socket.getpeername()
            await transport.send_all(largest_header(sockname, peername))
            stream = trio.SSLStream(transport, target.client_context, server_hostname="localhost")
            async with stream:
                await stream.send_all(b"after the largest header")
                assert await stream.receive_some() == b"after the largest header"

        await in_parallel(largest, largest, at_the_limit)
        target.notes.append(
            f"refused at once: {', '.join(OVERSIZED_HEADERS)}; "
            f"a {LARGEST_HEADER_SIZE}-byte header (the limit) was accepted"
        )

    outcome = await hostile.run(
        Case(
            "proxy-oversized",
            "proxy",
            len(inputs) + largest,
            attack,
            {"proxy-protocol", "completed"},
            proxy_protocol=True,
        )
    )
    assert outcome.row.classified == {"proxy-protocol": len(inputs), "completed": largest}
