"""Faults: handlers that raise, cancellation at every checkpoint of a handshake, and
shutdown -- graceful and hard -- while hostile and well-behaved clients are in flight."""

from __future__ import annotations

import ssl
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, final

import pytest
import trio
import trio.testing

import trio_accept
from trio_accept import HandshakeError, TLSStream

from .harness import (
    CASE_GUARD,
    SCALE,
    Case,
    Hostile,
    Limits,
    Snapshot,
    Tally,
    Target,
    drip,
    in_parallel,
    until_closed,
)
from .report import Row
from .tls import SansIOClient, client_hello, tls12_client

if TYPE_CHECKING:
    from .report import Report

# -- handler exceptions ----------------------------------------------------------------


async def test_handler_exceptions(hostile: Hostile) -> None:
    # 20 clients send "boom": their handler raises. Each failure is logged and counted,
    # and closes only its own connection, with close_notify.
    count = 20 * SCALE

    async def handler(stream: TLSStream) -> None:
        async for data in stream:
            if data.startswith(b"boom"):
                raise RuntimeError("the handler fails on purpose")
            await stream.send_all(data)

    async def attack(target: Target) -> None:
        async def one(_: int) -> None:
            stream = trio.SSLStream(
                await target.connect(), target.client_context, server_hostname="localhost"
            )
            async with stream:
                await stream.send_all(b"boom\n")
                assert await stream.receive_some() == b""  # close_notify, not a reset

        await in_parallel(count, count, one)

    outcome = await hostile.run(
        Case("handler-exceptions", "faults", count, attack, {"completed"}, handler=handler)
    )
    assert outcome.stats.handler_errors == count


# -- cancellation at every checkpoint --------------------------------------------------


@final
class PumpedPeer:
    """The client end of an in-memory transport, run synchronously inside it.

    Whatever the server sends is fed at once to a real client (a :class:`SansIOClient`)
    and the client's answer is queued for the server to receive. So a handshake over
    :attr:`transport` is one task with nobody to wait for: it passes through the same
    checkpoints, in the same order, on every run -- which is what lets a test cancel
    it at the i-th one.

    Args:
        context: The client's context.
        first_flight: What the client sends first; ``None`` for its ClientHello. Any
            other bytes make a client that only says that (plain HTTP, say).
    """

    def __init__(self, context: ssl.SSLContext, first_flight: bytes | None = None) -> None:
        self.client = SansIOClient(context) if first_flight is None else None
        self.to_server = trio.testing.MemoryReceiveStream(close_hook=self._receive_closed)
        self.from_server = trio.testing.MemorySendStream(
            send_all_hook=self._pump, close_hook=self._send_closed
        )
        self.transport = trio.StapledStream(self.from_server, self.to_server)
        self.send_closed = self.receive_closed = False
        hello = self.client.hello() if self.client is not None else first_flight
        assert hello is not None
        self.to_server.put_data(hello)

    @property
    def closed(self) -> bool:
        return self.send_closed and self.receive_closed

    async def _pump(self) -> None:
        data = self.from_server.get_data_nowait()
        answer = self.client.step(bytes(data)) if self.client is not None and data else b""
        if answer:
            self.to_server.put_data(answer)

    def _send_closed(self) -> None:
        # The server shut its side: the client closes too (this ends a lingering close).
        self.send_closed = True
        self.to_server.put_eof()

    def _receive_closed(self) -> None:
        self.receive_closed = True


@final
@dataclass(eq=False)  # instruments are kept in a set: hashed by identity
class StepCounter(trio.abc.Instrument):
    """Counts the steps of one task while :attr:`counting` (a step ends at each
    checkpoint where the task yields), and cancels ``scope`` right after step
    ``cancel_at``: the task is suspended at that checkpoint, and resumes into
    :exc:`trio.Cancelled`."""

    scope: trio.CancelScope
    cancel_at: int | None = None
    task: trio.lowlevel.Task | None = None
    counting: bool = False
    steps: int = 0

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self.task and self.counting:
            self.steps += 1
            if self.steps == self.cancel_at:
                self.scope.cancel()


@dataclass
class Run:
    """One handshake over a :class:`PumpedPeer`, cancelled at one step or not at all."""

    outcome: str = "unfinished"
    steps: int = 0
    transport_closed: bool = False
    leaks: dict[str, int] = field(default_factory=dict[str, int])


async def handshake_cancelled_at(
    server_context: ssl.SSLContext, peer: PumpedPeer, cancel_at: int | None
) -> Run:
    run = Run()
    before = Snapshot.take()
    scope = trio.CancelScope()
    counter = StepCounter(scope, cancel_at)

    async def handshake() -> None:
        counter.task = trio.lowlevel.current_task()
        stream = None
        with scope:
            counter.counting = True  # the steps of accept(), and only those
            try:
                stream = await trio_accept.accept(peer.transport, server_context)
            except HandshakeError as error:
                run.outcome = error.reason.value
            else:
                run.outcome = "completed"
            finally:
                counter.counting = False
        if scope.cancelled_caught:
            run.outcome = "cancelled"
        if stream is not None:
            await trio.aclose_forcefully(stream)

    trio.lowlevel.add_instrument(counter)
    try:
        with trio.fail_after(CASE_GUARD):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(handshake)
    finally:
        trio.lowlevel.remove_instrument(counter)
    run.steps = counter.steps
    run.transport_closed = peer.closed
    run.leaks = Snapshot.take().leaks_since(before)
    return run


#: The handshakes cancelled at each of their checkpoints: a TLS 1.3 and a TLS 1.2 client,
#: and a plain-HTTP client (whose refusal sends the 400 answer and lingers).
PATHS: Final = ("tls1.3", "tls1.2", "plain-http")


async def test_cancellation_at_every_checkpoint(
    hostile_server_context: ssl.SSLContext, client_context: ssl.SSLContext, report: Report
) -> None:
    runs: list[Run] = []
    checkpoints: dict[str, int] = {}
    for path in PATHS:
        context = client_context
        first_flight = None
        if path == "tls1.2":
            context = tls12_client(client_context)
        elif path == "plain-http":
            first_flight = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"

        def peer(
            context: ssl.SSLContext = context, first: bytes | None = first_flight
        ) -> PumpedPeer:
            return PumpedPeer(context, first)

        # A run without cancellation counts the steps; then one run per step.
        whole = await handshake_cancelled_at(hostile_server_context, peer(), None)
        assert whole.outcome == ("plain-http" if path == "plain-http" else "completed")
        checkpoints[path] = whole.steps
        for cancel_at in range(1, whole.steps + 1):
            run = await handshake_cancelled_at(hostile_server_context, peer(), cancel_at)
            runs.append(run)
            # Cancelled at any of its checkpoints, accept() lets Cancelled out: never
            # a HandshakeError, never swallowed, never a half-made stream.
            assert run.outcome == "cancelled", (path, cancel_at, run)
            assert run.transport_closed, (path, cancel_at)
            assert not run.leaks, (path, cancel_at, run.leaks)
    outcomes = Counter(run.outcome for run in runs)
    leaks: Counter[str] = Counter()
    for run in runs:
        leaks.update(run.leaks)
    report.add(
        Row(
            case="cancel-every-checkpoint",
            group="faults",
            connections=len(runs),
            well_behaved=(0, 0),
            classified=dict(outcomes),
            leaks=dict(leaks),
            note="checkpoints per handshake: "
            + ", ".join(f"{path} {steps}" for path, steps in checkpoints.items()),
        )
    )
    assert outcomes == {"cancelled": sum(checkpoints.values())}


# -- shutdown while everything is in flight --------------------------------------------

#: The hostile load held in flight when the server shuts down: connections that say
#: nothing, drip a ClientHello, sent part of one, sent one and stopped reading,
#: flooded ClientHellos, or spoke plain HTTP and hold on after the 400 answer (the
#: server lingers for their close: a failure still being told to the client).
IN_FLIGHT: Final = {
    "silent": 16,
    "drip": 8,
    "truncated": 8,
    "stop-reading": 8,
    "flood": 32,
    "lingering-http": 4,
}
#: Established well-behaved clients: their handler stops when the shutdown begins
#: ("polite"), or ignores it and is cancelled at the end of the grace period ("stubborn").
ESTABLISHED: Final = {"polite": 8, "stubborn": 4}
SHUTDOWN_GRACE: Final = 1.0
#: How a shutdown classifies what is in flight.
SHED: Final = {
    "shutdown": sum(IN_FLIGHT.values()) - IN_FLIGHT["lingering-http"],
    "plain-http": IN_FLIGHT["lingering-http"],
}


async def polite_or_stubborn(stream: TLSStream) -> None:
    """Echo. A client that says "polite" first gets a handler that returns as soon as a
    shutdown begins; any other, one that carries on until it is cancelled."""
    server = trio_accept.current_server()
    first = await stream.receive_some()
    await stream.send_all(first)
    async with trio.open_nursery() as nursery:
        if first.startswith(b"polite"):

            async def stop_at_shutdown() -> None:
                await server.wait_shutting_down()
                nursery.cancel_scope.cancel()

            nursery.start_soon(stop_at_shutdown)
        async for data in stream:
            await stream.send_all(data)
        nursery.cancel_scope.cancel()


async def shutdown_under_load(
    name: str,
    server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
    report: Report,
    *,
    hard: bool,
) -> tuple[Row, trio_accept.ServerStats, Counter[str]]:
    """Bring everything in :data:`IN_FLIGHT` and :data:`ESTABLISHED` up, then shut the
    server down gracefully or hard (cancellation); report how every connection ended."""
    before = Snapshot.take()
    tally = Tally()
    hello = client_hello(client_context)
    hostile_count = sum(IN_FLIGHT.values())
    ended: Counter[str] = Counter()  # how the well-behaved clients' connections ended
    echoed = 0
    all_echoed = trio.Event()
    server_gone = trio.Event()

    async def handler(stream: TLSStream) -> None:
        tally.completed(stream)
        await polite_or_stubborn(stream)

    async def established(kind: str, port: int) -> None:
        nonlocal echoed
        transport = await trio.open_tcp_stream("127.0.0.1", port)
        tally.legit_ports.add(transport.socket.getsockname()[1])
        stream = trio.SSLStream(transport, client_context, server_hostname="localhost")
        async with stream:
            await stream.send_all(kind.encode())
            assert await stream.receive_some() == kind.encode()
            echoed += 1
            if echoed == sum(ESTABLISHED.values()):
                all_echoed.set()
            try:
                rest = await stream.receive_some()
            except trio.BrokenResourceError:
                ended["ragged EOF or reset"] += 1
            else:
                ended["close_notify" if rest == b"" else "unexpected data"] += 1

    async def hostile(kind: str, port: int) -> None:
        async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
            if kind == "drip":
                await drip(stream, hello)  # until the server closes it
            elif kind == "truncated":
                await stream.send_all(hello[:100])
            elif kind in {"stop-reading", "flood"}:
                await stream.send_all(hello)
            elif kind == "lingering-http":
                await stream.send_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
                await until_closed(stream)  # the 400 answer, then the server's EOF
            if kind in {"stop-reading", "lingering-http"}:
                await server_gone.wait()
            await until_closed(stream)

    # Nothing is shed before the shutdown: it finds all of them in flight.
    limits = Limits(
        hello_timeout=30,
        handshake_timeout=30,
        close_timeout=30,
        max_handshakes=256,
        shutdown_grace=SHUTDOWN_GRACE,
    )
    server: trio_accept.Server | None = None
    port = 0
    with trio.fail_after(CASE_GUARD):
        async with trio.open_nursery() as clients:
            with trio.CancelScope() as hard_stop:
                async with trio_accept.open_server(
                    handler,
                    host="127.0.0.1",
                    ssl_context=server_context,
                    on_handshake_error=tally.failed,
                    **limits.options(),
                ) as running:
                    server = running
                    port = server.addresses[0][1]
                    for kind, count in ESTABLISHED.items():
                        for _ in range(count):
                            clients.start_soon(established, kind, port)
                    for kind, count in IN_FLIGHT.items():
                        for _ in range(count):
                            clients.start_soon(hostile, kind, port)
                    await all_echoed.wait()
                    # Once every task is blocked, the server has accepted and read all
                    # there is to read (loopback delivers during send()).
                    await trio.testing.wait_all_tasks_blocked()
                    in_flight = server.stats
                    assert in_flight.accepted == hostile_count + sum(ESTABLISHED.values())
                    assert in_flight.handshakes_in_flight == hostile_count
                    assert in_flight.failed == {}
                    if hard:
                        hard_stop.cancel()
                    else:
                        await server.shutdown()
            server_gone.set()
            if not hard:
                with pytest.raises(OSError, match="all attempts to connect"):
                    await trio.open_tcp_stream("127.0.0.1", port)
    assert server is not None
    stats = server.stats
    leaks = Snapshot.take().leaks_since(before)
    # A graceful shutdown owes every established client a close_notify; a hard stop
    # owes it only an end (no hang).
    well_ended = ended.total() if hard else ended["close_notify"]
    row = Row(
        case=name,
        group="faults",
        connections=hostile_count,
        well_behaved=(well_ended, sum(ESTABLISHED.values())),
        classified=dict(tally.hostile),
        leaks=leaks,
        note="established clients' connections ended with: "
        + ", ".join(f"{how} x{count}" for how, count in ended.items()),
    )
    report.add(row)
    assert not leaks, leaks
    assert {reason.value: n for reason, n in stats.failed.items()} == tally.failures()
    return row, stats, ended


async def test_graceful_shutdown_under_load(
    hostile_server_context: ssl.SSLContext, client_context: ssl.SSLContext, report: Report
) -> None:
    # Every handshake in flight is shed (reason shutdown; one that had failed already
    # keeps its reason), polite handlers return at once, stubborn ones are cancelled
    # after the grace period, and every established client gets its close_notify. New
    # connections are refused.
    row, stats, ended = await shutdown_under_load(
        "graceful-shutdown", hostile_server_context, client_context, report, hard=False
    )
    assert row.classified == SHED
    assert ended == {"close_notify": sum(ESTABLISHED.values())}
    assert stats.closed == sum(ESTABLISHED.values())


async def test_hard_stop_under_load(
    hostile_server_context: ssl.SSLContext, client_context: ssl.SSLContext, report: Report
) -> None:
    # Cancellation: everything stops at once. No close_notify (a hard stop does not
    # wait for a peer), but every connection is closed and counted, and nothing is
    # left behind.
    row, _, ended = await shutdown_under_load(
        "hard-stop", hostile_server_context, client_context, report, hard=True
    )
    assert row.classified == SHED
    assert ended.total() == sum(ESTABLISHED.values())
