"""CPU floods: many handshakes from one source, as fast as it can make them.

A full handshake costs the server about a millisecond of CPU (key exchange and signature),
and a client can make it pay that with one recorded ClientHello: no cryptography on its
side at all. What keeps other clients served is that every handshake runs in its own task
(the accept loop never waits for one, so the flood is interleaved with everyone else),
and ``max_handshakes``: beyond it, the handshake that made the least progress is shed.
"""

from __future__ import annotations

import ssl

import trio

from .harness import SCALE, Case, Hostile, Limits, Target, in_parallel, until_closed
from .tls import client_hello


async def test_hello_flood(hostile: Hostile, client_context: ssl.SSLContext) -> None:
    # 400 recorded ClientHellos, 64 connections at a time, each left waiting for a
    # Finished that never comes: the server does all the expensive work of every one.
    # max_handshakes 32 bounds what they hold; shedding and the handshake deadline
    # free the slots.
    hello = client_hello(client_context)
    count = 400 * SCALE
    most_in_flight = 0

    async def attack(target: Target) -> None:
        async def one(_: int) -> None:
            nonlocal most_in_flight
            async with await target.connect() as stream:
                await stream.send_all(hello)
                stats = target.server.stats
                # max_handshakes bounds talking handshakes; silent ones are not shed for them.
                talking = stats.handshakes_in_flight - stats.silent
                most_in_flight = max(most_in_flight, talking)
                await until_closed(stream)

        await in_parallel(count, 64, one)
        target.notes.append(f"at most {most_in_flight} handshakes in flight")

    limits = Limits(max_handshakes=32, handshake_timeout=2.0)
    await hostile.run(
        Case("hello-flood", "cpu", count, attack, {"evicted", "timeout"}, limits=limits)
    )
    assert most_in_flight <= 32


async def test_handshake_flood(hostile: Hostile) -> None:
    # 200 complete handshakes (real clients: they pay for their side too), 32 at a
    # time, against the default-sized admission window: all are served, and so is
    # everyone else.
    count = 200 * SCALE

    async def attack(target: Target) -> None:
        async def one(_: int) -> None:
            stream = trio.SSLStream(
                await target.connect(), target.client_context, server_hostname="localhost"
            )
            async with stream:
                await stream.do_handshake()

        await in_parallel(count, 32, one)

    await hostile.run(Case("handshake-flood", "cpu", count, attack, {"completed"}))
