"""Volume: more handshakes than ``max_handshakes``, more connections than
``max_connections``, and more connections than the process has file descriptors."""

from __future__ import annotations

import functools
import json
import resource
import ssl
import statistics
import subprocess
import sys
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Final

import trio
import trio.testing
from helpers import reap

import trio_accept
from trio_accept import Server, TLSStream

from .harness import (
    BASELINE_CLIENTS,
    CASE_GUARD,
    MIN_WELL_BEHAVED,
    SCALE,
    Case,
    DelayedWrites,
    Hostile,
    Limits,
    Snapshot,
    Tally,
    Target,
    WellBehaved,
    echo,
    in_parallel,
    until_closed,
)
from .report import Row

if TYPE_CHECKING:
    from .report import Report


async def test_handshake_burst_past_max_handshakes(hostile: Hostile) -> None:
    # 64 real clients far away (every write of theirs takes 100 ms to leave) connect,
    # and once all are connected they start their handshakes at the same moment,
    # against max_handshakes 16: the least-progressed handshakes are shed for the
    # newcomers.
    count = 64 * SCALE
    connected = 0
    all_connected = trio.Event()

    async def attack(target: Target) -> None:
        async def one(_: int) -> None:
            nonlocal connected
            transport = DelayedWrites(await target.connect(), delay=0.1)
            stream = trio.SSLStream(transport, target.client_context, server_hostname="localhost")
            connected += 1
            if connected == count:
                all_connected.set()
            await all_connected.wait()
            with suppress(trio.BrokenResourceError):  # shed: the server closed it
                await stream.do_handshake()
            await trio.aclose_forcefully(stream)

        await in_parallel(count, count, one)

    outcome = await hostile.run(
        Case(
            "past-max-handshakes",
            "volume",
            count,
            attack,
            {"completed", "evicted"},
            limits=Limits(max_handshakes=16),
            # The clients that complete leave without close_notify (aclose_forcefully).
            broken={"eof"},
        )
    )
    # 64 handshakes talking at once against a bound of 16: shedding must have happened,
    # and not to everyone (a listener that let them all through, refused newcomers, or
    # shed every handshake in turn, fails here).
    assert outcome.stats.evicted >= 1
    assert outcome.row.classified["completed"] >= 1


async def test_connections_past_max_connections(hostile: Hostile) -> None:
    # max_connections 48. First, 32 clients complete their handshake and then say
    # nothing (the idle timeout closes them), while 100 more (times the scale) connect
    # and never send a byte (they are shed for newcomers, or time out). The server
    # never holds more than 48. Then the server is filled with 48 established
    # connections: with nothing left to shed, the accept loop stops accepting
    # (backpressure) and newcomers wait in the kernel's listen backlog -- and are
    # served once the idle timeout frees room.
    hogs, silent = 32, 100 * SCALE
    limit, newcomers = 48, 4
    most_held = 0
    full = trio.Event()
    # The server's own view, from each handler's first line: established connections
    # and closed ones, by client port.
    seen: dict[int, tuple[int, int]] = {}

    def count_held(server: Server) -> None:
        nonlocal most_held
        stats = server.stats
        most_held = max(most_held, stats.handshakes_in_flight + stats.active_connections)

    async def handler(stream: TLSStream) -> None:
        stats = trio_accept.current_server().stats
        seen[stream.info.peer_address[1]] = (stats.active_connections, stats.closed)
        if stats.active_connections == limit:
            full.set()
        await echo(stream)

    async def hog(target: Target) -> None:
        stream = trio.SSLStream(
            await target.connect(), target.client_context, server_hostname="localhost"
        )
        async with stream:
            await stream.do_handshake()
            count_held(target.server)
            assert await stream.receive_some() == b""  # close_notify, once idle

    async def attack(target: Target) -> None:
        async def silence() -> None:
            async with await target.connect() as stream:
                await until_closed(stream)
                count_held(target.server)  # shed: the server was full a moment ago

        async with trio.open_nursery() as nursery:
            for _ in range(hogs):
                nursery.start_soon(hog, target)
            for _ in range(silent):
                nursery.start_soon(silence)
        target.notes.append(f"at most {most_held} connections held")
        await fill_then_wait(target)

    async def fill_then_wait(target: Target) -> None:
        server = target.server
        assert target.well_behaved is not None
        async with target.well_behaved.paused(), trio.open_nursery() as nursery:
            # Let the server close what the well-behaved clients left open: the room
            # must be the hogs' alone.
            await trio.testing.wait_all_tasks_blocked()
            assert server.stats.active_connections == 0
            for _ in range(limit):
                nursery.start_soon(hog, target)
            await full.wait()
            stats = server.stats
            assert (stats.active_connections, stats.handshakes_in_flight) == (limit, 0)
            accepted, closed = stats.accepted, stats.closed
            # Newcomers connect: the kernel completes their TCP handshakes and queues
            # them; their ClientHellos wait unread until a hog leaves.
            waiting = WellBehaved(target.port, target.client_context, hostile_tally(target))
            waiting.deadline = CASE_GUARD
            arrived = [
                await trio.open_tcp_stream("127.0.0.1", target.port) for _ in range(newcomers)
            ]
            ports = [transport.socket.getsockname()[1] for transport in arrived]
            await trio.testing.wait_all_tasks_blocked()  # the server had every chance
            assert server.stats.accepted == accepted, "accepted while full of established"
            for transport in arrived:
                nursery.start_soon(waiting.one, transport)
        assert not waiting.failures, waiting.failures
        # Each newcomer's handshake completed only after established ones had closed.
        assert all(seen[port][1] > closed for port in ports), (closed, seen)
        target.notes.append(
            f"full of {limit} established connections: {newcomers} newcomers waited in "
            f"the backlog until the idle timeout freed room, then were served"
        )

    limits = Limits(max_connections=limit, idle_timeout=1.0, hello_timeout=1.0)
    outcome = await hostile.run(
        Case(
            "past-max-connections",
            "volume",
            hogs + silent + limit,
            attack,
            {"completed", "evicted", "timeout"},
            limits=limits,
            handler=handler,
        )
    )
    assert outcome.row.classified["completed"] == hogs + limit
    assert outcome.stats.idle_closed == hogs + limit
    assert most_held <= limit


def hostile_tally(target: Target) -> Tally:
    """The case's tally, for clients the load runs as well-behaved ones."""
    assert target.well_behaved is not None
    return target.well_behaved.tally


#: The emfile case's server process gets this many file descriptors in all.
EMFILE_LIMIT: Final = 64
#: Connections opened beyond the server's free descriptors.
EMFILE_EXTRA: Final = 16
#: Well-behaved clients that arrive while the server is out of descriptors.
EMFILE_WAITING: Final = 3
EMFILE_SERVER: Final = Path(__file__).with_name("emfile_server.py")


async def read_line(stream: trio.abc.ReceiveStream, buffer: bytearray) -> bytes:
    """The next line from ``stream`` (``buffer`` keeps what came after it)."""
    while b"\n" not in buffer:
        data = await stream.receive_some()
        assert data, "the server process ended early"
        buffer += data
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    return line


async def test_emfile(server_pem: Path, client_context: ssl.SSLContext, report: Report) -> None:
    # The server runs in a subprocess with RLIMIT_NOFILE 64. Connections that say
    # nothing use up its descriptors until accept() fails with EMFILE; the server then
    # sheds the oldest silent connection to free one, while well-behaved clients
    # arriving wait in the listen backlog. The server must serve the waiting clients
    # and everyone after them, and have logged and counted its accept() errors.
    before = Snapshot.take()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with trio.fail_after(CASE_GUARD):
        process = await trio.lowlevel.open_process(
            [sys.executable, str(EMFILE_SERVER), str(server_pem)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            preexec_fn=functools.partial(
                resource.setrlimit, resource.RLIMIT_NOFILE, (EMFILE_LIMIT, hard)
            ),
        )
        assert process.stdin is not None
        assert process.stdout is not None
        assert process.stderr is not None
        stderr = bytearray()
        out_of_fds = trio.Event()

        async def watch_stderr(stream: trio.abc.ReceiveStream) -> None:
            while data := await stream.receive_some():
                stderr.extend(data)
                if b"EMFILE" in stderr:
                    out_of_fds.set()

        stdout = bytearray()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch_stderr, process.stderr)
                ready = json.loads(await read_line(process.stdout, stdout))
                port = ready["port"]
                clients = WellBehaved(port, client_context, Tally())
                await clients.baseline()
                idle_ms = 1000 * statistics.median(clients.latencies)
                clients.reset()
                silent = [
                    await trio.open_tcp_stream("127.0.0.1", port)
                    for _ in range(ready["free"] + EMFILE_EXTRA)
                ]
                await out_of_fds.wait()
                # Clients arrive now: the kernel completes their TCP handshakes and
                # queues them; their ClientHellos go unanswered.
                waiting = WellBehaved(port, client_context, Tally(), deadline=CASE_GUARD)
                arrived = [
                    await trio.open_tcp_stream("127.0.0.1", port) for _ in range(EMFILE_WAITING)
                ]
                async with trio.open_nursery() as arrivals:
                    for transport in arrived:
                        arrivals.start_soon(waiting.one, transport)
                    released = trio.current_time()
                    for stream in silent:
                        await stream.aclose()
                served_after = trio.current_time() - released
                for _ in range(MIN_WELL_BEHAVED):  # and a stream of clients after them
                    await clients.one()
                await process.stdin.aclose()  # the server shuts down
                result = json.loads(await read_line(process.stdout, stdout))
                await process.wait()
                nursery.cancel_scope.cancel()
        finally:
            await reap(process)
    leaks = Snapshot.take().leaks_since(before)
    for name, count in result["leaks"].items():
        leaks[f"server {name}"] = count
    classified = dict(result["failed"])
    classified["accept-errors"] = result["accept_errors"]
    report.add(
        Row(
            case="emfile",
            group="volume",
            connections=len(silent),
            well_behaved=(
                waiting.completed + clients.completed,
                waiting.attempts + clients.attempts,
            ),
            classified=classified,
            leaks=leaks,
            worst_ms=1000 * max(clients.latencies),
            idle_ms=idle_ms,
            deadline_s=clients.deadline,
            note=(
                f"RLIMIT_NOFILE {EMFILE_LIMIT}; {EMFILE_WAITING} clients that arrived "
                f"while it was out of descriptors were served "
                f"{1000 * served_after:.0f} ms after they were freed"
            ),
        )
    )
    assert process.returncode == 0, stderr.decode()
    assert not waiting.failures, waiting.failures
    assert not clients.failures, clients.failures
    assert served_after <= clients.deadline
    assert result["accept_errors"] > 0
    assert b"accept() failed: EMFILE" in stderr
    # Out of fds, the server sheds the connection silent for longest to free one
    # (evicted); the rest end when the test closes them (eof).
    failed = result["failed"]
    assert set(failed) <= {"eof", "evicted"}
    assert failed.get("evicted", 0) >= 1
    assert sum(failed.values()) == len(silent)
    assert result["completed"] == BASELINE_CLIENTS + waiting.completed + clients.completed
    assert not leaks, leaks
