"""Handlers for test servers: an echo, and a tiny HTTP/1.1 responder for HTTP clients."""

from __future__ import annotations

from typing import Final

import trio

from .._stream import TLSStream

#: The largest request head the HTTP responder reads: far more than any test client sends.
MAX_REQUEST_HEAD: Final = 65536


async def echo(stream: TLSStream) -> None:
    """Send back whatever arrives, until the client closes."""
    try:
        async for data in stream:
            await stream.send_all(data)
    except trio.BrokenResourceError:
        pass  # a client that leaves without close_notify: recorded, not an error here


async def http_responder(stream: TLSStream) -> None:
    """Answer one HTTP/1.1 request with ``200 OK`` and close.

    The body is ``"{method} {path}\\n"`` so a test can see what arrived; the request
    body, if any (``Content-Length``), is read and discarded.
    """
    head = b""
    while b"\r\n\r\n" not in head:
        data = await stream.receive_some()
        if not data or len(head) > MAX_REQUEST_HEAD:
            return
        head += data
    head, _, body = head.partition(b"\r\n\r\n")
    request_line, *header_lines = head.decode("latin-1").split("\r\n")
    method, path, *_ = [*request_line.split(" "), "", ""]
    length = 0
    for line in header_lines:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length" and value.strip().isdigit():
            length = int(value.strip())
    while len(body) < length:
        data = await stream.receive_some()
        if not data:
            return
        body += data
    answer = f"{method} {path}\n".encode("latin-1")
    await stream.send_all(
        b"HTTP/1.1 200 OK\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: %d\r\n"
        b"Connection: close\r\n"
        b"\r\n%s" % (len(answer), answer)
    )
