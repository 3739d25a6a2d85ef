"""Running ``trio-accept`` as a user does (a subprocess, real signals, real clients), for the
command's tests: test_cli, test_workers."""

from __future__ import annotations

import os
import re
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import trio

#: A safety net for everything that waits on a subprocess, never a timing assertion.
PROCESS_DEADLINE = 30.0
#: Socket timeout of the blocking clients run in threads, for the same purpose.
CLIENT_TIMEOUT = 10.0
#: The command, as ``python -m``.
COMMAND = (sys.executable, "-m", "trio_accept")
#: The directory of this file: test handler modules live here (``cli_handlers``).
TESTS = Path(__file__).parent

# Puts the inherited socket at file descriptor 3 and sets LISTEN_FDS/LISTEN_PID for the
# process it becomes, as systemd does (exec keeps the pid).
SOCKET_ACTIVATE = """\
import os, sys
fd = int(sys.argv[1])
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.environ.update(LISTEN_FDS="1", LISTEN_PID=str(os.getpid()), LISTEN_FDNAMES="https")
os.execv(sys.executable, [sys.executable, "-m", "trio_accept", *sys.argv[2:]])
"""

BANNER = re.compile(r"trio-accept: TLS (.+?) on (\S+):(\d+) \((.*)\)$")


def _starts_with(start: str, line: str) -> bool:
    return line.strip().startswith(start)


class LineReader:
    """Lines from a subprocess pipe, as they come."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buffer = bytearray()
        self.lines: list[str] = []

    async def readline(self) -> str | None:
        """The next line (without its newline), or None at EOF."""
        while b"\n" not in self._buffer:
            chunk = await self._stream.receive_some()
            if not chunk:
                if not self._buffer:
                    return None
                self._buffer += b"\n"
            self._buffer += chunk
        line, _, rest = self._buffer.partition(b"\n")
        self._buffer = bytearray(rest)
        text = line.decode()
        self.lines.append(text)
        return text

    async def read_until(self, predicate: Callable[[str], bool]) -> str:
        while (line := await self.readline()) is not None:
            if predicate(line):
                return line
        raise AssertionError(f"EOF before the expected line; got {self.lines!r}")

    async def read_all(self) -> str:
        while await self.readline() is not None:
            pass
        return "\n".join(self.lines)


@dataclass
class Serve:
    """A running ``trio-accept serve`` and what it printed."""

    process: trio.Process
    stdout: LineReader
    stderr: LineReader
    port: int
    description: str
    what: str = "echo server"
    banner: list[str] = field(default_factory=list[str])

    def banner_line(self, start: str) -> str:
        (line,) = (line.strip() for line in self.banner if line.strip().startswith(start))
        return line

    async def logged(self, text: str) -> str:
        """Wait for a line on stderr that contains ``text``; return it."""
        with trio.fail_after(PROCESS_DEADLINE):
            return await self.stderr.read_until(lambda line: text in line)

    async def stop(self, signum: int = 15) -> tuple[int, str]:
        """Send a signal (SIGTERM); returns the exit status and everything logged."""
        self.process.send_signal(signum)
        with trio.fail_after(PROCESS_DEADLINE):
            status = await self.process.wait()
            return status, await self.stderr.read_all()


async def reap(process: trio.Process) -> None:
    """Kill ``process`` if it still runs, wait for it, close its pipes."""
    with trio.CancelScope(shield=True):
        if process.returncode is None:
            process.kill()
        await process.wait()
        for pipe in (process.stdin, process.stdout, process.stderr):
            if pipe is not None:
                await pipe.aclose()


def environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test's environment, with the test handlers importable, plus ``extra``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), *filter(None, [env.get("PYTHONPATH")])])
    env.update(extra or {})
    return env


@asynccontextmanager
async def running(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    pass_fds: Sequence[int] = (),
) -> AsyncGenerator[tuple[trio.Process, LineReader, LineReader]]:
    """Start ``argv`` with its output piped to line readers; killed and reaped on the way
    out, whatever happened."""
    process = await trio.lowlevel.open_process(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=environment(env),
        pass_fds=tuple(pass_fds),
    )
    try:
        assert process.stdout is not None
        assert process.stderr is not None
        yield process, LineReader(process.stdout), LineReader(process.stderr)
    finally:
        await reap(process)


@asynccontextmanager
async def serve(
    arguments: Sequence[str],
    *,
    command: Sequence[str] = COMMAND,
    env: Mapping[str, str] | None = None,
    pass_fds: Sequence[int] = (),
    port: Sequence[str] = ("--port", "0"),
    host: str = "127.0.0.1",
) -> AsyncGenerator[Serve]:
    """Start ``python -m trio_accept serve --port 0 ...`` and wait for its banner (and,
    with dev certificates, the lines after it)."""
    async with running([*command, "serve", *port, *arguments], env=env, pass_fds=pass_fds) as (
        process,
        stdout,
        stderr,
    ):
        with trio.fail_after(PROCESS_DEADLINE):
            first = await stdout.read_until(lambda line: BANNER.search(line) is not None)
            match = BANNER.search(first)
            assert match is not None, first
            assert match.group(2) == host
            # The rest of the banner, in its order.
            expected = [("--workers", "workers:"), ("--metrics", "metrics:")]
            if "--cert" not in arguments and "--config" not in arguments:
                expected.append(("", "curl "))
            for option, start in expected:
                if not option or option in arguments:
                    await stdout.read_until(partial(_starts_with, start))
        yield Serve(
            process,
            stdout,
            stderr,
            int(match.group(3)),
            match.group(4),
            match.group(1),
            list(stdout.lines),
        )


def socket_activated(fd: int) -> list[str]:
    """The command, started as systemd's socket activation does: with the listening
    socket ``fd`` (which the caller passes) at file descriptor 3, and ``LISTEN_FDS``."""
    return [sys.executable, "-c", SOCKET_ACTIVATE, str(fd)]


def listening_socket() -> socket.socket:
    """A TCP socket listening on 127.0.0.1 and a free port, to pass to the command."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


# -- blocking clients, run in threads ------------------------------------------------------


def trusting(ca_file: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca_file))


def connect(
    port: int, context: ssl.SSLContext, server_hostname: str = "localhost"
) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT)
    try:
        # A ragged EOF raises instead of looking like a clean close.
        return context.wrap_socket(
            raw, server_hostname=server_hostname, suppress_ragged_eofs=False
        )
    except BaseException:
        raw.close()
        raise


def echo_line(tls: ssl.SSLSocket, line: bytes) -> bytes:
    tls.sendall(line)
    received = b""
    while not received.endswith(b"\n"):
        chunk = tls.recv(4096)
        if not chunk:
            break
        received += chunk
    return received


def echo_once(port: int, context: ssl.SSLContext, line: bytes = b"hello\n") -> tuple[bytes, bytes]:
    """Connect, echo one line, close. Returns the echo and the server's certificate (DER)."""
    with connect(port, context) as tls:
        certificate = tls.getpeercert(binary_form=True)
        assert certificate is not None
        return echo_line(tls, line), certificate


def read_all(port: int, context: ssl.SSLContext) -> bytes:
    """Connect and read until the server closes (for handlers that speak first)."""
    with connect(port, context) as tls:
        received = b""
        while chunk := tls.recv(4096):
            received += chunk
        return received


def plain_http(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT) as raw:
        raw.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        response = b""
        while chunk := raw.recv(4096):
            response += chunk
        return response


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
NextMessage = Callable[[], Awaitable[list[str]]]


def scrape(url: str) -> Samples:
    """The samples of a Prometheus endpoint, by name and labels."""
    from prometheus_client.parser import (  # noqa: PLC0415 - optional
        text_string_to_metric_families,
    )

    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def scrape_until(url: str, done: Callable[[Samples], bool]) -> tuple[Samples, float]:
    """Scrape ``url`` until ``done(samples)`` -- servers copy their counters every
    second -- within :data:`PROCESS_DEADLINE`. Returns the samples and the wall-clock
    time just before the scrape that gave them (for bounds on time-based gauges)."""
    with trio.fail_after(PROCESS_DEADLINE):
        while True:
            before = time.time()
            samples = await trio.to_thread.run_sync(scrape, url)
            if done(samples):
                return samples, before
            await trio.sleep(0.1)  # another process's clock: polled, within bounds


@asynccontextmanager
async def notify_socket(directory: Path) -> AsyncGenerator[tuple[str, NextMessage]]:
    """A systemd notification socket in ``directory``: its path (for ``NOTIFY_SOCKET``),
    and a function returning the next message's fields (within PROCESS_DEADLINE)."""
    notifications = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    with notifications:
        path = directory / "notify"
        await notifications.bind(str(path))

        async def next_message() -> list[str]:
            with trio.fail_after(PROCESS_DEADLINE):
                return (await notifications.recv(4096)).decode().split("\n")

        yield str(path), next_message


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (a zombie counts: it was not reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
