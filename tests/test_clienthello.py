"""The ClientHello reader: real ClientHellos from Python's ``ssl``, chopped and re-framed."""

from __future__ import annotations

import itertools
import ssl
import struct

import pytest
import trustme
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_accept._clienthello import ClientHello, ClientHelloReader, HelloStatus


def client_hello(
    ca: trustme.CA,
    *,
    server_hostname: str | None = "Example.COM",
    alpn: list[str] | None = None,
    maximum_version: ssl.TLSVersion | None = None,
) -> bytes:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    if server_hostname is None:
        context.check_hostname = False
    if alpn:
        context.set_alpn_protocols(alpn)
    if maximum_version is not None:
        context.maximum_version = maximum_version
    outgoing = ssl.MemoryBIO()
    obj = context.wrap_bio(ssl.MemoryBIO(), outgoing, server_hostname=server_hostname)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def read_all(*chunks: bytes) -> ClientHelloReader:
    reader = ClientHelloReader()
    for chunk in chunks:
        reader.feed(chunk)
    return reader


def reframe(hello: bytes, fragment: int) -> bytes:
    """The same handshake message, split over records of ``fragment`` bytes."""
    message = hello[5:]
    records = [
        b"\x16\x03\x01" + struct.pack("!H", len(part)) + part
        for part in (message[i : i + fragment] for i in range(0, len(message), fragment))
    ]
    return b"".join(records)


def test_reads_sni_alpn_and_versions(ca: trustme.CA) -> None:
    reader = read_all(client_hello(ca, alpn=["h2", "http/1.1"]))
    assert reader.status is HelloStatus.PARSED
    assert reader.hello == ClientHello(
        server_name="example.com",
        alpn_protocols=("h2", "http/1.1"),
        versions=("TLSv1.3", "TLSv1.2"),
    )


def test_without_sni_or_alpn(ca: trustme.CA) -> None:
    reader = read_all(
        client_hello(ca, server_hostname=None, maximum_version=ssl.TLSVersion.TLSv1_2)
    )
    assert reader.hello is not None
    assert reader.hello.server_name is None
    assert reader.hello.alpn_protocols == ()
    assert reader.hello.versions == ("TLSv1.2",)  # from the legacy field


@settings(max_examples=50, deadline=None)
@given(data=st.data(), fragment=st.integers(1, 600))
def test_any_chunking_and_record_framing_gives_the_same_facts(
    ca: trustme.CA, data: st.DataObject, fragment: int
) -> None:
    original = client_hello(ca, alpn=["h2"])
    expected = read_all(original).hello
    framed = reframe(original, fragment)
    cuts = sorted(data.draw(st.sets(st.integers(1, len(framed) - 1), max_size=20)))
    points = [0, *cuts, len(framed)]
    reader = ClientHelloReader()
    for start, end in itertools.pairwise(points):
        assert reader.status is HelloStatus.NEED_DATA
        reader.feed(framed[start:end])
    assert reader.status is HelloStatus.PARSED
    assert reader.hello == expected


def test_one_byte_at_a_time_keeps_only_a_partial_record(ca: trustme.CA) -> None:
    hello = reframe(client_hello(ca), 64)
    reader = ClientHelloReader()
    for index in range(len(hello)):
        reader.feed(hello[index : index + 1])
        # Never more than one record's worth buffered: complete records are consumed.
        assert len(reader._buffer) < 5 + 64  # pyright: ignore[reportPrivateUsage]
    assert reader.status is HelloStatus.PARSED


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\n",
        b"\x80\x2e\x01\x03\x01",  # SSLv2-style ClientHello header
        b"\x17\x03\x03\x00\x05hello",  # application data first
        b"\x16\x02\x00\x00\x05",  # major version 2
        b"\x16\x03\x01\x00\x00",  # empty fragment
        b"\x16\x03\x01\xff\xff",  # longer than any fragment may be
        b"\x16\x03\x01\x00\x04\x02\x00\x00\x00",  # a ServerHello, not a ClientHello
        b"\x16\x03\x01\x00\x04\x01\xff\xff\xff",  # a 16 MiB ClientHello
        b"\x16\x03\x01\x00\x08\x01\x00\x00\x04\x03\x03\x00\x00",  # truncated body
    ],
)
def test_gives_up_on_what_is_not_a_client_hello(data: bytes) -> None:
    reader = read_all(data)
    assert reader.status is HelloStatus.UNPARSED
    assert reader.hello is None
    assert reader.head == data[:16]


def test_keeps_the_first_bytes_only() -> None:
    reader = read_all(b"OPTIONS ", b"* HTTP/1.1\r\nHost: x\r\n")
    assert reader.head == b"OPTIONS * HTTP/1"


def test_ignores_input_after_the_verdict(ca: trustme.CA) -> None:
    reader = read_all(client_hello(ca))
    hello = reader.hello
    assert reader.feed(b"\x15\x03\x03\x00\x02\x01\x00") is HelloStatus.PARSED
    assert reader.hello is hello
    assert reader.feed(b"") is HelloStatus.PARSED


def handcrafted(extensions: bytes | None) -> bytes:
    body = b"\x03\x03" + b"\x00" * 32 + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
    if extensions is not None:
        body += struct.pack("!H", len(extensions)) + extensions
    message = b"\x01" + len(body).to_bytes(3) + body
    return b"\x16\x03\x01" + struct.pack("!H", len(message)) + message


def extension(kind: int, payload: bytes) -> bytes:
    return struct.pack("!HH", kind, len(payload)) + payload


def test_without_extensions() -> None:
    reader = read_all(handcrafted(None))
    assert reader.hello == ClientHello(server_name=None, alpn_protocols=(), versions=("TLSv1.2",))


def test_grease_versions_are_skipped_and_unknown_versions_named() -> None:
    versions = b"\x06" + b"\x0a\x0a" + b"\x03\x04" + b"\x7f\x1c"
    reader = read_all(handcrafted(extension(43, versions)))
    assert reader.hello is not None
    assert reader.hello.versions == ("TLSv1.3", "0x7f1c")


def test_non_ascii_server_name_is_dropped() -> None:
    name = "bücher.example".encode()
    entry = b"\x00" + struct.pack("!H", len(name)) + name
    reader = read_all(handcrafted(extension(0, struct.pack("!H", len(entry)) + entry)))
    assert reader.status is HelloStatus.PARSED
    assert reader.hello is not None
    assert reader.hello.server_name is None


def test_server_name_list_without_host_name() -> None:
    entry = b"\x01" + b"\x00\x03abc"  # a name type that is not host_name
    reader = read_all(handcrafted(extension(0, struct.pack("!H", len(entry)) + entry)))
    assert reader.hello is not None
    assert reader.hello.server_name is None


def test_extension_overrunning_its_vector_is_malformed() -> None:
    reader = read_all(handcrafted(struct.pack("!HH", 0, 50) + b"\x00"))
    assert reader.status is HelloStatus.UNPARSED


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_never_raises(data: bytes) -> None:
    reader = ClientHelloReader()
    status = reader.feed(b"\x16\x03\x01" + data)
    assert status in HelloStatus
