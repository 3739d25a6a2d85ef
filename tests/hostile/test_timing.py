"""Timing: clients that are slow, silent, half there, or gone.

Slowloris holds connections open by saying nothing, or a byte at a time. Silent ones are
never shed for ``max_handshakes`` (they hold no handshake state): ``hello_timeout`` ends
them. Dripping ones are talking: the deadlines end them, and shedding when more than
``max_handshakes`` talk at once.
Clients that stop reading, half-close or reset must cost nothing but their own connection.
"""

from __future__ import annotations

import socket
import ssl
import struct
from typing import Final

import trio

from trio_accept import Reason

from .harness import SCALE, Case, Hostile, Limits, Target, drip, in_parallel, until_closed
from .tls import SansIOClient, client_hello


async def test_slowloris_silent(hostile: Hostile) -> None:
    # 150 connections that never send a byte, against max_handshakes 64: silent
    # connections do not count for it, so none is shed; the hello deadline ends each.
    count = 150 * SCALE

    async def attack(target: Target) -> None:
        async def one(_: int) -> None:
            async with await target.connect() as stream:
                await until_closed(stream)

        await in_parallel(count, count, one)

    limits = Limits(hello_timeout=1.0, max_handshakes=64)
    await hostile.run(
        Case("slowloris-silent", "timing", count, attack, {"timeout"}, limits=limits)
    )


async def test_slowloris_drip(hostile: Hostile, client_context: ssl.SSLContext) -> None:
    # 64 connections that send a real ClientHello a byte every 20 ms (it would take
    # ten seconds); the hello deadline is 1 s.
    hello = client_hello(client_context)
    count = 64 * SCALE

    async def attack(target: Target) -> None:
        async def one(_: int) -> None:
            async with await target.connect() as stream, trio.open_nursery() as nursery:
                nursery.start_soon(drip, stream, hello)
                await until_closed(stream)
                nursery.cancel_scope.cancel()

        await in_parallel(count, count, one)

    limits = Limits(hello_timeout=1.0)
    await hostile.run(
        Case("slowloris-drip", "timing", count, attack, {"evicted", "timeout"}, limits=limits)
    )


async def test_clients_that_stop_reading(hostile: Hostile, client_context: ssl.SSLContext) -> None:
    # Send a ClientHello, then never read: the server's flight sits unread, and the
    # handshake deadline ends the wait for the client's Finished (past max_handshakes,
    # in a soak, shedding ends some first). Others complete the handshake, send a
    # request and never read the answer. The clients hold on until the server has
    # counted them all, then leave -- those with an unread answer leave with a reset,
    # which breaks an established connection.
    hello = client_hello(client_context)
    mid_handshake, after_handshake = 32 * SCALE, 16 * SCALE

    async def attack(target: Target) -> None:
        async def one(index: int) -> None:
            async with await target.connect() as stream:
                if index < mid_handshake:
                    await stream.send_all(hello)
                else:
                    client = SansIOClient(target.client_context)
                    await handshake_by_hand(stream, client)
                    await stream.send_all(client.write(b"a request whose answer stays unread"))
                    # The answer has arrived, and stays in our receive buffer.
                    await trio.lowlevel.wait_readable(stream.socket)
                await target.settled.wait()

        await in_parallel(mid_handshake + after_handshake, 64, one)

    limits = Limits(handshake_timeout=1.5)
    outcome = await hostile.run(
        Case(
            "stop-reading",
            "timing",
            mid_handshake + after_handshake,
            attack,
            {"timeout", "evicted", "completed"},
            limits=limits,
            broken={"reset"},
        )
    )
    assert outcome.row.classified["completed"] == after_handshake
    assert outcome.stats.broken == {Reason.RESET: after_handshake}


async def handshake_by_hand(stream: trio.SocketStream, client: SansIOClient) -> None:
    """A real client handshake over a raw TCP stream, so the test decides what happens
    to the socket afterwards (no close_notify, a half-close, a reset)."""
    await stream.send_all(client.hello())
    while not client.done:
        data = await stream.receive_some()
        assert data, "the server closed during the handshake"
        answer = client.step(data)
        if answer:
            await stream.send_all(answer)


async def test_half_close(hostile: Hostile, client_context: ssl.SSLContext) -> None:
    # Half-close (shutdown(SHUT_WR)) at three stages: before the ClientHello, after it,
    # and after a completed handshake (without close_notify). The first two are an EOF
    # in the handshake; the third is a connection that ends raggedly in the handler.
    hello = client_hello(client_context)
    per_stage = 10 * SCALE

    async def attack(target: Target) -> None:
        async def one(index: int) -> None:
            stage = index % 3
            async with await target.connect() as stream:
                if stage == 1:
                    await stream.send_all(hello)
                elif stage == 2:
                    await handshake_by_hand(stream, SansIOClient(target.client_context))
                await stream.send_eof()
                await until_closed(stream)

        await in_parallel(3 * per_stage, 3 * per_stage, one)

    outcome = await hostile.run(
        Case("half-close", "timing", 3 * per_stage, attack, {"eof", "completed"}, broken={"eof"})
    )
    # The third stage completed its handshake, then broke the connection: a transport
    # EOF without close_notify, counted as such (not as a handler error).
    assert outcome.row.classified == {
        "eof": 2 * per_stage,
        "completed": per_stage,
        "broken eof": per_stage,
    }
    assert outcome.stats.handler_errors == 0


def reset(stream: trio.SocketStream) -> None:
    """Make the coming close a reset (RST) instead of a FIN."""
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


#: The stages at which a client resets its connection.
RESET_STAGES: Final = ("after-connect", "mid-hello", "after-hello", "after-finished", "mid-data")


async def test_reset_at_every_stage(hostile: Hostile, client_context: ssl.SSLContext) -> None:
    hello = client_hello(client_context)
    per_stage = 10 * SCALE

    async def attack(target: Target) -> None:
        async def one(index: int) -> None:
            stage = RESET_STAGES[index % len(RESET_STAGES)]
            stream = await target.connect()
            reset(stream)
            async with stream:
                if stage == "mid-hello":
                    await stream.send_all(hello[: len(hello) // 2])
                elif stage == "after-hello":
                    await stream.send_all(hello)
                elif stage in {"after-finished", "mid-data"}:
                    client = SansIOClient(target.client_context)
                    await handshake_by_hand(stream, client)
                    if stage == "mid-data":
                        record = client.write(b"half of this record is sent")
                        await stream.send_all(record[: len(record) // 2])

        await in_parallel(len(RESET_STAGES) * per_stage, 16, one)

    outcome = await hostile.run(
        Case(
            "reset",
            "timing",
            len(RESET_STAGES) * per_stage,
            attack,
            {"reset", "completed"},
            broken={"reset"},
        )
    )
    # Resets after the client's Finished and in the middle of a record happen once the
    # connection is established: the handshake completed, the connection broke.
    assert outcome.row.classified == {
        "reset": 3 * per_stage,
        "completed": 2 * per_stage,
        "broken reset": 2 * per_stage,
    }
    assert outcome.stats.handler_errors == 0
