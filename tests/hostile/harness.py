"""The hostile-client harness: a real listener, a steady stream of well-behaved clients, the
hostile load, and the outcome checks.

A case (:meth:`Hostile.run`) goes like this:

1. Take a :class:`Snapshot` of tasks, threads and file descriptors.
2. Start a real listener (:func:`trio_accept.open_server` on 127.0.0.1, port 0) with the
   library's default TLS settings and the case's explicit :class:`Limits`.
3. Measure the idle server: :data:`BASELINE_CLIENTS` well-behaved exchanges, one after
   another. Every well-behaved client of the case must then complete within
   ``max(DEADLINE_FLOOR, DEADLINE_FACTOR * idle latency)`` -- an outcome deadline that
   shows nobody was starved, not a timing assertion.
4. Run the hostile load and, at the same time, :data:`STREAMS` loops of well-behaved
   clients (each a real TLS client: trio's ``SSLStream`` over TCP, handshake, echo,
   close_notify), until the server has accounted for every hostile connection -- failed
   with a reason, or completed -- as its ``on_handshake_error`` hook and handler report it.
5. Shut the server down gracefully, compare the counters in ``server.stats`` with what the
   hook saw, take a second snapshot, and report a :class:`~report.Row`.

The outcome is then asserted: every well-behaved client completed, every hostile connection
was classified with a reason the case allows, and nothing was left behind.

Everything is bounded: counts are fixed by each case, and every wait is under
``trio.fail_after`` or ``trio.move_on_after`` (:data:`CASE_GUARD` for a whole case).
"""

from __future__ import annotations

import math
import os
import re
import ssl
import statistics
import threading
from collections import Counter
from collections.abc import AsyncGenerator, Awaitable, Callable, Collection
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, cast, final

import trio

import trio_accept
from trio_accept import HandshakeError, Server, TLSStream, encode_proxy_v2

from .report import Row

if TYPE_CHECKING:
    from .report import Report

#: How much bigger the loads are: 1 in CI (``nox -s hostile``), more in a soak
#: (``nox -s soak`` sets this variable).
SCALE: Final = max(1, int(os.environ.get("TRIO_ACCEPT_HOSTILE_SCALE", "1")))
#: A safety net for a whole case on the real clock: a hang fails the case, it never
#: stalls the session. Cases take a few seconds.
CASE_GUARD: Final = 60.0
#: Well-behaved exchanges on the idle server at the start of a case (their median is
#: the idle latency).
BASELINE_CLIENTS: Final = 5
#: A well-behaved client must complete within this many times the idle latency ...
DEADLINE_FACTOR: Final = 10
#: ... and never less than this (an idle exchange takes a few milliseconds, and a
#: scheduler hiccup on a busy CI machine must not fail a case).
DEADLINE_FLOOR: Final = 2.0
#: Well-behaved clients running at once during a case, each one after the other.
STREAMS: Final = 2
#: Each case runs at least this many well-behaved clients during its hostile load ...
MIN_WELL_BEHAVED: Final = 10
#: ... and at most this many (a bound, should a case run long).
MAX_WELL_BEHAVED: Final = 2000 * SCALE

#: The idle name of a trio worker thread (trio renames it while it runs a job): a thread
#: trio keeps for reuse, which exits by itself after 10 s without work -- not a leak.
#: A dripping client's pause between two bytes (its slowness; nobody waits for it).
DRIP_INTERVAL: Final = 0.02
_IDLE_TRIO_WORKER: Final = re.compile(r"Trio thread \d+")

Handler = Callable[[TLSStream], Awaitable[object]]


async def echo(stream: TLSStream) -> None:
    """The server's handler in most cases: echo until the client closes."""
    async for data in stream:
        await stream.send_all(data)


@final
@dataclass(frozen=True, slots=True)
class Limits:
    """The listener's limits for a case: explicit, and shorter than the defaults so that
    a case that sheds by deadline takes seconds, not minutes."""

    hello_timeout: float = 2.0
    handshake_timeout: float = 4.0
    max_handshakes: int = 64
    max_connections: int | None = None
    idle_timeout: float | None = None
    close_timeout: float = 0.5
    shutdown_grace: float = 1.0

    def options(self) -> dict[str, Any]:
        return {
            "hello_timeout": self.hello_timeout,
            "handshake_timeout": self.handshake_timeout,
            "max_handshakes": self.max_handshakes,
            "max_connections": self.max_connections,
            "idle_timeout": self.idle_timeout,
            "close_timeout": self.close_timeout,
            "shutdown_grace": self.shutdown_grace,
        }


# -- what is left behind ----------------------------------------------------------------


def task_names() -> Counter[str]:
    """The names of every task in this run, walking the tree from the root task."""
    names: Counter[str] = Counter()
    root = trio.lowlevel.current_root_task()
    assert root is not None
    pending = [root]
    while pending:
        task = pending.pop()
        names[task.name] += 1
        pending += [child for nursery in task.child_nurseries for child in nursery.child_tasks]
    return names


def open_fds() -> int:
    """File descriptors open in this process (Linux)."""
    return len(os.listdir("/proc/self/fd"))


@final
@dataclass(frozen=True, slots=True)
class Snapshot:
    """Tasks, threads and file descriptors at one moment."""

    tasks: Counter[str]
    threads: frozenset[threading.Thread]
    fds: int

    @classmethod
    def take(cls) -> Snapshot:
        return cls(task_names(), frozenset(threading.enumerate()), open_fds())

    def leaks_since(self, before: Snapshot) -> dict[str, int]:
        """What exists now and did not before: ``{"tasks": n, "threads": n, "fds": n}``,
        without the zeros (an empty dict: nothing was left behind)."""
        threads = [
            thread
            for thread in self.threads - before.threads
            if thread.is_alive() and not _IDLE_TRIO_WORKER.fullmatch(thread.name)
        ]
        leaks = {
            "tasks": (self.tasks - before.tasks).total(),
            "threads": len(threads),
            "fds": max(0, self.fds - before.fds),
        }
        return {name: count for name, count in leaks.items() if count}


# -- what the server says about each connection -----------------------------------------


@final
class Tally:
    """What the server reported about each connection, told apart by the client's port.

    The ``on_handshake_error`` hook reports failures, the handler's first line reports
    completed handshakes. A well-behaved client's port is registered the moment it
    connects (before it sends a byte) until it is done (ports are reused), so everything
    else is the hostile load's.
    """

    def __init__(self) -> None:
        self.legit_ports: set[int] = set()
        #: Outcomes of hostile connections: a reason's value, or ``"completed"``.
        self.hostile: Counter[str] = Counter()
        #: Outcomes of well-behaved connections (all ``"completed"`` when all is well).
        self.legit: Counter[str] = Counter()
        self._changed = trio.Event()

    def failed(self, error: HandshakeError) -> None:
        self._note(error.peer_address, error.reason.value)

    def completed(self, stream: TLSStream) -> None:
        self._note(stream.info.peer_address, "completed")

    def failures(self) -> Counter[str]:
        """Every failure the hook saw, well-behaved or not."""
        both = self.hostile + self.legit
        del both["completed"]
        return both

    async def wait_hostile(self, count: int) -> None:
        """Return once ``count`` hostile connections have an outcome."""
        while self.hostile.total() < count:
            await self._changed.wait()

    def _note(self, address: Any, outcome: str) -> None:
        port: object = (
            cast("tuple[object, ...]", address)[1] if isinstance(address, tuple) else None
        )
        side = self.legit if port in self.legit_ports else self.hostile
        side[outcome] += 1
        self._changed.set()
        self._changed = trio.Event()


# -- well-behaved clients ------------------------------------------------------------


@final
@dataclass(slots=True)
class WellBehaved:
    """A steady stream of well-behaved clients, and what happened to each."""

    port: int
    client_context: ssl.SSLContext
    tally: Tally
    deadline: float = math.inf
    #: Start every connection with a PROXY protocol v2 header naming the client itself,
    #: as a load balancer in front would (for a listener with ``proxy_protocol=True``).
    proxy_protocol: bool = False
    #: Handshake latencies (connect to handshake done), in seconds, of clients that
    #: completed.
    latencies: list[float] = field(default_factory=list[float])
    #: Whole exchanges (connect, handshake, echo, close), in seconds.
    exchanges: list[float] = field(default_factory=list[float])
    failures: list[str] = field(default_factory=list[str])
    attempts: int = 0
    # While set, no new client starts (see paused()); clients in progress, and their end.
    _paused: trio.Event | None = field(default=None, init=False)
    _running: int = field(default=0, init=False)
    _idle: trio.lowlevel.ParkingLot = field(default_factory=trio.lowlevel.ParkingLot, init=False)

    @property
    def completed(self) -> int:
        return len(self.exchanges)

    async def one(self, transport: trio.SocketStream | None = None) -> None:
        """One client: connect (unless ``transport`` is connected already), handshake,
        echo a line, close with close_notify -- all within :attr:`deadline`. A failure is
        recorded, not raised."""
        self.attempts += 1
        number = self.attempts
        started = trio.current_time()
        latency = None
        self._running += 1
        try:
            with trio.move_on_after(self.deadline):
                latency = await self._exchange(number, transport)
        except (OSError, trio.BrokenResourceError, EOFError, AssertionError) as exc:
            self.failures.append(f"client {number}: {type(exc).__name__}: {exc}")
            return
        finally:
            self._running -= 1
            self._idle.unpark_all()
        if latency is None:
            self.failures.append(f"client {number}: not done within {self.deadline:.2f} s")
            return
        self.latencies.append(latency)
        self.exchanges.append(trio.current_time() - started)

    async def _exchange(self, number: int, transport: trio.SocketStream | None) -> float:
        started = trio.current_time()
        if transport is None:
            transport = await trio.open_tcp_stream("127.0.0.1", self.port)
        port = transport.socket.getsockname()[1]
        self.tally.legit_ports.add(port)
        try:
            if self.proxy_protocol:
                await transport.send_all(
                    encode_proxy_v2(transport.socket.getsockname(), transport.socket.getpeername())
                )
            return await self._talk(number, transport, started)
        finally:
            # The server has reported this connection by now (its handler started
            # before the echo). A later connection may reuse the port: a hostile one.
            self.tally.legit_ports.discard(port)

    async def _talk(self, number: int, transport: trio.SocketStream, started: float) -> float:
        stream = trio.SSLStream(transport, self.client_context, server_hostname="localhost")
        try:
            await stream.do_handshake()
            latency = trio.current_time() - started
            message = b"well-behaved client %d\n" % number
            await stream.send_all(message)
            echoed = b""
            while len(echoed) < len(message):
                chunk = await stream.receive_some()
                if not chunk:
                    raise EOFError("the server closed before echoing")
                echoed += chunk
            assert echoed == message, f"echo mismatch: {echoed!r}"
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        await stream.aclose()
        return latency

    async def baseline(self) -> float:
        """Exchanges on the idle server: sets :attr:`deadline`, returns the idle latency
        (the median exchange, in seconds)."""
        for _ in range(BASELINE_CLIENTS):
            await self.one()
        assert not self.failures, f"the idle server failed a client: {self.failures}"
        idle = statistics.median(self.exchanges)
        self.deadline = max(DEADLINE_FLOOR, DEADLINE_FACTOR * idle)
        return idle

    async def run(self, stop: trio.Event) -> None:
        """Clients one after another until ``stop`` is set and :data:`MIN_WELL_BEHAVED`
        ran (across all loops), at most :data:`MAX_WELL_BEHAVED`."""
        while self.attempts < MAX_WELL_BEHAVED and not (
            stop.is_set() and self.attempts >= MIN_WELL_BEHAVED
        ):
            while self._paused is not None:
                await self._paused.wait()
            await self.one()

    @asynccontextmanager
    async def paused(self) -> AsyncGenerator[None]:
        """Inside, no client of :meth:`run` starts, and none is in progress: the load
        has the server to itself (to fill it, say). The clients' deadline is not
        counting meanwhile; they resume on the way out."""
        assert self._paused is None, "paused already"
        self._paused = trio.Event()
        try:
            while self._running:
                await self._idle.park()
            yield
        finally:
            self._paused.set()
            self._paused = None

    def reset(self) -> None:
        """Forget the baseline's clients (they are not part of the case's figures)."""
        self.latencies.clear()
        self.exchanges.clear()
        self.failures.clear()
        self.attempts = 0


# -- the hostile side -----------------------------------------------------------------


@final
class Target:
    """What a case's hostile load attacks: the server, and a way to connect to it.

    Attributes:
        server: The running :class:`trio_accept.Server`.
        port: Its port on 127.0.0.1.
        client_context: A client context that trusts the server's certificate.
        settled: Set once the server has accounted for every hostile connection: a load
            that holds connections open (say, clients that never read) closes them then.
        notes: Facts the load observed, for the report (what the clients got back, ...).
    """

    def __init__(self, server: Server, client_context: ssl.SSLContext, connections: int) -> None:
        self.server = server
        self.port: int = server.addresses[0][1]
        self.client_context = client_context
        self.settled = trio.Event()
        self.notes: list[str] = []
        #: The case's well-behaved clients (set once they exist, before the load runs).
        self.well_behaved: WellBehaved | None = None
        self._budget = connections
        self.connections = 0

    async def connect(self) -> trio.SocketStream:
        """Open one hostile TCP connection (counted)."""
        assert self.connections < self._budget, "the load made more connections than declared"
        self.connections += 1
        return await trio.open_tcp_stream("127.0.0.1", self.port)


@final
class DelayedWrites(trio.abc.HalfCloseableStream):
    """A TCP stream whose writes leave in ``piece``-byte writes (TCP_NODELAY is on, so
    the server may see them arrive one by one), each after ``delay`` seconds: a client
    far away, or one that sends its handshake in pieces."""

    def __init__(
        self, transport: trio.SocketStream, *, delay: float = 0.0, piece: int = 0
    ) -> None:
        self.transport = transport
        self._delay = delay
        self._piece = piece

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        data = bytes(data)
        size = self._piece or len(data) or 1
        for start in range(0, len(data), size):
            await trio.sleep(self._delay)
            await self.transport.send_all(data[start : start + size])

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.transport.send_eof()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return await self.transport.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.transport.aclose()


#: A hostile load: runs against the target, returns when its part is done.
Attack = Callable[[Target], Awaitable[None]]


@final
@dataclass(frozen=True, slots=True)
class Case:
    """One hostile case.

    Attributes:
        name: As in ``report.CASES``.
        group: garbage, proxy, cpu, timing, volume, faults or fuzzing.
        connections: How many hostile connections ``attack`` opens (exactly).
        attack: The hostile load.
        allowed: The outcomes a hostile connection may have: reason values, or
            ``"completed"`` for a handshake that is allowed to complete.
        limits: The listener's limits.
        handler: The listener's handler (an echo by default).
        proxy_protocol: The listener expects a PROXY protocol header on every
            connection; well-behaved clients send a valid version 2 one.
        broken: The reasons an established connection may break for while its handler
            runs (``ServerStats.broken``); none by default: a well-behaved client never
            breaks its connection, and most hostile ones never get that far.
    """

    name: str
    group: str
    connections: int
    attack: Attack
    allowed: Collection[str]
    limits: Limits = Limits()
    handler: Handler = echo
    proxy_protocol: bool = False
    broken: Collection[str] = ()


@final
@dataclass(frozen=True, slots=True)
class Outcome:
    """What :meth:`Hostile.run` measured, for a case's own extra checks."""

    row: Row
    stats: trio_accept.ServerStats
    well_behaved: WellBehaved
    target: Target


@final
class Hostile:
    """The harness, as the ``hostile`` fixture gives it to a case.

    Args:
        server_context: The listener's TLS context (the library's defaults).
        client_context: A client context that trusts it.
        report: Where rows go.
    """

    def __init__(
        self, server_context: ssl.SSLContext, client_context: ssl.SSLContext, report: Report
    ) -> None:
        self.server_context = server_context
        self.client_context = client_context
        self.report = report

    async def run(self, case: Case) -> Outcome:
        """Run ``case`` as the module docstring describes; report its row, then assert
        the outcome."""
        before = Snapshot.take()
        tally = Tally()

        async def handler(stream: TLSStream) -> None:
            tally.completed(stream)
            await case.handler(stream)

        with trio.fail_after(CASE_GUARD):
            async with (
                trio_accept.open_server(
                    handler,
                    host="127.0.0.1",
                    ssl_context=self.server_context,
                    on_handshake_error=tally.failed,
                    proxy_protocol=case.proxy_protocol,
                    **case.limits.options(),
                ) as server,
                trio.open_nursery() as nursery,
            ):
                target = Target(server, self.client_context, case.connections)
                clients = WellBehaved(
                    target.port, self.client_context, tally, proxy_protocol=case.proxy_protocol
                )
                target.well_behaved = clients
                await clients.baseline()
                idle_handshake = statistics.median(clients.latencies)
                clients.reset()
                stop = trio.Event()
                for _ in range(STREAMS):
                    nursery.start_soon(clients.run, stop)
                async with trio.open_nursery() as load:
                    load.start_soon(case.attack, target)
                    await tally.wait_hostile(case.connections)
                    target.settled.set()
                stop.set()
            stats = server.stats
        leaks = Snapshot.take().leaks_since(before)
        classified = dict(tally.hostile)
        if stats.handler_errors:
            classified["handler-error"] = stats.handler_errors
        if stats.idle_closed:
            classified["idle-closed"] = stats.idle_closed
        for reason, count in stats.broken.items():
            # Established, then broken by the peer: "completed" is not the whole story.
            classified[f"broken {reason.value}"] = count
        row = Row(
            case=case.name,
            group=case.group,
            connections=target.connections,
            well_behaved=(clients.completed, clients.attempts),
            classified=classified,
            leaks=leaks,
            worst_ms=1000 * max(clients.latencies) if clients.latencies else None,
            idle_ms=1000 * idle_handshake,
            deadline_s=clients.deadline,
            note="; ".join(target.notes),
        )
        self.report.add(row)
        assert target.connections == case.connections
        assert not clients.failures, clients.failures
        assert set(tally.hostile) <= set(case.allowed), (tally.hostile, case.allowed)
        assert tally.hostile.total() == case.connections
        # The server's own counters agree with what its hook saw.
        assert {reason.value: n for reason, n in stats.failed.items()} == tally.failures()
        assert {reason.value for reason in stats.broken} <= set(case.broken), stats.broken
        assert stats.handshakes_in_flight == 0
        assert stats.active_connections == 0
        assert not leaks, leaks
        return Outcome(row, stats, clients, target)


async def drip(stream: trio.abc.SendStream, data: bytes) -> None:
    """Send ``data`` one byte at a time, :data:`DRIP_INTERVAL` apart (a Slowloris client),
    until all of it is sent or the server closes the connection."""
    with suppress(trio.BrokenResourceError):
        for byte in data:
            await stream.send_all(bytes([byte]))
            await trio.sleep(DRIP_INTERVAL)


async def until_closed(stream: trio.abc.ReceiveStream) -> tuple[bytes, bool]:
    """Read until the peer closes: everything it sent, and whether it reset the
    connection (``True``) rather than closing it."""
    received = bytearray()
    try:
        while data := await stream.receive_some():
            received += data
    except trio.BrokenResourceError:
        return bytes(received), True
    return bytes(received), False


async def in_parallel(count: int, limit: int, function: Callable[[int], Awaitable[None]]) -> None:
    """``function(0)`` to ``function(count - 1)``, at most ``limit`` of them at once."""
    limiter = trio.CapacityLimiter(limit)

    async def one(index: int) -> None:
        async with limiter:
            await function(index)

    async with trio.open_nursery() as nursery:
        for index in range(count):
            nursery.start_soon(one, index)


async def send_and_close(target: Target, data: bytes) -> tuple[bytes, bool]:
    """A hostile connection that sends ``data``, shuts down its sending side (so a server
    waiting for more learns there is none) and reads until the server closes: returns
    what the server sent, and whether it ended with a reset."""
    async with await target.connect() as stream:
        if data:
            await stream.send_all(data)
        await stream.send_eof()
        return await until_closed(stream)
