"""TLS on the wire, for the hostile suite: real ClientHellos, records, crafted inputs, and a
sans-IO client whose flights a test can tamper with.

Everything here is bytes in, bytes out: no sockets, no clocks. The inputs are built from a
real client (Python's ``ssl`` over memory BIOs) wherever the shape of a real handshake
matters, so a "duplicated ClientHello" is a real ClientHello, twice.
"""

from __future__ import annotations

import contextlib
import random
import ssl
import struct
from collections.abc import Callable, Iterator
from typing import Final, final

from .harness import SCALE

#: The record header: content type, version (2), length (2).
RECORD_HEADER: Final = 5
HANDSHAKE: Final = 22
CHANGE_CIPHER_SPEC: Final = 20
ALERT: Final = 21
APPLICATION_DATA: Final = 23
#: An encrypted TLS 1.3 alert: 2 bytes of alert, 1 of inner content type, a 16-byte tag.
ENCRYPTED_ALERT_SIZE: Final = 19

#: Alert descriptions (RFC 8446 section 6) by number, for readable reports.
ALERT_NAMES: Final = {
    0: "close_notify",
    10: "unexpected_message",
    20: "bad_record_mac",
    22: "record_overflow",
    40: "handshake_failure",
    42: "bad_certificate",
    47: "illegal_parameter",
    48: "unknown_ca",
    50: "decode_error",
    51: "decrypt_error",
    70: "protocol_version",
    71: "insufficient_security",
    80: "internal_error",
    86: "inappropriate_fallback",
    109: "missing_extension",
    110: "unsupported_extension",
    112: "unrecognized_name",
    120: "no_application_protocol",
}


def client_hello(context: ssl.SSLContext, server_hostname: str = "localhost") -> bytes:
    """A real client's first flight (its ClientHello record) from ``context``."""
    return SansIOClient(context, server_hostname).hello()


def tls12_client(context: ssl.SSLContext) -> ssl.SSLContext:
    """A client context that trusts what ``context`` trusts and speaks TLS 1.2 at most."""
    cadata = "".join(
        ssl.DER_cert_to_PEM_cert(der) for der in context.get_ca_certs(binary_form=True)
    )
    tls12 = ssl.create_default_context(cadata=cadata)
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    return tls12


def records(data: bytes) -> Iterator[tuple[int, bytes]]:
    """Split ``data`` into TLS records ``(content type, payload)``; a tail that is not a
    whole record is yielded as ``(-1, tail)``."""
    offset = 0
    while offset < len(data):
        header = data[offset : offset + RECORD_HEADER]
        if len(header) < RECORD_HEADER:
            break
        (length,) = struct.unpack(">H", header[3:5])
        end = offset + RECORD_HEADER + length
        if end > len(data):
            break
        yield header[0], data[offset + RECORD_HEADER : end]
        offset = end
    if offset < len(data):
        yield -1, data[offset:]


def split_records(data: bytes) -> list[bytes]:
    """``data`` as a list of whole records (header included), for reordering them."""
    pieces: list[bytes] = []
    offset = 0
    for content_type, payload in records(data):
        assert content_type != -1, "not a sequence of whole records"
        size = RECORD_HEADER + len(payload)
        pieces.append(data[offset : offset + size])
        offset += size
    return pieces


def sslv2_hello(version: bytes, cipher_specs: bytes) -> bytes:
    """An SSLv2-format ClientHello (the 2-byte record header with the top bit set).

    ``version`` ``b"\\x00\\x02"`` is SSL 2.0 itself; ``b"\\x03\\x03"`` is the
    "SSLv2-compatible" hello old clients sent to offer TLS 1.2.
    """
    challenge = bytes(range(16))
    body = b"\x01" + version + struct.pack(">HHH", len(cipher_specs), 0, len(challenge))
    body += cipher_specs + challenge
    return struct.pack(">H", 0x8000 | len(body)) + body


#: Three SSLv2 cipher specs: ECDHE-RSA-AES128-GCM-SHA256, ECDHE-ECDSA-AES128-GCM-SHA256
#: (both from TLS, as a v2-compatible hello writes them) and the renegotiation SCSV.
SSLV2_CIPHER_SPECS: Final = b"\x00\xc0\x2f\x00\xc0\x2b\x00\x00\xff"

#: Ways to spoil a TLS 1.2 client's second flight (ClientKeyExchange, ChangeCipherSpec,
#: Finished -- one record each): reorder or duplicate its messages.
TAMPERINGS: Final[dict[str, Callable[[list[bytes]], list[bytes]]]] = {
    "change-cipher-spec-first": lambda flight: [flight[1], flight[0], *flight[2:]],
    "finished-before-change-cipher-spec": lambda flight: [flight[0], flight[2], flight[1]],
    "key-exchange-twice": lambda flight: [flight[0], *flight],
}

#: The HTTP/2 client connection preface (RFC 9113 section 3.4), prior knowledge over TCP.
HTTP2_PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def proxy_v1_header() -> bytes:
    """A PROXY protocol version 1 line, as HAProxy's ``send-proxy`` writes it."""
    return b"PROXY TCP4 192.0.2.7 192.0.2.1 56324 443\r\n"


def proxy_v2_header() -> bytes:
    """A PROXY protocol version 2 header (``send-proxy-v2``): TCP over IPv4."""
    signature = b"\r\n\r\n\x00\r\nQUIT\n"
    addresses = bytes([192, 0, 2, 7, 192, 0, 2, 1]) + struct.pack(">HH", 56324, 443)
    return signature + b"\x21\x11" + struct.pack(">H", len(addresses)) + addresses


def garbage_random_inputs() -> list[bytes]:
    """The random-bytes case's seeded random inputs (the yardstick runs them all)."""
    return random_inputs(seed=8, count=48 * SCALE, max_size=3000)


def random_inputs(seed: int, count: int, max_size: int) -> list[bytes]:
    """``count`` seeded random byte strings of 1 to ``max_size`` bytes."""
    generator = random.Random(seed)
    return [generator.randbytes(generator.randint(1, max_size)) for _ in range(count)]


@final
class SansIOClient:
    """A TLS client over memory BIOs: the caller carries its bytes, and may tamper.

    Args:
        context: The client's :class:`ssl.SSLContext`.
        server_hostname: For SNI and certificate checks.
    """

    def __init__(self, context: ssl.SSLContext, server_hostname: str = "localhost") -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(
            self._incoming, self._outgoing, server_hostname=server_hostname
        )
        self.done = False

    def hello(self) -> bytes:
        """Start the handshake: the ClientHello."""
        return self.step(b"")

    def step(self, received: bytes) -> bytes:
        """Feed what the server sent; return what the client has to send now (maybe
        ``b""``: it needs more). Sets :attr:`done` once the handshake completed."""
        if received:
            self._incoming.write(received)
        if not self.done:
            try:
                self._ssl.do_handshake()
            except ssl.SSLWantReadError:
                pass
            else:
                self.done = True
        return self._outgoing.read()

    def write(self, data: bytes) -> bytes:
        """Encrypt application data (after the handshake); returns the records."""
        self._ssl.write(data)
        return self._outgoing.read()

    def close(self) -> bytes:
        """Send close_notify (after the handshake); returns the alert's record."""
        # The server's close_notify has not come: nobody waits for it here.
        with contextlib.suppress(ssl.SSLWantReadError):
            self._ssl.unwrap()
        return self._outgoing.read()

    def read(self, received: bytes) -> bytes:
        """Decrypt what the server sent: the application data in it (``b""`` if none)."""
        self._incoming.write(received)
        data = b""
        while True:
            try:
                chunk = self._ssl.read(65536)
            except ssl.SSLWantReadError:
                return data
            if not chunk:
                return data
            data += chunk


def describe(data: bytes) -> list[str]:
    """What a server sent, in words, record by record.

    ``server flight`` stands for the records of a handshake (consecutive ones merged:
    their sizes vary with the signature, so they are not compared); ``alert fatal
    decode_error`` for a plaintext alert; ``encrypted alert`` for an alert under
    handshake or traffic keys (TLS 1.3's are disguised as 19-byte application data);
    ``HTTP/1.1 400 Bad Request`` for our answer to plain HTTP.
    """
    if data.startswith(b"HTTP/"):
        return [data.split(b"\r\n", 1)[0].decode("ascii", "replace")]
    words: list[str] = []
    for content_type, payload in records(data):
        if content_type == ALERT and len(payload) == 2:  # level, description
            level = {1: "warning", 2: "fatal"}.get(payload[0], str(payload[0]))
            word = f"alert {level} {ALERT_NAMES.get(payload[1], str(payload[1]))}"
        elif content_type == ALERT or (
            content_type == APPLICATION_DATA and len(payload) == ENCRYPTED_ALERT_SIZE
        ):
            word = "encrypted alert"
        elif content_type in {HANDSHAKE, CHANGE_CIPHER_SPEC, APPLICATION_DATA}:
            word = "server flight"
        else:
            word = f"{len(payload)} other bytes"
        if not (words and words[-1] == word == "server flight"):
            words.append(word)
    return words
