"""PROXY protocol: the sans-IO parser and encoders, and the listener reading headers.

The parser is tested byte by byte (every rejection, every split point, fuzzing with
hypothesis); the integration over memory streams on trio's MockClock (deadlines,
splits, what the engine receives) and over real loopback sockets with a Python ``ssl``
client behind a hand-written header. HAProxy itself is in ``test_haproxy.py``.
"""

from __future__ import annotations

import functools
import logging
import socket
import ssl
import struct
from typing import TYPE_CHECKING, Any, Final

import pytest
import trio
import trio.testing
from helpers import receive_until_eof
from hypothesis import given, settings
from hypothesis import strategies as st
from trio.testing import memory_stream_pair, wait_all_tasks_blocked

import trio_accept
from trio_accept import (
    ErrorKind,
    HandshakeError,
    ProxyHeader,
    ProxyProtocolError,
    ProxySSL,
    Reason,
    TLSStream,
    encode_proxy_v1,
    encode_proxy_v2,
    open_server,
    open_tls_listeners,
    parse_proxy_header,
    serve_tls,
)
from trio_accept._handshake import HELLO_TIMEOUT, Handshake
from trio_accept._proxy import (
    MAX_HEADER_SIZE,
    PP2_SUBTYPE_SSL_CIPHER,
    PP2_SUBTYPE_SSL_CN,
    PP2_SUBTYPE_SSL_KEY_ALG,
    PP2_SUBTYPE_SSL_SIG_ALG,
    PP2_SUBTYPE_SSL_VERSION,
    PP2_TYPE_ALPN,
    PP2_TYPE_AUTHORITY,
    PP2_TYPE_CRC32C,
    PP2_TYPE_NETNS,
    PP2_TYPE_NOOP,
    PP2_TYPE_SSL,
    PP2_TYPE_UNIQUE_ID,
    V1_MAX_LENGTH,
    V2_SIGNATURE,
    crc32c,
    encode_v2,
)

if TYPE_CHECKING:
    from collections.abc import Callable

SIG: Final = V2_SIGNATURE
CLIENT: Final = ("203.0.113.7", 56324)
CLIENT6: Final = ("2001:db8::7", 56324, 0, 0)
SERVER: Final = ("192.0.2.1", 443)
SERVER6: Final = ("2001:db8::1", 443, 0, 0)


def v2(
    ver_cmd: int = 0x21, family: int = 0x11, body: bytes = b"", length: int | None = None
) -> bytes:
    """A hand-made version 2 header, for headers the encoder refuses to make."""
    size = len(body) if length is None else length
    return SIG + bytes([ver_cmd, family]) + struct.pack("!H", size) + body


IPV4_BLOCK: Final = bytes([203, 0, 113, 7, 192, 0, 2, 1]) + struct.pack("!HH", 56324, 443)


def tlv(type_: int, value: bytes) -> bytes:
    return bytes([type_]) + struct.pack("!H", len(value)) + value


def ssl_tlv(client: int = 0x07, verify: int = 0, subs: bytes = b"") -> bytes:
    return tlv(PP2_TYPE_SSL, bytes([client]) + struct.pack("!I", verify) + subs)


def parsed(data: bytes) -> ProxyHeader:
    result = parse_proxy_header(data)
    assert result is not None
    header, consumed = result
    assert consumed == len(data)
    return header


# -- version 1 -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "source", "destination"),
    [
        pytest.param(
            b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n",
            ("192.168.0.1", 56324),
            ("192.168.0.11", 443),
            id="tcp4",
        ),
        pytest.param(
            b"PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n",
            ("0.0.0.0", 0),
            ("255.255.255.255", 65535),
            id="tcp4-extremes",
        ),
        pytest.param(
            b"PROXY TCP6 2001:DB8:0:0:0:0:0:7 ::1 1 2\r\n",
            ("2001:db8::7", 1, 0, 0),
            ("::1", 2, 0, 0),
            id="tcp6-normalised",
        ),
        pytest.param(
            b"PROXY TCP6 ::ffff:198.51.100.9 ::ffff:192.0.2.1 3 4\r\n",
            ("::ffff:198.51.100.9", 3, 0, 0),
            ("::ffff:192.0.2.1", 4, 0, 0),
            id="tcp6-ipv4-mapped",
        ),
        pytest.param(b"PROXY UNKNOWN\r\n", None, None, id="unknown-short"),
        pytest.param(
            b"PROXY UNKNOWN " + b"f" * (V1_MAX_LENGTH - 16) + b"\r\n",
            None,
            None,
            id="unknown-longest",
        ),
    ],
)
def test_v1_valid(line: bytes, source: Any, destination: Any) -> None:
    result = parse_proxy_header(line + b"\x16\x03\x01rest")
    assert result is not None
    header, consumed = result
    assert consumed == len(line)
    assert header == ProxyHeader(1, "PROXY", source, destination)
    assert header.tlvs == ()


def test_the_longest_v1_line_fits_and_one_byte_more_does_not() -> None:
    longest = b"PROXY UNKNOWN " + b"f" * (V1_MAX_LENGTH - 16) + b"\r\n"
    assert len(longest) == V1_MAX_LENGTH
    assert parse_proxy_header(longest) is not None
    too_long = longest[:-2] + b"f\r\n"
    with pytest.raises(ProxyProtocolError, match="no CRLF within the first 107 bytes"):
        parse_proxy_header(too_long)


V1_REJECTED: Final = [
    (b"PROXZ", "expected a PROXY protocol header"),
    (b"proxy TCP4", "expected a PROXY protocol header"),
    (b"PROXY  TCP4", "unknown protocol family"),
    (b"PROXY TCP5 ", "unknown protocol family"),
    (b"PROXY UDP4 ", "unknown protocol family"),
    (b"PROXY UNKNOWNX\r\n", "unknown protocol family"),
    (b"PROXY TCP4\r\n", "expected 'PROXY TCP4|TCP6"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "expected 'PROXY TCP4|TCP6"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3", "more than 6 fields"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", "more than 6 fields"),
    (b"PROXY TCP4 1.2.3.4  5.6.7.8", "two spaces in a row"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "a CR or LF outside the closing CRLF"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r\n", "a CR or LF outside the closing CRLF"),
    (b"PROXY TCP4 1.2.3.4\r5", "a CR or LF outside the closing CRLF"),
    (b"PROXY UNKNOWN junk\njunk\r\n", "a CR or LF outside the closing CRLF"),
    (b"PROXY TCP4 1.2.3.x", "cannot appear in a TCP4 line"),
    (b"PROXY TCP4 ::1", "cannot appear in a TCP4 line"),
    (b"PROXY TCP6 ::1%eth0", "cannot appear in a TCP6 line"),
    (b"PROXY TCP6 ::g", "cannot appear in a TCP6 line"),
    (b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", "is not an IPv4 address"),
    (b"PROXY TCP4 256.2.3.4 5.6.7.8 1 2\r\n", "is not an IPv4 address"),
    (b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", "is not an IPv4 address"),
    (b"PROXY TCP4 1.2.3.4.5 5.6.7.8 1 2\r\n", "is not an IPv4 address"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8. 1 2\r\n", "is not an IPv4 address"),
    (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "is not an IPv6 address"),
    (b"PROXY TCP6 1:::2 ::1 1 2\r\n", "is not an IPv6 address"),
    (b"PROXY TCP6 1:2:3:4:5:6:7:8:9 ::1 1 2\r\n", "is not an IPv6 address"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", "is not a port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n", "is not a port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 123456\r\n", "is not a port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1.5 2\r\n", "is not a port"),
]


@pytest.mark.parametrize(("data", "message"), V1_REJECTED, ids=lambda x: repr(x)[:40])
def test_v1_rejected(data: bytes, message: str) -> None:
    with pytest.raises(ProxyProtocolError, match=message):
        parse_proxy_header(data)


def test_v1_without_crlf_waits_until_107_bytes() -> None:
    line = b"PROXY UNKNOWN " + b"x" * (V1_MAX_LENGTH - 15)
    assert len(line) == V1_MAX_LENGTH - 1
    assert parse_proxy_header(line) is None
    with pytest.raises(ProxyProtocolError, match="no CRLF"):
        parse_proxy_header(line + b"x")


# -- rejected as early as possible -----------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param(b"\x16", "got a TLS handshake: the client connected directly", id="tls"),
        pytest.param(b"G", "expected a PROXY protocol header, got b'G'", id="http"),
        pytest.param(b"\x00", "expected a PROXY protocol header", id="nul"),
        pytest.param(b"\r\n\r\n\x00\r\nQUIX", "not the PROXY v2 signature", id="v2-signature"),
        pytest.param(b"\r\r", "not the PROXY v2 signature", id="v2-second-byte"),
        pytest.param(b"PROXY TCP4 1", None, id="v1-not-yet"),
    ],
)
def test_the_first_impossible_byte_is_rejected(data: bytes, message: str | None) -> None:
    # Every proper prefix is a possible beginning of a header; the last byte is not.
    for end in range(len(data)):
        assert parse_proxy_header(data[:end]) is None
    if message is None:
        assert parse_proxy_header(data) is None
    else:
        with pytest.raises(ProxyProtocolError, match=message):
            parse_proxy_header(data)


def test_v2_fixed_part_is_checked_byte_by_byte() -> None:
    assert parse_proxy_header(SIG) is None
    with pytest.raises(ProxyProtocolError, match="unknown version 1"):
        parse_proxy_header(SIG + b"\x11")
    assert parse_proxy_header(SIG + b"\x21") is None
    with pytest.raises(ProxyProtocolError, match="unknown address family"):
        parse_proxy_header(SIG + b"\x21\x41")
    assert parse_proxy_header(SIG + b"\x21\x11\x00") is None
    # The length: refused at once when too large, without waiting for the bytes.
    with pytest.raises(ProxyProtocolError, match="larger than the 4096 bytes allowed"):
        parse_proxy_header(SIG + b"\x21\x11\xff\xff")


# -- version 2 -----------------------------------------------------------------------------


def test_v2_ipv4() -> None:
    header = parsed(v2(body=IPV4_BLOCK))
    assert header == ProxyHeader(2, "PROXY", CLIENT, SERVER)


def test_v2_ipv6() -> None:
    source = bytes.fromhex("20010db8000000000000000000000007")
    destination = bytes.fromhex("20010db8000000000000000000000001")
    body = source + destination + struct.pack("!HH", 56324, 443)
    assert parsed(v2(family=0x21, body=body)) == ProxyHeader(2, "PROXY", CLIENT6, SERVER6)


def test_v2_ipv4_mapped_reads_as_getpeername_shows_it() -> None:
    header = parsed(encode_v2(("::1", 1, 0, 0), ("192.0.2.1", 443)))
    assert header.source == ("::1", 1, 0, 0)
    assert header.destination == ("::ffff:192.0.2.1", 443, 0, 0)


def test_v2_unix() -> None:
    body = b"/run/client.sock".ljust(108, b"\0") + b"\0abstract".ljust(108, b"\0")
    header = parsed(v2(family=0x31, body=body))
    assert (header.source, header.destination) == ("/run/client.sock", b"\0abstract")
    unnamed = parsed(v2(family=0x31, body=bytes(216)))
    assert (unnamed.source, unnamed.destination) == ("", "")


def test_v2_unspec_proxy_uses_the_real_endpoints() -> None:
    header = parsed(v2(family=0x00, body=tlv(PP2_TYPE_NOOP, b"")))
    assert header == ProxyHeader(2, "PROXY", None, None, ((PP2_TYPE_NOOP, b""),))


@pytest.mark.parametrize(
    ("family", "body"),
    [
        pytest.param(0x00, b"", id="unspec"),
        pytest.param(0x11, IPV4_BLOCK, id="ipv4-discarded"),
        pytest.param(0x12, IPV4_BLOCK, id="udp-ignored"),
        pytest.param(0x01, b"", id="odd-combination-ignored"),
    ],
)
def test_v2_local_has_no_addresses(family: int, body: bytes) -> None:
    header = parsed(v2(ver_cmd=0x20, family=family, body=body + tlv(PP2_TYPE_NOOP, b"x")))
    assert header == ProxyHeader(2, "LOCAL", None, None, ((PP2_TYPE_NOOP, b"x"),))


def test_v2_tlvs_and_their_properties() -> None:
    subs = (
        tlv(PP2_SUBTYPE_SSL_VERSION, b"TLSv1.3")
        + tlv(PP2_SUBTYPE_SSL_CN, "Zoë".encode())
        + tlv(PP2_SUBTYPE_SSL_CIPHER, b"TLS_AES_128_GCM_SHA256")
        + tlv(PP2_SUBTYPE_SSL_SIG_ALG, b"RSA-SHA256")
        + tlv(PP2_SUBTYPE_SSL_KEY_ALG, b"RSA2048")
        + tlv(0x2F, b"\xff unknown: kept, unchecked")
    )
    tlvs = (
        tlv(PP2_TYPE_ALPN, b"h2")
        + tlv(PP2_TYPE_AUTHORITY, "bücher.example".encode())
        + tlv(PP2_TYPE_UNIQUE_ID, b"\x01" * 128)
        + tlv(PP2_TYPE_NOOP, b"")
        + tlv(PP2_TYPE_NETNS, b"blue")
        + tlv(0xEA, b"vpce-0123")
        + ssl_tlv(0x05, 0, subs)
    )
    header = parsed(v2(body=IPV4_BLOCK + tlvs))
    assert header.source == CLIENT
    assert [type_ for type_, _ in header.tlvs] == [0x01, 0x02, 0x05, 0x04, 0x30, 0xEA, 0x20]
    assert header.alpn == b"h2"
    assert header.authority == "bücher.example"
    assert header.unique_id == b"\x01" * 128
    assert header.tlv(0xEA) == b"vpce-0123"
    assert header.tlv(0xEB) is None
    ssl_info = header.ssl
    assert ssl_info is not None
    assert (ssl_info.client, ssl_info.verify) == (0x05, 0)
    assert ssl_info.client_ssl
    assert ssl_info.client_certificate
    assert ssl_info.verified
    assert ssl_info.version == "TLSv1.3"
    assert ssl_info.common_name == "Zoë"
    assert ssl_info.cipher == "TLS_AES_128_GCM_SHA256"
    assert ssl_info.signature_algorithm == "RSA-SHA256"
    assert ssl_info.key_algorithm == "RSA2048"
    assert ssl_info.tlvs[-1] == (0x2F, b"\xff unknown: kept, unchecked")


def test_v2_ssl_without_a_verified_certificate() -> None:
    header = parsed(v2(body=IPV4_BLOCK + ssl_tlv(0x01, 1)))
    assert header.ssl == ProxySSL(client=0x01, verify=1)
    assert header.ssl is not None
    assert header.ssl.client_ssl
    assert not header.ssl.client_certificate
    assert not header.ssl.verified
    assert header.ssl.version is None
    no_tlvs = parsed(v2(body=IPV4_BLOCK))
    assert (no_tlvs.ssl, no_tlvs.alpn, no_tlvs.authority, no_tlvs.unique_id) == (
        None,
        None,
        None,
        None,
    )


def test_a_hand_made_header_with_a_malformed_ssl_field_raises_on_reading_it() -> None:
    header = ProxyHeader(2, "PROXY", CLIENT, SERVER, ((PP2_TYPE_SSL, b"\x01"),))
    with pytest.raises(ProxyProtocolError, match="SSL TLV of 1 bytes"):
        _ = header.ssl


def with_crc(body_without_crc: bytes, *, flip: bool = False) -> bytes:
    """A v2 header whose last TLV is a CRC32C over the whole (``flip``: a wrong one)."""
    header = bytearray(v2(body=body_without_crc + tlv(PP2_TYPE_CRC32C, bytes(4))))
    value = crc32c(header) ^ (1 if flip else 0)
    header[-4:] = struct.pack("!I", value)
    return bytes(header)


def test_crc32c_known_vectors() -> None:
    # The check value of the CRC-32C catalogue entry, and RFC 3720 (iSCSI) B.4's vectors.
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"") == 0
    assert crc32c(bytes(32)) == 0x8A9136AA
    assert crc32c(b"\xff" * 32) == 0x62A8AB43
    assert crc32c(bytes(range(32))) == 0x46DD794E
    assert crc32c(bytes(range(31, -1, -1))) == 0x113FDB5C


def test_v2_crc32c_verified() -> None:
    good = with_crc(IPV4_BLOCK + tlv(PP2_TYPE_UNIQUE_ID, b"abc"))
    header = parsed(good)
    assert header.tlv(PP2_TYPE_CRC32C) == good[-4:]
    with pytest.raises(ProxyProtocolError, match="CRC32C checksum does not match"):
        parse_proxy_header(with_crc(IPV4_BLOCK + tlv(PP2_TYPE_UNIQUE_ID, b"abc"), flip=True))
    # Any change to the covered bytes, the addresses say, breaks it too.
    tampered = bytearray(good)
    tampered[16] ^= 0x01
    with pytest.raises(ProxyProtocolError, match="CRC32C"):
        parse_proxy_header(bytes(tampered))


def test_v2_crc32c_of_the_encoder() -> None:
    header_bytes = encode_proxy_v2(CLIENT, SERVER, tlvs=[(PP2_TYPE_ALPN, b"h2")], checksum=True)
    header = parsed(header_bytes)
    assert header.tlvs[-1][0] == PP2_TYPE_CRC32C
    zeroed = header_bytes[:-4] + bytes(4)
    assert crc32c(zeroed) == int.from_bytes(header_bytes[-4:], "big")


V2_REJECTED: Final = [
    (v2(ver_cmd=0x11), "unknown version 1"),
    (v2(ver_cmd=0x31), "unknown version 3"),
    (v2(ver_cmd=0x22), "unknown command 0x2"),
    (v2(ver_cmd=0x2F), "unknown command 0xf"),
    (v2(family=0x41), "unknown address family 0x4"),
    (v2(family=0x13), "unknown transport protocol 0x3"),
    (v2(family=0x12, body=IPV4_BLOCK), "datagram"),
    (v2(family=0x22), "datagram"),
    (v2(family=0x32), "datagram"),
    (v2(family=0x10, body=IPV4_BLOCK), "0x10 is not a valid combination"),
    (v2(family=0x01), "0x01 is not a valid combination"),
    (v2(length=MAX_HEADER_SIZE - 15), "a 4097-byte header is larger than the 4096"),
    (v2(body=IPV4_BLOCK[:11]), "11 bytes cannot hold the 12-byte address block of AF_INET"),
    (v2(family=0x21, body=bytes(35)), "of AF_INET6"),
    (v2(family=0x31, body=bytes(215)), "of AF_UNIX"),
    (v2(body=IPV4_BLOCK + b"\x04\x00"), "2 stray bytes after the last TLV"),
    (v2(body=IPV4_BLOCK + b"\x04\x00\x02x"), "TLV 0x04 claims 2 bytes, only 1 are left"),
    (v2(body=IPV4_BLOCK + tlv(PP2_TYPE_CRC32C, b"abc")), "a CRC32C TLV of 3 bytes"),
    (
        v2(body=IPV4_BLOCK + tlv(PP2_TYPE_CRC32C, bytes(4)) * 2),
        "more than one CRC32C TLV",
    ),
    (v2(body=IPV4_BLOCK + tlv(PP2_TYPE_UNIQUE_ID, bytes(129))), "129-byte unique ID"),
    (v2(body=IPV4_BLOCK + tlv(PP2_TYPE_AUTHORITY, b"\xff")), "authority is not UTF-8"),
    (v2(body=IPV4_BLOCK + tlv(PP2_TYPE_NETNS, b"\xc3\xa9")), "namespace is not ASCII"),
    (v2(body=IPV4_BLOCK + tlv(PP2_TYPE_SSL, b"\x01\x00")), "SSL TLV of 2 bytes"),
    (v2(body=IPV4_BLOCK + ssl_tlv(subs=b"\x21\x00")), "stray bytes after the last SSL"),
    (v2(body=IPV4_BLOCK + ssl_tlv(subs=b"\x21\x00\x09TLS")), "sub-TLV 0x21 claims 9"),
    (v2(body=IPV4_BLOCK + ssl_tlv(subs=tlv(0x22, b"\xff"))), "certificate CN is not UTF-8"),
    (v2(body=IPV4_BLOCK + ssl_tlv(subs=tlv(0x23, "é".encode()))), "0x23 is not ASCII"),
]


@pytest.mark.parametrize(("data", "message"), V2_REJECTED, ids=lambda x: repr(x)[-30:])
def test_v2_rejected(data: bytes, message: str) -> None:
    with pytest.raises(ProxyProtocolError, match=message):
        parse_proxy_header(data + b"trailing bytes are the client's")


def test_v2_largest_header_allowed() -> None:
    body = IPV4_BLOCK + tlv(PP2_TYPE_NOOP, bytes(MAX_HEADER_SIZE - 16 - 12 - 3))
    data = v2(body=body)
    assert len(data) == MAX_HEADER_SIZE
    assert parsed(data).source == CLIENT


# -- splits, leftovers, round trips ------------------------------------------------------------

VALID: Final = [
    b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n",
    b"PROXY TCP6 2001:db8::7 2001:db8::1 56324 443\r\n",
    b"PROXY UNKNOWN\r\n",
    v2(body=IPV4_BLOCK),
    v2(ver_cmd=0x20, family=0x00),
    encode_proxy_v2(CLIENT6, SERVER6, tlvs=[(PP2_TYPE_AUTHORITY, b"example.com")]),
    with_crc(IPV4_BLOCK + tlv(PP2_TYPE_ALPN, b"h2") + ssl_tlv(subs=tlv(0x21, b"TLSv1.3"))),
    encode_proxy_v2("/run/a.sock", "/run/b.sock"),
]


@pytest.mark.parametrize("data", VALID, ids=lambda x: repr(x)[:30])
def test_split_at_every_byte_boundary(data: bytes) -> None:
    """However the header is cut, a prefix needs more and the whole is one header."""
    whole = parsed(data)
    for end in range(len(data)):
        assert parse_proxy_header(data[:end]) is None
        assert parse_proxy_header(bytearray(data[:end])) is None
    leftover = b"\x16\x03\x01\x02\x00" + bytes(64)
    assert parse_proxy_header(memoryview(data + leftover)) == (whole, len(data))


@pytest.mark.parametrize(
    ("source", "destination"),
    [
        (CLIENT, SERVER),
        (CLIENT6, SERVER6),
        (("::1", 0, 0, 0), ("::1", 65535, 0, 0)),
        (("fe80::1%lo", 8, 0, 1), ("fe80::2", 9, 0, 0)),
    ],
)
def test_encode_v1_round_trip(source: Any, destination: Any) -> None:
    header = parsed(encode_proxy_v1(source, destination))
    assert header.source[:2] == (source[0].split("%")[0], source[1])
    assert header.destination[:2] == destination[:2]
    assert parsed(encode_proxy_v1(None, None)) == ProxyHeader(1, "PROXY", None, None)


def test_encode_v2_local_and_unix() -> None:
    assert encode_proxy_v2(None, None) == SIG + b"\x20\x00\x00\x00"
    assert parsed(encode_proxy_v2(None, None)).command == "LOCAL"
    header = parsed(encode_proxy_v2(b"/a", "/b"))
    assert (header.source, header.destination) == ("/a", "/b")


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: encode_proxy_v1(CLIENT, SERVER6), "same IP version"),
        (lambda: encode_proxy_v1(("localhost", 1), SERVER), "does not appear to be an IPv4"),
        (lambda: encode_proxy_v1(("1.2.3.4", 65536), SERVER), "not a TCP port"),
        (lambda: encode_proxy_v1(("1.2.3.4", True), SERVER), "not a TCP port"),
        (lambda: encode_proxy_v1("1.2.3.4", SERVER), "not an IP socket address"),
        (lambda: encode_proxy_v2(("1.2.3.4",), SERVER), "not an IP socket address"),
        (lambda: encode_proxy_v2((1234, 1), SERVER), "not an IP socket address"),
        (lambda: encode_proxy_v2(CLIENT, SERVER, tlvs=[(256, b"")]), "must be a byte"),
        (lambda: encode_proxy_v2(CLIENT, SERVER, tlvs=[(-1, b"")]), "must be a byte"),
        (lambda: encode_proxy_v2(CLIENT, SERVER, tlvs=[(1, bytes(65536))]), "cannot hold"),
        (
            lambda: encode_proxy_v2(CLIENT, SERVER, tlvs=[(1, bytes(65000))] * 2),
            "cannot hold",
        ),
        (lambda: encode_proxy_v2("/" * 109, "/"), "longer than 108 bytes"),
    ],
)
def test_encoders_refuse_what_they_cannot_say(call: Callable[[], bytes], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


ports = st.integers(0, 65535)
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
tlv_lists = st.lists(
    st.tuples(
        st.integers(0, 255).filter(
            lambda t: (
                t not in (PP2_TYPE_CRC32C, PP2_TYPE_SSL, PP2_TYPE_UNIQUE_ID)
                and t not in (PP2_TYPE_AUTHORITY, PP2_TYPE_NETNS)
            )
        ),
        st.binary(max_size=40),
    ),
    max_size=5,
)


@settings(max_examples=200, deadline=None)
@given(
    addresses=st.one_of(
        st.tuples(st.tuples(ipv4, ports), st.tuples(ipv4, ports)),
        st.tuples(st.tuples(ipv6, ports), st.tuples(ipv6, ports)),
        st.tuples(st.tuples(ipv4, ports), st.tuples(ipv6, ports)),
    ),
    tlvs=tlv_lists,
    checksum=st.booleans(),
)
def test_encode_v2_parse_round_trip(
    addresses: tuple[tuple[str, int], tuple[str, int]],
    tlvs: list[tuple[int, bytes]],
    checksum: bool,
) -> None:
    source, destination = addresses
    data = encode_proxy_v2(source, destination, tlvs=tlvs, checksum=checksum)
    header = parsed(data)
    assert header.version == 2
    assert header.command == "PROXY"
    # Same addresses, whichever form (a mixed pair travels as IPv6, IPv4-mapped).
    for sent, received in ((source, header.source), (destination, header.destination)):
        assert received[1] == sent[1]
        assert received[0].removeprefix("::ffff:") == sent[0].removeprefix("::ffff:") or (
            socket.inet_pton(socket.AF_INET6, received[0])
            == socket.inet_pton(socket.AF_INET6, sent[0])
        )
    assert list(header.tlvs[: len(tlvs)]) == tlvs
    assert len(header.tlvs) == len(tlvs) + checksum


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.tuples(ipv4, ports, ipv4, ports), st.tuples(ipv6, ports, ipv6, ports)))
def test_encode_v1_parse_round_trip(fields: tuple[str, int, str, int]) -> None:
    source_host, source_port, destination_host, destination_port = fields
    header = parsed(
        encode_proxy_v1((source_host, source_port), (destination_host, destination_port))
    )
    assert header.source[1] == source_port
    assert header.destination[1] == destination_port
    family = socket.AF_INET if len(header.source) == 2 else socket.AF_INET6
    assert socket.inet_pton(family, header.source[0]) == socket.inet_pton(family, source_host)


# -- fuzzing: nothing but a header, None or ProxyProtocolError ---------------------------------


def check_total(data: bytes) -> None:
    try:
        result = parse_proxy_header(data)
    except ProxyProtocolError as exc:
        message = str(exc)
        assert message
        return
    if result is not None:
        header, consumed = result
        assert 0 < consumed <= len(data)
        assert header.version in (1, 2)
        assert header.command in ("PROXY", "LOCAL")
        _ = (header.ssl, header.authority, header.alpn, header.unique_id)  # never raise


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    check_total(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120))
def test_fuzz_after_a_valid_signature(tail: bytes) -> None:
    check_total(SIG + tail)
    check_total(b"PROXY " + tail)
    check_total(b"PROXY TCP4 " + tail)


mutations = st.lists(
    st.tuples(st.sampled_from(["flip", "insert", "delete", "truncate"]), st.integers(0, 400)),
    min_size=1,
    max_size=4,
)


@settings(max_examples=500, deadline=None)
@given(original=st.sampled_from(VALID), edits=mutations, byte=st.integers(0, 255))
def test_fuzz_mutated_valid_headers(
    original: bytes, edits: list[tuple[str, int]], byte: int
) -> None:
    data = bytearray(original)
    for operation, position in edits:
        if not data:
            break
        at = position % len(data)
        if operation == "flip":
            data[at] ^= byte or 1
        elif operation == "insert":
            data.insert(at, byte)
        elif operation == "delete":
            del data[at]
        else:
            del data[at:]
    check_total(bytes(data))


# -- the handshake driver, over memory streams ----------------------------------------------


async def proxied_handshake(
    server_transport: trio.abc.Stream,
    client_transport: trio.abc.Stream,
    server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
    header: bytes,
    **options: Any,
) -> trio_accept.TLSStream:
    """The header, then a trio TLS client's handshake; returns the server's stream."""
    client = trio.SSLStream(client_transport, client_context, server_hostname="localhost")
    servers: list[trio_accept.TLSStream] = []

    async def serve() -> None:
        servers.append(
            await trio_accept.accept(
                server_transport, server_context, proxy_protocol=True, **options
            )
        )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        await client_transport.send_all(header)
        await client.do_handshake()
        await client.send_all(b"ping")
    [server] = servers
    assert await server.receive_some() == b"ping"
    return server


@pytest.mark.parametrize(
    "header",
    [
        pytest.param(encode_proxy_v1(CLIENT, SERVER), id="v1"),
        pytest.param(encode_proxy_v2(CLIENT6, SERVER6, checksum=True), id="v2"),
    ],
)
async def test_accept_reads_the_header_then_the_handshake(
    header: bytes, server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    server_transport, client_transport = memory_stream_pair()
    server = await proxied_handshake(
        server_transport, client_transport, server_context, client_context, header
    )
    info = server.info
    assert info.proxy == parsed(header)
    assert info.client_address == parsed(header).source
    assert info.peer_address is None  # a memory stream has no address of its own
    assert info.version == "TLSv1.3"


async def test_local_command_keeps_the_real_peer(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    server_transport, client_transport = memory_stream_pair()
    client = trio.SSLStream(client_transport, client_context, server_hostname="localhost")
    await client_transport.send_all(encode_proxy_v2(None, None))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.do_handshake)
        server = await trio_accept.accept(
            server_transport,
            server_context,
            proxy_protocol=True,
            peer_address=("198.51.100.1", 4711),
        )
    assert server.info.proxy == ProxyHeader(2, "LOCAL", None, None)
    assert server.info.client_address == ("198.51.100.1", 4711)


async def test_header_dripped_one_byte_at_a_time(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    """Each byte arrives on its own (the server sees every partial header) and is
    counted as progress for the listener's eviction ranking; the first one makes the
    connection talking (no longer silent), once."""
    header = encode_proxy_v2(CLIENT, SERVER, tlvs=[(PP2_TYPE_UNIQUE_ID, b"id-1")])
    server_transport, client_transport = memory_stream_pair()
    talking: list[float] = []
    handshake = Handshake(
        server_transport,
        server_context,
        proxy_protocol=True,
        on_first_data=lambda: talking.append(trio.current_time()),
    )
    streams: list[TLSStream] = []

    async def run() -> None:
        streams.append(await handshake.run())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        await wait_all_tasks_blocked()
        assert (talking, handshake.talking_since) == ([], None)
        for index in range(len(header)):
            await client_transport.send_all(header[index : index + 1])
            await wait_all_tasks_blocked()
            assert handshake.bytes_received == index + 1
            assert handshake.proxy is None if index < len(header) - 1 else handshake.proxy
        assert handshake.client_address == CLIENT
        client = trio.SSLStream(client_transport, client_context, server_hostname="localhost")
        await client.do_handshake()
    [stream] = streams
    assert len(talking) == 1
    assert handshake.talking_since is not None
    assert stream.info.proxy is not None
    assert stream.info.proxy.unique_id == b"id-1"
    assert handshake.bytes_received > len(header)


async def test_header_and_client_hello_in_one_segment(
    autojump_clock: trio.testing.MockClock,
    server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
) -> None:
    """As HAProxy sends them: the bytes after the header are the engine's, and since
    they are the whole ClientHello, the hello deadline no longer applies."""
    server_transport, client_transport = memory_stream_pair()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    await client_transport.send_all(encode_proxy_v1(CLIENT, SERVER) + outgoing.read())

    async def finish_slowly() -> None:
        incoming.write(await client_transport.receive_some())
        client.do_handshake()  # the server's whole flight is in: TLS 1.3 done
        await trio.sleep(HELLO_TIMEOUT * 2)  # past the hello deadline, within the total
        await client_transport.send_all(outgoing.read())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(finish_slowly)
        server = await trio_accept.accept(
            server_transport, server_context, proxy_protocol=True, handshake_timeout=60
        )
    assert server.info.client_address == CLIENT
    assert server.info.handshake_seconds == HELLO_TIMEOUT * 2


@pytest.mark.parametrize(
    ("sent", "detail"),
    [
        pytest.param(b"", "(not a byte)", id="silent"),
        pytest.param(b"PROXY TCP4 1.2.3.4", "(18 bytes of it)", id="partial-v1"),
        pytest.param(SIG + b"\x21\x11\x00\x0c", "(16 bytes of it)", id="partial-v2"),
    ],
)
async def test_header_stall_hits_the_hello_deadline(
    sent: bytes,
    detail: str,
    autojump_clock: trio.testing.MockClock,
    server_context: ssl.SSLContext,
) -> None:
    server_transport, client_transport = memory_stream_pair()
    if sent:
        await client_transport.send_all(sent)
    start = trio.current_time()
    with pytest.raises(HandshakeError) as excinfo:
        await trio_accept.accept(server_transport, server_context, proxy_protocol=True)
    assert trio.current_time() - start == HELLO_TIMEOUT  # the mock clock: exact
    error = excinfo.value
    assert (error.reason, error.code, error.kind) == (Reason.TIMEOUT, -1, ErrorKind.SYSCALL)
    assert f"no complete PROXY protocol header within {HELLO_TIMEOUT:g} s {detail}" in str(error)
    assert await receive_until_eof(client_transport) == b""


@pytest.mark.parametrize(
    ("sent", "reason", "detail"),
    [
        pytest.param(
            b"\x16\x03\x01\x00\xc8\x01", Reason.PROXY_PROTOCOL, "TLS handshake", id="tls"
        ),
        pytest.param(b"GET / HTTP/1.1\r\n\r\n", Reason.PROXY_PROTOCOL, "got b'GET", id="http"),
        pytest.param(
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", Reason.PROXY_PROTOCOL, "CR or LF", id="lf"
        ),
        pytest.param(b"PROXY TCP4", Reason.PROXY_PROTOCOL, "after 10 bytes", id="truncated"),
        pytest.param(b"", Reason.EOF, "no PROXY protocol header", id="eof"),
    ],
)
async def test_malformed_or_missing_header_is_refused_without_an_alert(
    sent: bytes, reason: Reason, detail: str, server_context: ssl.SSLContext
) -> None:
    server_transport, client_transport = memory_stream_pair()
    if sent:
        await client_transport.send_all(sent)
    await client_transport.send_eof()
    with pytest.raises(HandshakeError) as excinfo:
        await trio_accept.accept(
            server_transport, server_context, proxy_protocol=True, peer_address=("10.0.0.9", 1)
        )
    error = excinfo.value
    assert (error.reason, error.code, error.kind) == (reason, -1, ErrorKind.SYSCALL)
    assert detail in str(error)
    assert str(error).endswith("[peer 10.0.0.9:1]")  # no header, no other address
    if reason is Reason.PROXY_PROTOCOL and sent.endswith(b"\n"):
        assert isinstance(error.__cause__, ProxyProtocolError)
    # Not a TLS alert, not the plain-HTTP answer: nothing at all.
    assert await receive_until_eof(client_transport) == b""


async def test_reset_in_the_middle_of_the_header(server_context: ssl.SSLContext) -> None:
    """A real TCP reset (SO_LINGER 0) after part of a header: reason reset."""
    [listener] = await trio.open_tcp_listeners(0, host="127.0.0.1")
    async with listener:
        client = trio.socket.socket()
        with client:
            await client.connect(listener.socket.getsockname())
            server_transport = await listener.accept()
            await client.send(b"PROXY TCP4 192.0.2")
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with pytest.raises(HandshakeError) as excinfo:
            await trio_accept.accept(server_transport, server_context, proxy_protocol=True)
    error = excinfo.value
    assert (error.reason, error.kind) == (Reason.RESET, ErrorKind.SYSCALL)
    assert "while reading the PROXY protocol header" in str(error)
    assert isinstance(error.__cause__, trio.BrokenResourceError)


async def test_a_tls_failure_after_the_header_names_the_client_and_the_proxy(
    server_context: ssl.SSLContext,
) -> None:
    server_transport, client_transport = memory_stream_pair()
    await client_transport.send_all(encode_proxy_v1(CLIENT, SERVER) + b"GET / HTTP/1.1\r\n\r\n")
    await client_transport.send_eof()
    with pytest.raises(HandshakeError) as excinfo:
        await trio_accept.accept(
            server_transport,
            server_context,
            proxy_protocol=True,
            peer_address=("127.0.0.1", 40000),
        )
    error = excinfo.value
    assert error.reason is Reason.PLAIN_HTTP
    assert error.peer_address == CLIENT
    assert str(error).endswith("[peer 203.0.113.7:56324 via 127.0.0.1:40000]")
    # Past the header it is TLS's business again: the readable 400 answer goes out.
    assert (await receive_until_eof(client_transport)).startswith(b"HTTP/1.1 400 ")


async def test_a_data_phase_error_names_the_original_client(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    server_transport, client_transport = memory_stream_pair()
    server = await proxied_handshake(
        server_transport,
        client_transport,
        server_context,
        client_context,
        encode_proxy_v2(CLIENT, SERVER),
        peer_address=("127.0.0.1", 40000),
    )
    await client_transport.send_all(b"\x17\x03\x03\x00\x05hello")  # not a valid record
    with pytest.raises(trio_accept.TLSError) as excinfo:
        await server.receive_some()
    assert excinfo.value.peer_address == CLIENT
    assert "[peer 203.0.113.7:56324 via 127.0.0.1:40000]" in str(excinfo.value)


async def test_without_proxy_protocol_a_header_is_not_tls(server_context: ssl.SSLContext) -> None:
    server_transport, client_transport = memory_stream_pair()
    await client_transport.send_all(encode_proxy_v1(CLIENT, SERVER))
    await client_transport.send_eof()
    with pytest.raises(HandshakeError) as excinfo:
        await trio_accept.accept(server_transport, server_context)
    # Not plain-http: a load balancer must not get an HTTP 400 (openssl s_server answers
    # it with nothing either; see the hostile suite's parity check).
    assert excinfo.value.reason is Reason.WRONG_VERSION


# -- the listener, over real loopback sockets -------------------------------------------------


def proxied_client(
    port: int, header: bytes, client_context: ssl.SSLContext, message: bytes = b"ping"
) -> bytes:
    """A raw socket sends the header, then a Python ``ssl`` client handshakes on it and
    sends ``message``; returns the answer (a blocking client: run it in a thread)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
        raw.sendall(header)
        with client_context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(message)
            answer = tls.recv(1024)
            tls.unwrap()
            return answer


def refused_client(port: int, data: bytes) -> bytes:
    """Send ``data`` on a raw socket; return what comes back before the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
        raw.sendall(data)
        raw.shutdown(socket.SHUT_WR)
        received = bytearray()
        try:
            while chunk := raw.recv(1024):
                received += chunk
        except ConnectionResetError:
            pass
        return bytes(received)


async def address_handler(stream: TLSStream) -> None:
    """Answers every message with the client address the server sees."""
    await stream.receive_some()
    await stream.send_all(repr(stream.info.client_address).encode())


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        pytest.param(encode_proxy_v1(CLIENT, SERVER), CLIENT, id="v1"),
        pytest.param(encode_proxy_v2(CLIENT6, SERVER6), CLIENT6, id="v2"),
        pytest.param(
            encode_proxy_v2(CLIENT, SERVER, tlvs=[(PP2_TYPE_ALPN, b"h2")], checksum=True),
            CLIENT,
            id="v2-tlvs",
        ),
    ],
)
async def test_serve_tls_behind_a_proxy_header(
    header: bytes,
    expected: Any,
    server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
) -> None:
    async with trio.open_nursery() as nursery:
        listeners: list[trio.SocketListener] = await nursery.start(
            functools.partial(
                serve_tls,
                address_handler,
                0,
                host="127.0.0.1",
                ssl_context=server_context,
                proxy_protocol=True,
            )
        )
        port = listeners[0].socket.getsockname()[1]
        answer = await trio.to_thread.run_sync(proxied_client, port, header, client_context)
        assert answer == repr(expected).encode()
        nursery.cancel_scope.cancel()


async def test_missing_header_is_refused_counted_and_logged(
    server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="trio_accept")
    failures: list[HandshakeError] = []
    done = trio.Event()

    def hook(error: HandshakeError) -> None:
        failures.append(error)
        if len(failures) == 2:
            done.set()

    async with open_server(
        address_handler,
        0,
        host="127.0.0.1",
        ssl_context=server_context,
        proxy_protocol=True,
        on_handshake_error=hook,
    ) as server:
        port = server.addresses[0][1]

        def direct_tls_client() -> type[BaseException]:
            with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
                try:
                    client_context.wrap_socket(raw, server_hostname="localhost")
                except (ssl.SSLError, OSError) as exc:
                    return type(exc)
            raise AssertionError("the handshake should have failed")

        # A TLS client that bypassed the load balancer: refused on its first bytes.
        error_type = await trio.to_thread.run_sync(direct_tls_client)
        assert issubclass(error_type, ssl.SSLEOFError | ConnectionResetError)
        # Garbage: nothing comes back (no alert, no HTTP answer).
        assert await trio.to_thread.run_sync(refused_client, port, b"hello\r\n") == b""
        await done.wait()
        # And a proper client still gets through.
        header = encode_proxy_v1(CLIENT, SERVER)
        answer = await trio.to_thread.run_sync(proxied_client, port, header, client_context)
        assert answer == repr(CLIENT).encode()
        stats = server.stats
    assert stats.failed == {Reason.PROXY_PROTOCOL: 2}
    assert stats.completed == 1
    assert [error.reason for error in failures] == [Reason.PROXY_PROTOCOL] * 2
    assert all(error.peer_address[0] == "127.0.0.1" for error in failures)
    lines = [r.getMessage() for r in caplog.records if "proxy-protocol" in r.getMessage()]
    assert len(lines) == 2
    assert "got a TLS handshake" in lines[0]
    assert "got b'hello\\r\\n'" in lines[1]
    assert all("\n" not in line and "Traceback" not in line for line in lines)
    assert all(r.exc_info is None for r in caplog.records)


async def test_tls_listener_with_proxy_protocol(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    async with trio.open_nursery() as nursery:
        [listener] = await open_tls_listeners(
            0, server_context, nursery=nursery, host="127.0.0.1", proxy_protocol=True
        )
        transport_listener = listener.transport_listener
        assert isinstance(transport_listener, trio.SocketListener)
        port = transport_listener.socket.getsockname()[1]
        header = encode_proxy_v2(CLIENT, SERVER, tlvs=[(PP2_TYPE_AUTHORITY, b"example.com")])

        async def client_side() -> None:
            answer = await trio.to_thread.run_sync(proxied_client, port, header, client_context)
            assert answer == b"example.com"

        nursery.start_soon(client_side)
        stream = await listener.accept()
        assert stream.info.client_address == CLIENT
        assert stream.info.peer_address[0] == "127.0.0.1"
        assert stream.info.proxy is not None
        authority = stream.info.proxy.authority
        assert authority is not None
        await stream.receive_some()
        await stream.send_all(authority.encode())
        assert await stream.receive_some() == b""
        await stream.aclose()
        await listener.aclose()
