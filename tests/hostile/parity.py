"""The yardstick: the same input to our listener and to ``openssl s_server``, side by side.

Our TLS is OpenSSL's, so on any malformed input our *reaction* -- which alert we send, or
none, and when we close -- should be ``s_server``'s, configured with the same certificate,
cipher suites and groups (:func:`s_server_options`). A reaction (:class:`Reaction`) is
observed the same way on both:

1. connect, and send the input (a *probe*: plain bytes, bytes in pieces, or a real
   handshake tampered with on the way);
2. read what the server sends until it closes -- or until :data:`QUIET_WINDOW` passes
   with the connection still open: the server *waits for more*;
3. if it waits, shut down our sending side (EOF) and read its reaction to that.

What the server sent is described record by record (``tls.describe``): alerts byte for
byte, the records of a server flight merged (their sizes vary with the signature).
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, final

import trio

from trio_accept import PROFILES
from trio_accept._config import SESSION_TICKETS

from .tls import SansIOClient, describe, split_records

#: How long a server that has said nothing more is given before we conclude that it
#: waits for more input. Nothing is expected to happen in it: every reaction compared
#: here arrives within milliseconds of its cause, on both servers.
QUIET_WINDOW: Final = 1.0
#: A safety net for one probe (real clock).
PROBE_GUARD: Final = 20.0

#: A probe: sends its input on a fresh connection; returns what it already read of the
#: server's answer on the way (a tampered handshake reads the server's flight).
Probe = Callable[[trio.SocketStream], Awaitable[bytes]]


def s_server_options(context: ssl.SSLContext, profile: str = "intermediate") -> list[str]:
    """``openssl s_server`` options for the settings ``trio_accept.server_context`` gives
    ``context``: the profile's versions, TLS 1.2 cipher suites and group, OpenSSL's bug
    workarounds (Python sets ``OP_ALL``), no renegotiation, no DHE (Python loads no DH
    parameters), the same number of TLS 1.3 tickets. Checks that ``context`` has them."""
    chosen = PROFILES[profile]
    assert context.minimum_version == chosen.minimum_version
    assert context.options & ssl.OP_ALL == ssl.OP_ALL
    assert context.options & ssl.OP_NO_RENEGOTIATION
    assert not context.options & ssl.OP_CIPHER_SERVER_PREFERENCE
    assert context.num_tickets == SESSION_TICKETS
    assert chosen.ciphers is not None
    return [
        "-min_protocol", "TLSv1.2" if chosen.minimum_version is ssl.TLSVersion.TLSv1_2
        else "TLSv1.3",
        "-cipher", chosen.ciphers,
        "-groups", chosen.group,
        "-bugs",
        "-no_renegotiation",
        "-no_dhe",
        "-num_tickets", str(SESSION_TICKETS),
    ]  # fmt: skip


@final
@dataclass(frozen=True, slots=True)
class Reaction:
    """How a server reacted to a probe.

    Attributes:
        answer: What it sent while we kept the connection open (``tls.describe``).
        end: ``closes`` (a FIN), ``resets`` (an RST), or ``waits`` (still open after
            :data:`QUIET_WINDOW`).
        after_eof: When it waited: what it sent once we shut down our side.
        end_after_eof: When it waited: how it ended then.
    """

    answer: tuple[str, ...]
    end: str
    after_eof: tuple[str, ...] = ()
    end_after_eof: str = ""

    def __str__(self) -> str:
        text = f"{', '.join(self.answer) or 'nothing'}; {self.end}"
        if self.end == "waits":
            text += f"; on EOF: {', '.join(self.after_eof) or 'nothing'}; {self.end_after_eof}"
        return text


async def read_into(stream: trio.abc.ReceiveStream, buffer: bytearray) -> str:
    """Read until the peer closes, into ``buffer``: returns ``closes`` or ``resets``."""
    try:
        while data := await stream.receive_some():
            buffer += data
    except trio.BrokenResourceError:
        return "resets"
    return "closes"


async def react(port: int, probe: Probe) -> Reaction:
    """Run ``probe`` against the server on ``port``; see the module docstring."""
    with trio.fail_after(PROBE_GUARD):
        async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
            answer = bytearray(await probe(stream))
            end = "waits"
            with trio.move_on_after(QUIET_WINDOW):
                end = await read_into(stream, answer)
            if end != "waits":
                return Reaction(tuple(describe(bytes(answer))), end)
            after = bytearray()
            try:
                await stream.send_eof()
            except trio.BrokenResourceError:
                end_after = "resets"
            else:
                end_after = await read_into(stream, after)
            return Reaction(
                tuple(describe(bytes(answer))), end, tuple(describe(bytes(after))), end_after
            )


def sending(data: bytes, piece: int = 0) -> Probe:
    """A probe that sends ``data``, in ``piece``-byte writes if asked (TCP_NODELAY is on,
    so they leave as separate segments)."""

    async def probe(stream: trio.SocketStream) -> bytes:
        size = piece or len(data) or 1
        for start in range(0, len(data), size):
            await stream.send_all(data[start : start + size])
        return b""

    return probe


def tampered_second_flight(
    context: ssl.SSLContext, tamper: Callable[[list[bytes]], list[bytes]]
) -> Probe:
    """A probe that runs a real handshake up to the client's second flight and sends
    that flight's records as ``tamper`` rearranges them."""

    async def probe(stream: trio.SocketStream) -> bytes:
        client = SansIOClient(context)
        await stream.send_all(client.hello())
        received = b""
        flight = b""
        while not flight:
            data = await stream.receive_some()
            assert data, "the server closed before its first flight"
            received += data
            flight = client.step(data)
        await stream.send_all(b"".join(tamper(split_records(flight))))
        return received

    return probe
