"""What the key-exchange group of :func:`trio_accept.server_context` costs.

Python 3.11 lets a server set one group (``SSLContext.set_ecdh_curve``), so the choice
is a trade-off. For ``group`` in ``"X25519"`` (the default), ``"prime256v1"`` and
``None`` (OpenSSL's own list), this script starts a trio_accept server on 127.0.0.1 in
a child process -- a handler that returns at once, so the server closes each connection
right after its handshake -- and measures, with the client's default groups (X25519
first, as nearly every client sends them):

- handshakes per second, from ``openssl s_time -new`` (full handshakes, one at a time);
- the median wall time of one handshake from a Python ``ssl`` client, TCP connect
  included;
- whether the server answered with a HelloRetryRequest (``openssl s_client -msg``
  shows a second ClientHello), and which group it chose;
- which groups it accepts at all: ``openssl s_client -groups G`` for one G at a time
  (X25519, P-256, P-384, P-521, X448).

The groups are measured in turn, over several rounds (a busy moment on the machine then
hits every group); the table shows each group's best and worst s_time round and its
lowest median. Run it as
``python bench/groups.py`` (``--seconds``, ``--handshakes``, ``--rounds``). Needs
``openssl`` on PATH, ``trustme``, and trio_accept importable. All traffic stays on
127.0.0.1; every child process has a deadline and is stopped on the way out.

Loopback has no network latency, so the HelloRetryRequest shows here only as its CPU
cost (a second ClientHello, a P-256 key share); over a network it costs one round trip
more before the server's Finished.
"""

from __future__ import annotations

import argparse
import logging
import re
import select
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import trio
import trustme

import trio_accept

#: The ``group`` values compared (``None``: OpenSSL's list, as ``server_context`` takes it).
GROUPS: Final[tuple[str | None, ...]] = ("X25519", "prime256v1", None)
#: Groups probed one at a time with ``s_client -groups``, in OpenSSL's names.
PROBED_GROUPS: Final = ("X25519", "P-256", "P-384", "P-521", "X448")
#: Deadline for a single ``s_client`` run or for the server to report its port.
STEP_TIMEOUT: Final = 10.0
#: Handshakes done before the Python client's timed ones (imports, caches, CPU clock).
WARMUP_HANDSHAKES: Final = 50


@dataclass(frozen=True, slots=True)
class Row:
    """The measurements for one ``group`` setting: one per round for the timings."""

    group: str | None
    per_second: tuple[float, ...]
    median_ms: tuple[float, ...]
    hello_retry: bool
    chosen: str
    accepted: tuple[str, ...]

    def merge(self, other: Row) -> Row:
        """Both rounds' timings; the other facts must not change between rounds."""
        facts = (self.group, self.hello_retry, self.chosen, self.accepted)
        if facts != (other.group, other.hello_retry, other.chosen, other.accepted):
            raise RuntimeError(f"the rounds disagree: {self} != {other}")
        return Row(
            self.group,
            self.per_second + other.per_second,
            self.median_ms + other.median_ms,
            self.hello_retry,
            self.chosen,
            self.accepted,
        )


# -- the server (child process) -------------------------------------------------------


async def serve(group: str | None, certfile: str, keyfile: str) -> None:
    """Serve on 127.0.0.1, print the port, and stop when stdin reaches EOF."""
    logging.getLogger("trio_accept").setLevel(logging.ERROR)  # refused probes are expected
    context = trio_accept.server_context(certfile, keyfile, group=group)

    async def handler(stream: trio_accept.TLSStream) -> None:
        pass  # returning closes the connection: only the handshake is measured

    async with trio_accept.open_server(
        handler, 0, host="127.0.0.1", ssl_context=context
    ) as server:
        print(server.addresses[0][1], flush=True)
        # The parent closes our stdin to stop us (and so does its exit, however it ends).
        await trio.to_thread.run_sync(sys.stdin.read)


# -- the measurements (parent process) ------------------------------------------------


@contextmanager
def server_process(group: str | None, certfile: Path, keyfile: Path) -> Iterator[int]:
    """Run :func:`serve` in a child process; yields its port."""
    command = [sys.executable, __file__, "--serve", str(group), str(certfile), str(keyfile)]
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], STEP_TIMEOUT)
        line = process.stdout.readline() if ready else ""
        if not line.strip().isdigit():
            raise RuntimeError(f"the server for group={group} did not start")
        yield int(line)
    finally:
        if process.stdin is not None:
            process.stdin.close()
        try:
            process.wait(timeout=STEP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def s_time(port: int, seconds: int) -> float:
    """Full handshakes per second by ``openssl s_time -new``, over our own wall clock
    (s_time reports whole seconds only)."""
    start = time.perf_counter()
    done = subprocess.run(
        ["openssl", "s_time", "-connect", f"127.0.0.1:{port}", "-new", "-time", str(seconds)],
        capture_output=True,
        text=True,
        timeout=seconds + STEP_TIMEOUT,
        check=True,
    )
    elapsed = time.perf_counter() - start
    found = re.search(r"^(\d+) connections in [\d.]+s;", done.stdout, re.MULTILINE)
    if found is None:
        raise RuntimeError(f"unexpected s_time output: {done.stdout[-300:]!r}")
    return int(found.group(1)) / elapsed


def s_client(port: int, *options: str) -> tuple[bool, str]:
    """One ``openssl s_client`` handshake: whether it succeeded, and the output."""
    done = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", *options],
        input="",
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT,
        check=False,
    )
    output = done.stdout + done.stderr
    return done.returncode == 0 and "Cipher is (NONE)" not in output, output


def hello_retry(port: int) -> tuple[bool, str]:
    """Whether the server asked for another key share, and the group it chose."""
    ok, output = s_client(port, "-msg")
    if not ok:
        raise RuntimeError(f"the default client failed:\n{output}")
    client_hellos = len(re.findall(r"^>>> .*ClientHello$", output, re.MULTILINE))
    found = re.search(r"^Server Temp Key: (.*)$", output, re.MULTILINE)
    return client_hellos > 1, found.group(1) if found else "?"


def python_handshakes(port: int, cafile: Path, count: int) -> float:
    """The median wall time of one handshake (TCP connect included), in milliseconds."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # not create_default_context():
    context.load_verify_locations(cafile=cafile)  # no SSLKEYLOGFILE, no system CAs
    times: list[float] = []
    for _ in range(WARMUP_HANDSHAKES + count):
        start = time.perf_counter()
        with (
            socket.create_connection(("127.0.0.1", port), timeout=STEP_TIMEOUT) as sock,
            context.wrap_socket(sock, server_hostname="localhost"),
        ):
            times.append(time.perf_counter() - start)
    return statistics.median(times[WARMUP_HANDSHAKES:]) * 1000


def measure(
    group: str | None, certfile: Path, keyfile: Path, *, cafile: Path, seconds: int, count: int
) -> Row:
    """All measurements for one ``group`` setting, against a fresh server."""
    with server_process(group, certfile, keyfile) as port:
        retried, chosen = hello_retry(port)
        accepted = tuple(name for name in PROBED_GROUPS if s_client(port, "-groups", name)[0])
        median_ms = python_handshakes(port, cafile, count)
        per_second = s_time(port, seconds)
    return Row(group, (per_second,), (median_ms,), retried, chosen, accepted)


def print_table(rows: Sequence[Row]) -> None:
    """The results as a fixed-width table."""
    header = (
        "group",
        "hs/s best",
        "hs/s worst",
        "median ms",
        "HRR",
        "chosen",
        "P-256-only",
        "accepts",
    )
    lines = [header]
    for row in rows:
        lines.append(
            (
                repr(row.group),
                f"{max(row.per_second):.0f}",
                f"{min(row.per_second):.0f}",
                f"{min(row.median_ms):.2f}",
                "yes" if row.hello_retry else "no",
                row.chosen,
                "yes" if "P-256" in row.accepted else "no",
                ", ".join(row.accepted),
            )
        )
    widths = [max(len(line[column]) for line in lines) for column in range(len(header))]
    for line in lines:
        cells = (cell.ljust(width) for cell, width in zip(line, widths, strict=True))
        print("  ".join(cells).rstrip())


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the arguments; run the comparison (or, with ``--serve``, one server)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--seconds", type=int, default=5, help="s_time seconds per group and round (default: 5)"
    )
    parser.add_argument(
        "--handshakes",
        type=int,
        default=500,
        help="timed Python-client handshakes per group and round (default: 500)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="rounds over all groups; the best of them is shown (default: 3)",
    )
    parser.add_argument(
        "--serve", nargs=3, metavar=("GROUP", "CERT", "KEY"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.serve is not None:
        group, certfile, keyfile = args.serve
        trio.run(serve, None if group == "None" else group, certfile, keyfile)
        return

    ca = trustme.CA()
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    with tempfile.TemporaryDirectory() as directory:
        certfile, keyfile, cafile = (Path(directory, name) for name in ("cert", "key", "ca"))
        leaf.cert_chain_pems[0].write_to_path(str(certfile))
        leaf.private_key_pem.write_to_path(str(keyfile))
        ca.cert_pem.write_to_path(str(cafile))
        print(f"{ssl.OPENSSL_VERSION}, Python {sys.version.split()[0]}, trio_accept server")
        print(
            f"s_time -new -time {args.seconds}; Python client: {args.handshakes} handshakes;"
            f" {args.rounds} rounds, the groups in turn (best: fastest round; median ms:"
            " lowest round)"
        )
        print()
        rows: dict[str | None, Row] = {}
        for _ in range(args.rounds):  # in turn, so that a busy moment hits every group
            for group in GROUPS:
                row = measure(
                    group,
                    certfile,
                    keyfile,
                    cafile=cafile,
                    seconds=args.seconds,
                    count=args.handshakes,
                )
                rows[group] = rows[group].merge(row) if group in rows else row
    print_table(list(rows.values()))


if __name__ == "__main__":
    main()
