"""PROXY protocol v1/v2 (HAProxy's ``proxy-protocol.txt``): what a load balancer in front
of us says about the original connection.

Sans-IO like the engine: the listener feeds bytes in and gets a :class:`ProxyHeader` (or
an error) back; the bytes after the header belong to the TLS engine.

Theory of operation
===================

A load balancer that relays TCP (HAProxy in ``mode tcp``, a cloud network load balancer)
hides the client: our socket's peer is the balancer. With the PROXY protocol it writes one
header in front of the client's bytes saying who the client was. Version 1 is a line of
text (``PROXY TCP4 203.0.113.7 192.0.2.1 56324 443\\r\\n``), version 2 a binary block
(a 12-byte signature, version and command, family, length, addresses, then optional
type-length-value fields: ALPN, authority, a CRC32C checksum, a unique ID, facts of a TLS
session the balancer terminated, and vendor fields).

:func:`parse_proxy_header` is the whole receiving side, one call shape: give it every
byte received so far; it returns ``None`` (need more), or the header and how many bytes
it used, or raises :exc:`ProxyProtocolError`. It keeps no state between calls: the
caller keeps the buffer. The work per call is bounded (a version 1 line is at most
107 bytes; a version 2 header is not examined past its 16-byte fixed part until all
of it is in), so a client that drips its header one byte at a time costs little.

Strictness, because the header decides who a client *is* (access rules, logs, rate
limits): anything that does not match the specification exactly is refused, and refused
as early as possible -- the first byte that cannot start either version's signature, a
version 2 byte with an unknown version, command, family or transport, a length past
:data:`MAX_HEADER_SIZE`, a version 1 line with a character it cannot contain. A client
that connects straight to the port and starts TLS is refused on its first byte, not
after the deadline. What the checks are is listed in the "Behind a load balancer" how-to.

:func:`encode_proxy_v1` and :func:`encode_proxy_v2` (``encode_v1`` and ``encode_v2``
inside the package) are the sending side, for a server that relays
connections to an upstream and for tests.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final, cast, final

#: What a version 2 header starts with: chosen to be invalid in every common protocol.
V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
#: What a version 1 header starts with.
V1_PREFIX: Final = b"PROXY "
#: The longest version 1 line, CRLF included (the specification's worst case, an
#: ``UNKNOWN`` line with two full IPv6 addresses).
V1_MAX_LENGTH: Final = 107
#: The largest version 2 header we accept, fixed part, addresses and TLVs included.
#: The protocol allows 65 551 bytes; real senders send far less (HAProxy's largest
#: header, with every TLS fact and a 128-byte unique ID, is well under 1 KiB; cloud load
#: balancers add a few dozen bytes). A few KiB are enough, and a client that claims more
#: is refused at once instead of holding a buffer that size.
MAX_HEADER_SIZE: Final = 4096

# Version 2's fixed part: signature (12), version and command (1), family and transport
# (1), length (2).
_V2_FIXED: Final = 16
_V2_VERSION: Final = 2
_LOCAL: Final = 0x0
_PROXY: Final = 0x1
_COMMANDS: Final = {_LOCAL: "LOCAL", _PROXY: "PROXY"}
# Address families (high nibble of the 14th byte) and their address block sizes.
_AF_UNSPEC: Final = 0x0
_AF_INET: Final = 0x1
_AF_INET6: Final = 0x2
_AF_UNIX: Final = 0x3
_ADDRESS_SIZES: Final = {_AF_UNSPEC: 0, _AF_INET: 12, _AF_INET6: 36, _AF_UNIX: 216}
_FAMILY_NAMES: Final = {
    _AF_UNSPEC: "AF_UNSPEC",
    _AF_INET: "AF_INET",
    _AF_INET6: "AF_INET6",
    _AF_UNIX: "AF_UNIX",
}
_UNIX_PATH: Final = 108  # sizeof(sockaddr_un.sun_path) on Linux
# Transport protocols (low nibble of the 14th byte).
_UNSPEC: Final = 0x0
_STREAM: Final = 0x1
_DGRAM: Final = 0x2
# The family-and-transport bytes a PROXY command may carry: unspecified (use the real
# endpoints), TCP over IPv4, TCP over IPv6, UNIX stream. Datagram ones are valid protocol
# but meaningless for a TCP listener.
_PROXY_STREAM_BYTES: Final = frozenset({0x00, 0x11, 0x21, 0x31})

#: TLV type: the ALPN protocol the client negotiated with the proxy.
PP2_TYPE_ALPN: Final = 0x01
#: TLV type: the host name the client asked for (SNI for TLS), UTF-8.
PP2_TYPE_AUTHORITY: Final = 0x02
#: TLV type: a CRC32C of the whole header, with this field zeroed.
PP2_TYPE_CRC32C: Final = 0x03
#: TLV type: padding, ignored.
PP2_TYPE_NOOP: Final = 0x04
#: TLV type: an opaque ID of the connection, up to 128 bytes.
PP2_TYPE_UNIQUE_ID: Final = 0x05
#: TLV type: facts of the TLS session the proxy terminated, with sub-TLVs.
PP2_TYPE_SSL: Final = 0x20
#: SSL sub-TLV: the TLS version, e.g. ``TLSv1.3``.
PP2_SUBTYPE_SSL_VERSION: Final = 0x21
#: SSL sub-TLV: the client certificate's subject Common Name, UTF-8.
PP2_SUBTYPE_SSL_CN: Final = 0x22
#: SSL sub-TLV: the cipher's OpenSSL name.
PP2_SUBTYPE_SSL_CIPHER: Final = 0x23
#: SSL sub-TLV: the signature algorithm of the proxy's certificate, e.g. ``RSA-SHA256``.
PP2_SUBTYPE_SSL_SIG_ALG: Final = 0x24
#: SSL sub-TLV: the key algorithm of the proxy's certificate, e.g. ``RSA2048``.
PP2_SUBTYPE_SSL_KEY_ALG: Final = 0x25
#: TLV type: the proxy's network namespace, US-ASCII.
PP2_TYPE_NETNS: Final = 0x30

_TLV_HEADER: Final = 3  # type (1) + length (2)
_CRC32C_SIZE: Final = 4
_MAX_UNIQUE_ID: Final = 128
_SSL_FIXED: Final = 5  # client (1) + verify (4)
_MAX_TLV_VALUE: Final = 0xFFFF
_MAX_PORT: Final = 0xFFFF
_MAX_OCTET: Final = 255
# PP2_TYPE_SSL's ``client`` bits.
_CLIENT_SSL: Final = 0x01
_CLIENT_CERT_CONN: Final = 0x02
_CLIENT_CERT_SESS: Final = 0x04

# Version 1 grammar. Numbers without leading zeros ("to avoid any possible confusion
# with octal numbers"); each field separated by exactly one space.
_V1_FAMILIES: Final = (b"TCP4 ", b"TCP6 ", b"UNKNOWN ", b"UNKNOWN\r")
_V1_IPV4: Final = re.compile(rb"(?:0|[1-9][0-9]{0,2})(?:\.(?:0|[1-9][0-9]{0,2})){3}")
_V1_PORT: Final = re.compile(rb"0|[1-9][0-9]{0,4}")
# The characters each family's line can hold after "PROXY TCPx ": early rejection of
# bytes that cannot be part of it, before the CRLF arrives.
_V1_CHARS: Final = {
    b"TCP4": frozenset(b"0123456789. "),
    # IPv6 text, with the dotted tail of IPv4-mapped addresses that inet_ntop writes.
    b"TCP6": frozenset(b"0123456789abcdefABCDEF:. "),
}
_V1_FIELDS: Final = 6  # PROXY, family, source, destination, source port, destination port
_TLS_HANDSHAKE_RECORD: Final = 0x16
_SHOWN_BYTES: Final = 16
_IPV4: Final = 4
_HOST_AND_PORT: Final = 2


class ProxyProtocolError(ValueError):
    """The bytes are not a valid PROXY protocol header.

    The message says what is wrong, in words a person can act on ("no CRLF within the
    first 107 bytes", "the CRC32C checksum does not match", ...).
    """


@final
@dataclass(frozen=True, slots=True)
class ProxySSL:
    """The ``PP2_TYPE_SSL`` field: the TLS session between the client and the proxy, when
    the proxy terminated TLS (HAProxy's ``send-proxy-v2-ssl``).

    Attributes:
        client: Bit field: ``0x01`` the client connected over TLS, ``0x02`` it presented a
            certificate on this connection, ``0x04`` at least once in its TLS session.
        verify: 0 when the client presented a certificate and the proxy verified it;
            non-zero otherwise.
        tlvs: The sub-fields by type number, in order of arrival (see the ``PP2_SUBTYPE_*``
            constants); the properties read the common ones.
    """

    client: int
    verify: int
    tlvs: tuple[tuple[int, bytes], ...] = field(default=())

    @property
    def client_ssl(self) -> bool:
        """The client connected to the proxy over TLS."""
        return bool(self.client & _CLIENT_SSL)

    @property
    def client_certificate(self) -> bool:
        """The client presented a certificate, on this connection or in its session."""
        return bool(self.client & (_CLIENT_CERT_CONN | _CLIENT_CERT_SESS))

    @property
    def verified(self) -> bool:
        """The client presented a certificate and the proxy verified it."""
        return self.client_certificate and self.verify == 0

    @property
    def version(self) -> str | None:
        """The TLS version between client and proxy, e.g. ``"TLSv1.3"``."""
        return _text(self.tlvs, PP2_SUBTYPE_SSL_VERSION)

    @property
    def cipher(self) -> str | None:
        """The cipher's OpenSSL name, e.g. ``"TLS_AES_256_GCM_SHA384"``."""
        return _text(self.tlvs, PP2_SUBTYPE_SSL_CIPHER)

    @property
    def common_name(self) -> str | None:
        """The Common Name of the client certificate's subject."""
        return _text(self.tlvs, PP2_SUBTYPE_SSL_CN)

    @property
    def signature_algorithm(self) -> str | None:
        """The signature algorithm of the proxy's own certificate, e.g. ``"RSA-SHA256"``."""
        return _text(self.tlvs, PP2_SUBTYPE_SSL_SIG_ALG)

    @property
    def key_algorithm(self) -> str | None:
        """The key algorithm of the proxy's own certificate, e.g. ``"RSA2048"``."""
        return _text(self.tlvs, PP2_SUBTYPE_SSL_KEY_ALG)


@final
@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """A PROXY protocol header, as the load balancer sent it.

    Attributes:
        version: 1 (the text form) or 2 (the binary form).
        command: ``"PROXY"`` for a relayed connection, ``"LOCAL"`` for one the proxy
            made itself (a health check): then the addresses are ``None``.
        source: The original client's address, as a socket address tuple
            (``(host, port)`` for IPv4, ``(host, port, 0, 0)`` for IPv6, a path string for
            UNIX sockets), or ``None`` when the proxy did not say (``LOCAL``, ``UNKNOWN``).
        destination: The address the client connected to, in the same form, or ``None``.
        tlvs: Version 2's type-length-value fields, by type number, in order of arrival.
    """

    version: int
    command: str
    source: Any
    destination: Any
    tlvs: tuple[tuple[int, bytes], ...] = field(default=())

    def tlv(self, type_: int) -> bytes | None:
        """The value of the first TLV of type ``type_``, or ``None`` if there is none."""
        return _first(self.tlvs, type_)

    @property
    def alpn(self) -> bytes | None:
        """``PP2_TYPE_ALPN``: the application protocol the client agreed on with the
        proxy (e.g. ``b"h2"``), or ``None``."""
        return _first(self.tlvs, PP2_TYPE_ALPN)

    @property
    def authority(self) -> str | None:
        """``PP2_TYPE_AUTHORITY``: the host name the client asked the proxy for (its SNI
        when the proxy terminated TLS), or ``None``."""
        return _text(self.tlvs, PP2_TYPE_AUTHORITY)

    @property
    def unique_id(self) -> bytes | None:
        """``PP2_TYPE_UNIQUE_ID``: the proxy's ID of this connection (for correlating
        logs across layers), or ``None``."""
        return _first(self.tlvs, PP2_TYPE_UNIQUE_ID)

    @property
    def ssl(self) -> ProxySSL | None:
        """``PP2_TYPE_SSL``: the TLS session between the client and the proxy, or
        ``None`` when the proxy sent no such field.

        Raises:
            ProxyProtocolError: the field is malformed (never for a header that
                :func:`parse_proxy_header` returned: it checked the field).
        """
        value = _first(self.tlvs, PP2_TYPE_SSL)
        return None if value is None else _parse_ssl(value)


def parse_proxy_header(buffer: bytes | bytearray | memoryview) -> tuple[ProxyHeader, int] | None:
    """Parse a PROXY protocol header (version 1 or 2) at the start of ``buffer``.

    Call it with everything received so far, again after every receive, until it returns
    a header. The bytes after the header (``buffer[consumed:]``) are the client's: with a
    TLS listener, the start of its ClientHello.

    Args:
        buffer: The bytes received on the connection so far, from its first byte.

    Returns:
        ``(header, consumed)`` once a complete header is in, ``consumed`` being its size
        in bytes; ``None`` while the bytes are a valid beginning of a header but not a
        whole one.

    Raises:
        ProxyProtocolError: the bytes are not (the beginning of) a valid header -- raised
            as soon as that is certain, whatever is still missing.
    """
    view = memoryview(buffer).cast("B")
    if not view:
        return None
    first = view[0]
    if first == V2_SIGNATURE[0]:
        return _parse_v2(view)
    if first == V1_PREFIX[0]:
        return _parse_v1(bytes(view[:V1_MAX_LENGTH]))
    if first == _TLS_HANDSHAKE_RECORD:
        raise ProxyProtocolError(
            "expected a PROXY protocol header, got a TLS handshake: the client connected "
            "directly, or the load balancer does not send the PROXY protocol"
        )
    raise ProxyProtocolError(
        f"expected a PROXY protocol header, got {_show(bytes(view[:_SHOWN_BYTES]))}"
    )


# -- version 1 --------------------------------------------------------------------------


def _parse_v1(data: bytes) -> tuple[ProxyHeader, int] | None:
    """``data``: at most the first 107 bytes."""
    n = min(len(data), len(V1_PREFIX))
    if data[:n] != V1_PREFIX[:n]:
        raise ProxyProtocolError(
            f"expected a PROXY protocol header, got {_show(data[:_SHOWN_BYTES])}"
        )
    end = data.find(b"\r\n")
    if end < 0:
        _check_v1_start(data, complete=False)
        if len(data) >= V1_MAX_LENGTH:
            raise ProxyProtocolError(f"PROXY v1: no CRLF within the first {V1_MAX_LENGTH} bytes")
        return None
    line = data[:end]
    _check_v1_start(line, complete=True)
    return _parse_v1_line(line), end + 2


def _check_v1_start(part: bytes, *, complete: bool) -> None:
    """Refuse, before the CRLF arrives, what cannot become a valid line: a bare CR or LF,
    an unknown family, a character the family's line cannot hold.

    ``part`` holds no CRLF: it is the line without its CRLF (``complete``) or all that
    arrived so far. A CR in it stands alone -- unless it is the last byte received,
    whose LF may be on its way -- and so does any LF; the specification forbids both.
    """
    if b"\n" in part or b"\r" in (part if complete else part[:-1]):
        raise ProxyProtocolError("PROXY v1: a CR or LF outside the closing CRLF")
    rest = part[len(V1_PREFIX) :]
    if not any(rest[: len(family)] == family[: len(rest)] for family in _V1_FAMILIES):
        raise ProxyProtocolError(
            f"PROXY v1: unknown protocol family {_show(rest.split(b' ', 1)[0])}, "
            "expected TCP4, TCP6 or UNKNOWN"
        )
    family = rest[:4]
    allowed = _V1_CHARS.get(family)
    if allowed is None:
        return  # UNKNOWN: the rest of the line is ignored, whatever it is
    fields = rest[5:].rstrip(b"\r")
    if not allowed.issuperset(fields):
        bad = next(byte for byte in fields if byte not in allowed)
        raise ProxyProtocolError(
            f"PROXY v1: {_show(bytes([bad]))} cannot appear in a {family.decode()} line"
        )
    if b"  " in rest:
        raise ProxyProtocolError("PROXY v1: two spaces in a row")
    if rest.count(b" ") > _V1_FIELDS - 2:
        raise ProxyProtocolError(f"PROXY v1: more than {_V1_FIELDS} fields")


def _parse_v1_line(line: bytes) -> ProxyHeader:
    """A whole line (without its CRLF) that passed :func:`_check_v1_start`."""
    fields = line.split(b" ")
    family = fields[1]
    if family == b"UNKNOWN":
        # "The receiver must ignore anything presented before the CRLF is found."
        return ProxyHeader(version=1, command="PROXY", source=None, destination=None)
    if family not in _V1_CHARS or len(fields) != _V1_FIELDS:
        raise ProxyProtocolError(
            "PROXY v1: expected 'PROXY TCP4|TCP6 <source> <destination> <source port> "
            "<destination port>' with single spaces"
        )
    source_host = _v1_host(fields[2], family)
    destination_host = _v1_host(fields[3], family)
    source_port = _v1_port(fields[4])
    destination_port = _v1_port(fields[5])
    return ProxyHeader(
        version=1,
        command="PROXY",
        source=_socket_address(source_host, source_port),
        destination=_socket_address(destination_host, destination_port),
    )


def _v1_host(text: bytes, family: bytes) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if family == b"TCP4":
        if _V1_IPV4.fullmatch(text) and all(int(part) <= _MAX_OCTET for part in text.split(b".")):
            return ipaddress.IPv4Address(text.decode("ascii"))
        raise ProxyProtocolError(f"PROXY v1: {_show(text)} is not an IPv4 address")
    try:
        # The character check left hex digits, colons and dots only: no scope ID.
        return ipaddress.IPv6Address(text.decode("ascii"))
    except ValueError:
        raise ProxyProtocolError(f"PROXY v1: {_show(text)} is not an IPv6 address") from None


def _v1_port(text: bytes) -> int:
    if _V1_PORT.fullmatch(text) and int(text) <= _MAX_PORT:
        return int(text)
    raise ProxyProtocolError(
        f"PROXY v1: {_show(text)} is not a port (0 to 65535, no leading zeros)"
    )


# -- version 2 --------------------------------------------------------------------------


def _parse_v2(view: memoryview) -> tuple[ProxyHeader, int] | None:
    head = bytes(view[:_V2_FIXED])
    n = min(len(head), len(V2_SIGNATURE))
    if head[:n] != V2_SIGNATURE[:n]:
        raise ProxyProtocolError(
            f"expected a PROXY protocol header, got {_show(head)} (not the PROXY v2 signature)"
        )
    if len(head) > len(V2_SIGNATURE):
        version, command = head[12] >> 4, head[12] & 0x0F
        if version != _V2_VERSION:
            raise ProxyProtocolError(f"PROXY v2: unknown version {version}, expected 2")
        if command not in _COMMANDS:
            raise ProxyProtocolError(
                f"PROXY v2: unknown command {command:#x}, expected LOCAL (0) or PROXY (1)"
            )
    if len(head) > len(V2_SIGNATURE) + 1:
        _check_family(head[12] & 0x0F, head[13])
    if len(head) < _V2_FIXED:
        return None
    command, family = head[12] & 0x0F, head[13] >> 4
    length = int.from_bytes(head[14:16], "big")
    total = _V2_FIXED + length
    if total > MAX_HEADER_SIZE:
        raise ProxyProtocolError(
            f"PROXY v2: a {total}-byte header is larger than the {MAX_HEADER_SIZE} bytes allowed"
        )
    address_size = _ADDRESS_SIZES[family]
    if length < address_size:
        raise ProxyProtocolError(
            f"PROXY v2: {length} bytes cannot hold the {address_size}-byte address block "
            f"of {_FAMILY_NAMES[family]}"
        )
    if len(view) < total:
        return None
    data = bytes(view[:total])
    addresses_end = _V2_FIXED + address_size
    tlvs = _parse_tlvs(data, addresses_end)
    if command == _LOCAL:
        # "The receiver must ... use the real connection endpoints and discard the
        # protocol block including the family."
        return ProxyHeader(2, "LOCAL", None, None, tlvs), total
    source, destination = _v2_addresses(family, data[_V2_FIXED:addresses_end])
    return ProxyHeader(2, "PROXY", source, destination, tlvs), total


def _check_family(command: int, byte: int) -> None:
    family, transport = byte >> 4, byte & 0x0F
    if family not in _ADDRESS_SIZES:
        raise ProxyProtocolError(f"PROXY v2: unknown address family {family:#x}")
    if transport not in (_UNSPEC, _STREAM, _DGRAM):
        raise ProxyProtocolError(f"PROXY v2: unknown transport protocol {transport:#x}")
    if command == _LOCAL or byte in _PROXY_STREAM_BYTES:
        return
    if transport == _DGRAM:
        raise ProxyProtocolError(
            "PROXY v2: a datagram (UDP) connection cannot be relayed to a TCP listener"
        )
    raise ProxyProtocolError(
        f"PROXY v2: family and transport byte {byte:#04x} is not a valid combination "
        "(expected 0x00, 0x11, 0x21 or 0x31)"
    )


def _v2_addresses(family: int, block: bytes) -> tuple[Any, Any]:
    if family == _AF_INET:
        return (
            _socket_address(ipaddress.IPv4Address(block[0:4]), int.from_bytes(block[8:10], "big")),
            _socket_address(
                ipaddress.IPv4Address(block[4:8]), int.from_bytes(block[10:12], "big")
            ),
        )
    if family == _AF_INET6:
        source_port = int.from_bytes(block[32:34], "big")
        destination_port = int.from_bytes(block[34:36], "big")
        return (
            _socket_address(ipaddress.IPv6Address(block[0:16]), source_port),
            _socket_address(ipaddress.IPv6Address(block[16:32]), destination_port),
        )
    if family == _AF_UNIX:
        return _unix_path(block[:_UNIX_PATH]), _unix_path(block[_UNIX_PATH:])
    return None, None  # AF_UNSPEC: "the receiver should ignore address information"


def _unix_path(raw: bytes) -> str | bytes:
    """A ``sun_path`` as Python's ``getpeername()`` shows it: a string for a file path
    (NUL-terminated), bytes for a Linux abstract name (a leading NUL)."""
    if raw[:1] == b"\0" and raw.strip(b"\0"):
        return raw.rstrip(b"\0")
    return os.fsdecode(raw.split(b"\0", 1)[0])  # "" for an unnamed socket


def _parse_tlvs(data: bytes, start: int) -> tuple[tuple[int, bytes], ...]:
    """The TLVs in ``data[start:]`` (``data`` is the whole header), checked."""
    tlvs: list[tuple[int, bytes]] = []
    crc_offset: int | None = None
    offset = start
    while offset < len(data):
        if len(data) - offset < _TLV_HEADER:
            raise ProxyProtocolError(
                f"PROXY v2: {len(data) - offset} stray bytes after the last TLV"
            )
        type_ = data[offset]
        length = int.from_bytes(data[offset + 1 : offset + 3], "big")
        value_start = offset + _TLV_HEADER
        if value_start + length > len(data):
            raise ProxyProtocolError(
                f"PROXY v2: TLV {type_:#04x} claims {length} bytes, "
                f"only {len(data) - value_start} are left in the header"
            )
        value = data[value_start : value_start + length]
        if type_ == PP2_TYPE_CRC32C:
            if length != _CRC32C_SIZE:
                raise ProxyProtocolError(f"PROXY v2: a CRC32C TLV of {length} bytes, not 4")
            if crc_offset is not None:
                raise ProxyProtocolError("PROXY v2: more than one CRC32C TLV")
            crc_offset = value_start
        _check_tlv(type_, value)
        tlvs.append((type_, value))
        offset = value_start + length
    if crc_offset is not None:
        expected = int.from_bytes(data[crc_offset : crc_offset + _CRC32C_SIZE], "big")
        zeroed = data[:crc_offset] + bytes(_CRC32C_SIZE) + data[crc_offset + _CRC32C_SIZE :]
        actual = crc32c(zeroed)
        if actual != expected:
            raise ProxyProtocolError(
                f"PROXY v2: the CRC32C checksum does not match (header says "
                f"{expected:#010x}, bytes give {actual:#010x})"
            )
    return tuple(tlvs)


def _check_tlv(type_: int, value: bytes) -> None:
    if type_ == PP2_TYPE_UNIQUE_ID and len(value) > _MAX_UNIQUE_ID:
        raise ProxyProtocolError(
            f"PROXY v2: a {len(value)}-byte unique ID, more than {_MAX_UNIQUE_ID}"
        )
    if type_ == PP2_TYPE_AUTHORITY:
        _check_text(value, "authority", "utf-8")
    elif type_ == PP2_TYPE_NETNS:
        _check_text(value, "network namespace", "ascii")
    elif type_ == PP2_TYPE_SSL:
        _parse_ssl(value)


def _parse_ssl(value: bytes) -> ProxySSL:
    if len(value) < _SSL_FIXED:
        raise ProxyProtocolError(
            f"PROXY v2: an SSL TLV of {len(value)} bytes, shorter than its 5-byte start"
        )
    subs: list[tuple[int, bytes]] = []
    offset = _SSL_FIXED
    while offset < len(value):
        if len(value) - offset < _TLV_HEADER:
            raise ProxyProtocolError("PROXY v2: stray bytes after the last SSL sub-TLV")
        type_ = value[offset]
        length = int.from_bytes(value[offset + 1 : offset + 3], "big")
        start = offset + _TLV_HEADER
        if start + length > len(value):
            raise ProxyProtocolError(
                f"PROXY v2: SSL sub-TLV {type_:#04x} claims {length} bytes, "
                f"only {len(value) - start} are left"
            )
        sub = value[start : start + length]
        if type_ == PP2_SUBTYPE_SSL_CN:
            _check_text(sub, "client certificate CN", "utf-8")
        elif PP2_SUBTYPE_SSL_VERSION <= type_ <= PP2_SUBTYPE_SSL_KEY_ALG:
            _check_text(sub, f"SSL sub-TLV {type_:#04x}", "ascii")
        subs.append((type_, sub))
        offset = start + length
    return ProxySSL(
        client=value[0], verify=int.from_bytes(value[1:_SSL_FIXED], "big"), tlvs=tuple(subs)
    )


def _check_text(value: bytes, what: str, encoding: str) -> None:
    try:
        value.decode(encoding)
    except UnicodeDecodeError:
        raise ProxyProtocolError(f"PROXY v2: the {what} is not {encoding.upper()}") from None


# -- CRC32C (Castagnoli; RFC 4960 appendix B) ---------------------------------------------

# The reflected polynomial 0x1EDC6F41. Not in the standard library (zlib's crc32 is the
# IEEE polynomial); a byte-wise table is fast enough for headers of a few KiB.
_CRC32C_POLYNOMIAL: Final = 0x82F63B78
_CRC32C_MASK: Final = 0xFFFFFFFF


def _crc32c_table() -> tuple[int, ...]:
    table: list[int] = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ _CRC32C_POLYNOMIAL if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC32C_TABLE: Final = _crc32c_table()


def crc32c(data: bytes | bytearray | memoryview) -> int:
    """The CRC32C (Castagnoli) checksum of ``data``, as PROXY v2's ``PP2_TYPE_CRC32C``
    (and iSCSI, SCTP, ext4) use it: ``crc32c(b"123456789") == 0xE3069283``."""
    crc = _CRC32C_MASK
    table = _CRC32C_TABLE
    for byte in memoryview(data).cast("B"):
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ _CRC32C_MASK


# -- encoding ---------------------------------------------------------------------------


def encode_proxy_v1(source: Any, destination: Any) -> bytes:
    """A PROXY protocol version 1 line for a TCP connection.

    Args:
        source: The client's socket address (``(host, port)`` or an IPv6 4-tuple), or
            ``None`` together with ``destination`` for ``PROXY UNKNOWN``.
        destination: The address the client connected to, of the same IP version.

    Returns:
        The line, CRLF included.

    Raises:
        ValueError: an address is not an IP socket address, or the two are of different
            IP versions (version 1 cannot say that; use :func:`encode_proxy_v2`).
    """
    if source is None and destination is None:
        return b"PROXY UNKNOWN\r\n"
    source_host, source_port = _ip_endpoint(source)
    destination_host, destination_port = _ip_endpoint(destination)
    if source_host.version != destination_host.version:
        raise ValueError("PROXY v1 needs both addresses of the same IP version")
    family = "TCP4" if source_host.version == _IPV4 else "TCP6"
    hosts = [
        str(h) if h.version == _IPV4 else _ipv6_text(h) for h in (source_host, destination_host)
    ]
    line = f"PROXY {family} {hosts[0]} {hosts[1]} {source_port} {destination_port}\r\n"
    return line.encode("ascii")


def encode_proxy_v2(
    source: Any,
    destination: Any,
    *,
    tlvs: Iterable[tuple[int, bytes]] = (),
    checksum: bool = False,
) -> bytes:
    """A PROXY protocol version 2 header for a TCP (or UNIX stream) connection.

    IPv4 or IPv6 is chosen from the addresses; when one is IPv4 and the other IPv6, the
    IPv4 one is sent IPv4-mapped (``::ffff:a.b.c.d``), as HAProxy does.

    Args:
        source: The client's socket address: ``(host, port)``, an IPv6 4-tuple, or a
            UNIX socket path (``str`` or ``bytes``). ``None`` together with
            ``destination`` sends a ``LOCAL`` header (a connection of the proxy's own,
            such as a health check).
        destination: The address the client connected to, in the same form.
        tlvs: Type-length-value fields to append, as ``(type, value)`` pairs.
        checksum: Append a ``PP2_TYPE_CRC32C`` field with the header's checksum.

    Returns:
        The header.

    Raises:
        ValueError: an address is neither an IP socket address nor a UNIX path (or a
            path is longer than 108 bytes), a TLV type is not a byte or its value is
            longer than 65 535 bytes, or the whole header does not fit the 16-bit length.
    """
    if source is None and destination is None:
        command, family_byte, block = _LOCAL, 0x00, b""
    elif isinstance(source, str | bytes) and isinstance(destination, str | bytes):
        command, family_byte = _PROXY, 0x31
        block = _unix_block(source) + _unix_block(destination)
    else:
        command = _PROXY
        family_byte, block = _ip_block(source, destination)
    body = bytearray(block)
    for type_, value in tlvs:
        body += _tlv(type_, value)
    crc_at = -1
    if checksum:
        crc_at = _V2_FIXED + len(body) + _TLV_HEADER
        body += _tlv(PP2_TYPE_CRC32C, bytes(_CRC32C_SIZE))
    if len(body) > _MAX_TLV_VALUE:
        raise ValueError(f"a PROXY v2 header cannot hold {len(body)} bytes of addresses and TLVs")
    header = bytearray(V2_SIGNATURE)
    header += bytes([(_V2_VERSION << 4) | command, family_byte])
    header += len(body).to_bytes(2, "big") + body
    if checksum:
        header[crc_at : crc_at + _CRC32C_SIZE] = crc32c(header).to_bytes(_CRC32C_SIZE, "big")
    return bytes(header)


def _ip_endpoint(address: Any) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    parts = cast("tuple[object, ...]", address) if isinstance(address, tuple) else None
    if parts is None or len(parts) < _HOST_AND_PORT or not isinstance(parts[0], str):
        raise ValueError(f"not an IP socket address: {address!r}")
    host, port = parts[0], parts[1]
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= _MAX_PORT:
        raise ValueError(f"not a TCP port: {port!r}")
    ip = ipaddress.ip_address(host)
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
        ip = ipaddress.IPv6Address(ip.packed)  # the scope is local to this machine
    return ip, port


def _ip_block(source: Any, destination: Any) -> tuple[int, bytes]:
    source_host, source_port = _ip_endpoint(source)
    destination_host, destination_port = _ip_endpoint(destination)
    ports = source_port.to_bytes(2, "big") + destination_port.to_bytes(2, "big")
    if source_host.version == destination_host.version == _IPV4:
        return 0x11, source_host.packed + destination_host.packed + ports
    return 0x21, _as_ipv6(source_host) + _as_ipv6(destination_host) + ports


def _as_ipv6(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bytes:
    if isinstance(ip, ipaddress.IPv4Address):
        return bytes(10) + b"\xff\xff" + ip.packed
    return ip.packed


def _unix_block(path: str | bytes) -> bytes:
    raw = os.fsencode(path)
    if len(raw) > _UNIX_PATH:
        raise ValueError(f"a UNIX socket path longer than {_UNIX_PATH} bytes: {path!r}")
    return raw.ljust(_UNIX_PATH, b"\0")


def _tlv(type_: int, value: bytes) -> bytes:
    if not 0 <= type_ <= _MAX_OCTET:
        raise ValueError(f"a TLV type must be a byte (0 to 255), got {type_!r}")
    if len(value) > _MAX_TLV_VALUE:
        raise ValueError(f"a TLV value cannot hold {len(value)} bytes")
    return bytes([type_]) + len(value).to_bytes(2, "big") + bytes(value)


#: The short names, for code inside the package.
encode_v1: Final = encode_proxy_v1
encode_v2: Final = encode_proxy_v2


# -- helpers ----------------------------------------------------------------------------


def _socket_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> Any:
    """``(host, port)`` for IPv4, ``(host, port, 0, 0)`` for IPv6: what ``getpeername()``
    returns, so that code reading either cannot tell them apart."""
    if isinstance(ip, ipaddress.IPv4Address):
        return (str(ip), port)
    return (_ipv6_text(ip), port, 0, 0)


def _ipv6_text(ip: ipaddress.IPv6Address) -> str:
    """As ``inet_ntop`` writes it: compressed, an IPv4-mapped address with its dotted
    tail (``::ffff:192.0.2.1``, which Python 3.11's ``str()`` does not do)."""
    mapped = ip.ipv4_mapped
    return str(ip) if mapped is None else f"::ffff:{mapped}"


def _first(tlvs: tuple[tuple[int, bytes], ...], type_: int) -> bytes | None:
    return next((value for t, value in tlvs if t == type_), None)


def _text(tlvs: tuple[tuple[int, bytes], ...], type_: int) -> str | None:
    value = _first(tlvs, type_)
    return None if value is None else value.decode("utf-8", errors="replace")


def _show(data: bytes) -> str:
    """Bytes from the wire, shown safely in a one-line message."""
    return repr(data[:_SHOWN_BYTES]) + ("..." if len(data) > _SHOWN_BYTES else "")
