"""A sans-IO reader for the client's first TLS handshake message.

OpenSSL parses the ClientHello itself; this module only *watches* the same bytes on
their way into the engine, for three facts that Python's ``ssl`` does not expose on
the server side:

- whether a complete ClientHello has arrived yet (the ClientHello deadline ends there),
- the server name the client asked for (SNI), even when the handshake later fails,
- the ALPN protocols and TLS versions the client offered.

It never decides anything about the handshake: when it cannot make sense of the bytes
it gives up quietly (:attr:`HelloStatus.UNPARSED`) and OpenSSL's verdict stands.

Cost is linear in the bytes fed, however they are chunked: complete records are
consumed once, and only a partial record header or body is kept between calls, so a
client that drips its hello one byte at a time cannot make us re-scan it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final, final

# Record layer constants (RFC 8446 §5.1).
_HANDSHAKE_RECORD: Final = 22
_RECORD_HEADER: Final = 5
_TLS_MAJOR_VERSION: Final = 3  # every SSLv3/TLS record version is 3.x
_HANDSHAKE_HEADER: Final = 4  # msg_type (1) + length (3)
# A TLSPlaintext fragment is at most 2**14 bytes; anything larger is not a ClientHello
# record we should buffer (OpenSSL rejects it as PACKET_LENGTH_TOO_LONG).
_MAX_FRAGMENT: Final = 2**14
_CLIENT_HELLO: Final = 1
# OpenSSL's own ceiling for a ClientHello (CLIENT_HELLO_MAX_LENGTH in statem_srvr.c);
# a larger one is refused by OpenSSL, so we stop buffering there too.
_MAX_HELLO: Final = 131396
# Extension numbers (IANA TLS ExtensionType registry).
_EXT_SERVER_NAME: Final = 0
_EXT_ALPN: Final = 16
_EXT_SUPPORTED_VERSIONS: Final = 43
# GREASE values (RFC 8701) look like 0x?A?A: placeholders that carry no meaning.
_GREASE_MASK: Final = 0x0F0F
_GREASE_PATTERN: Final = 0x0A0A
# How many leading bytes we keep to classify non-TLS input (enough for "OPTIONS ").
_HEAD_BYTES: Final = 16


class HelloStatus(enum.Enum):
    """How far :class:`ClientHelloReader` got."""

    NEED_DATA = "need-data"
    """No complete ClientHello yet."""
    PARSED = "parsed"
    """A complete ClientHello was read; :attr:`ClientHelloReader.hello` holds its facts."""
    UNPARSED = "unparsed"
    """The bytes are not a ClientHello we understand; OpenSSL decides what they are."""


@final
@dataclass(frozen=True, slots=True)
class ClientHello:
    """What the client offered in its first flight.

    Attributes:
        server_name: The SNI host name, lower-cased, or ``None`` when the client sent none.
        alpn_protocols: The ALPN protocols offered, in the client's order.
        versions: The TLS versions offered, as ``ssl`` names them (``"TLSv1.3"``, ...):
            from the ``supported_versions`` extension when present, else the legacy
            version field.
    """

    server_name: str | None
    alpn_protocols: tuple[str, ...]
    versions: tuple[str, ...]


_VERSION_NAMES: Final = {
    0x0300: "SSLv3",
    0x0301: "TLSv1",
    0x0302: "TLSv1.1",
    0x0303: "TLSv1.2",
    0x0304: "TLSv1.3",
}


class _Malformed(Exception):
    """Internal: the bytes are not a well-formed ClientHello."""


@final
class ClientHelloReader:
    """Collects the ClientHello from the client's first records, incrementally.

    Call :meth:`feed` with every byte received from the client, in order. Once
    :attr:`status` is no longer :attr:`HelloStatus.NEED_DATA`, further bytes only top up
    :attr:`head`.
    """

    __slots__ = ("_body", "_buffer", "_hello_length", "head", "hello", "status")

    def __init__(self) -> None:
        self.status: HelloStatus = HelloStatus.NEED_DATA
        self.hello: ClientHello | None = None
        #: The first bytes the client sent (at most 16, however they were chunked), to
        #: recognise plain HTTP.
        self.head: bytes = b""
        # Bytes of a record not yet complete (header and fragment).
        self._buffer = bytearray()
        # Handshake-layer bytes gathered from complete records.
        self._body = bytearray()
        self._hello_length: int | None = None

    @property
    def finished(self) -> bool:
        """True when further bytes can change nothing here (verdict in, head full)."""
        return self.status is not HelloStatus.NEED_DATA and len(self.head) >= _HEAD_BYTES

    def feed(self, data: bytes | bytearray | memoryview) -> HelloStatus:
        """Take the next bytes from the client and return the new :attr:`status`."""
        if len(self.head) < _HEAD_BYTES:  # kept whatever the verdict: see ``head``
            self.head += bytes(data[: _HEAD_BYTES - len(self.head)])
        if self.status is not HelloStatus.NEED_DATA or not data:
            return self.status
        self._buffer += data
        try:
            self._consume_records()
        except _Malformed:
            self.status = HelloStatus.UNPARSED
        if self.status is not HelloStatus.NEED_DATA:
            self._buffer = bytearray()
            self._body = bytearray()
        return self.status

    def _consume_records(self) -> None:
        buffer = self._buffer
        # Judge the content type and major version as soon as each byte is in, so that
        # non-TLS input is recognised from its first byte.
        if buffer[0] != _HANDSHAKE_RECORD or (len(buffer) > 1 and buffer[1] != _TLS_MAJOR_VERSION):
            raise _Malformed
        while len(buffer) >= _RECORD_HEADER:
            if buffer[0] != _HANDSHAKE_RECORD or buffer[1] != _TLS_MAJOR_VERSION:
                raise _Malformed
            length = int.from_bytes(buffer[3:5])
            if length == 0 or length > _MAX_FRAGMENT:
                raise _Malformed
            if len(buffer) < _RECORD_HEADER + length:
                return
            self._body += buffer[_RECORD_HEADER : _RECORD_HEADER + length]
            del buffer[: _RECORD_HEADER + length]
            if self._take_hello():
                return

    def _take_hello(self) -> bool:
        body = self._body
        if self._hello_length is None:
            if len(body) < _HANDSHAKE_HEADER:
                return False
            if body[0] != _CLIENT_HELLO:
                raise _Malformed
            self._hello_length = int.from_bytes(body[1:4])
            if self._hello_length > _MAX_HELLO:
                raise _Malformed
        if len(body) < _HANDSHAKE_HEADER + self._hello_length:
            return False
        self.hello = _parse_client_hello(
            bytes(body[_HANDSHAKE_HEADER : _HANDSHAKE_HEADER + self._hello_length])
        )
        self.status = HelloStatus.PARSED
        return True


# The parse below is plain index arithmetic over one ``bytes`` object: it runs once per
# handshake, on every connection, and allocating a cursor or a view per field made it
# five times slower (20 µs for an ordinary ClientHello). Every read is bounds-checked
# against the end of its enclosing vector, and a violation raises _Malformed.


def _u8(data: bytes, pos: int, end: int) -> int:
    if pos >= end:
        raise _Malformed
    return data[pos]


def _u16(data: bytes, pos: int, end: int) -> int:
    if pos + 2 > end:
        raise _Malformed
    return (data[pos] << 8) | data[pos + 1]


def _skip_vector(data: bytes, pos: int, end: int, length_size: int) -> int:
    """The position after a vector with a ``length_size``-byte length prefix."""
    length = _u8(data, pos, end) if length_size == 1 else _u16(data, pos, end)
    after = pos + length_size + length
    if after > end:
        raise _Malformed
    return after


def _parse_client_hello(body: bytes) -> ClientHello:
    end = len(body)
    legacy_version = _u16(body, 0, end)
    pos = 2 + 32  # legacy_version, random
    pos = _skip_vector(body, pos, end, 1)  # legacy_session_id
    pos = _skip_vector(body, pos, end, 2)  # cipher_suites
    pos = _skip_vector(body, pos, end, 1)  # legacy_compression_methods
    server_name: str | None = None
    alpn: tuple[str, ...] = ()
    versions: tuple[int, ...] = (legacy_version,)
    if pos != end:
        extensions_end = _skip_vector(body, pos, end, 2)
        pos += 2
        while pos < extensions_end:
            kind = _u16(body, pos, extensions_end)
            payload_end = _skip_vector(body, pos + 2, extensions_end, 2)
            payload = pos + 4
            if kind == _EXT_SERVER_NAME:
                server_name = _server_name(body, payload, payload_end)
            elif kind == _EXT_ALPN:
                alpn = _alpn(body, payload, payload_end)
            elif kind == _EXT_SUPPORTED_VERSIONS:
                versions = _supported_versions(body, payload, payload_end)
            pos = payload_end
    return ClientHello(
        server_name=server_name,
        alpn_protocols=alpn,
        versions=tuple(_VERSION_NAMES.get(v, f"0x{v:04x}") for v in versions),
    )


def _server_name(data: bytes, pos: int, end: int) -> str | None:
    names_end = _skip_vector(data, pos, end, 2)
    pos += 2
    while pos < names_end:
        name_type = _u8(data, pos, names_end)
        name_end = _skip_vector(data, pos + 1, names_end, 2)
        if name_type == 0:  # host_name
            try:
                return data[pos + 3 : name_end].decode("ascii").lower()
            except UnicodeDecodeError:
                return None
        pos = name_end
    return None


def _alpn(data: bytes, pos: int, end: int) -> tuple[str, ...]:
    protocols_end = _skip_vector(data, pos, end, 2)
    pos += 2
    offered: list[str] = []
    while pos < protocols_end:
        protocol_end = _skip_vector(data, pos, protocols_end, 1)
        offered.append(data[pos + 1 : protocol_end].decode("latin-1"))
        pos = protocol_end
    return tuple(offered)


def _supported_versions(data: bytes, pos: int, end: int) -> tuple[int, ...]:
    versions_end = _skip_vector(data, pos, end, 1)
    pos += 1
    offered: list[int] = []
    while pos < versions_end:
        version = _u16(data, pos, versions_end)
        if version & _GREASE_MASK != _GREASE_PATTERN:
            offered.append(version)
        pos += 2
    return tuple(offered)
