"""The benchmark's Python clients, each run in its own process by bench/run.py.

    python bench/clients.py download --port P --bytes N   # GET /bulk, read N bytes
    python bench/clients.py upload --port P --bytes N     # send N bytes, then close_notify
    python bench/clients.py hold --port P --count N       # N idle TLS connections
    python bench/clients.py stall --port P --count N      # N connections, no ClientHello
    python bench/clients.py probe --port P --count N      # N handshakes, their latency

Each prints its result as one JSON line. ``hold`` and ``stall`` talk with the runner
over stdin/stdout: ``hold`` prints ``{"warm": ...}`` after its warm-up connections, waits
for a line on stdin, opens its connections, prints its result, and keeps them open until
stdin closes; ``stall`` prints ``{"stalled": N}`` and keeps its connections (reopening the
ones the server closes) until stdin closes. Everything is bounded by ``--seconds``.

Clients only ever connect to 127.0.0.1, speak TLS 1.3 and do not verify the certificate
(the server's work is the same either way).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import select
import selectors
import socket
import ssl
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

HOST = "127.0.0.1"
CHUNK = 1024 * 1024


def client_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    return context


def emit(result: dict[str, Any]) -> None:
    print(json.dumps(result), flush=True)


def connect_tls(context: ssl.SSLContext, port: int, timeout: float) -> ssl.SSLSocket:
    sock = socket.create_connection((HOST, port), timeout=timeout)
    try:
        return context.wrap_socket(sock)  # the handshake, under the socket's timeout
    except BaseException:
        sock.close()
        raise


def stdin_closed(timeout: float) -> bool:
    """Wait up to ``timeout`` for stdin to become readable; True at EOF."""
    readable, _, _ = select.select([sys.stdin], [], [], timeout)
    return bool(readable) and not sys.stdin.readline()


def download(args: argparse.Namespace) -> None:
    with connect_tls(client_context(), args.port, args.seconds) as sock:
        start = time.perf_counter()
        sock.sendall(b"GET /bulk HTTP/1.0\r\n\r\n")
        buffer = bytearray(CHUNK)
        received = 0
        while n := sock.recv_into(buffer):
            received += n
        elapsed = time.perf_counter() - start
    header = len(b"HTTP/1.0 200 ok\r\nContent-type: text/plain\r\n\r\n")
    emit({"bytes": received - header, "seconds": elapsed})


def upload(args: argparse.Namespace) -> None:
    with connect_tls(client_context(), args.port, args.seconds) as sock:
        start = time.perf_counter()
        chunk = memoryview(bytes(CHUNK))
        full, rest = divmod(args.bytes, CHUNK)
        for _ in range(full):
            sock.sendall(chunk)
        sock.sendall(chunk[:rest])
        # close_notify, then wait for the server's: it has read everything by then.
        try:
            sock.unwrap()
        except (ssl.SSLError, OSError) as error:
            # Some servers answer close_notify by closing the TCP connection: fine too.
            print(f"unwrap: {error!r}", file=sys.stderr)
        elapsed = time.perf_counter() - start
    emit({"bytes": args.bytes, "seconds": elapsed})


def hold(args: argparse.Namespace) -> None:
    context = client_context()
    deadline = time.monotonic() + args.seconds
    for _ in range(args.warmup):
        connect_tls(context, args.port, args.timeout).close()
    emit({"warm": args.warmup})
    if stdin_closed(max(0.0, deadline - time.monotonic())):
        return

    def open_one(_: int) -> ssl.SSLSocket | str:
        if time.monotonic() > deadline:
            return "deadline"
        try:
            return connect_tls(context, args.port, args.timeout)
        except (OSError, ssl.SSLError) as error:
            return repr(error)

    start = time.perf_counter()
    # A few threads, so that the client's round trips overlap (the handshakes release
    # the GIL); the server sees a steady stream of handshakes, then idle connections.
    with ThreadPoolExecutor(args.threads) as pool:
        outcomes = list(pool.map(open_one, range(args.count)))
    held = [s for s in outcomes if isinstance(s, ssl.SSLSocket)]
    errors = sorted({s for s in outcomes if isinstance(s, str)})
    emit(
        {
            "held": len(held),
            "failed": len(outcomes) - len(held),
            "errors": errors[:5],
            "seconds": time.perf_counter() - start,
        }
    )
    stdin_closed(max(0.0, deadline - time.monotonic()))
    for sock in held:
        sock.close()


def stall(args: argparse.Namespace) -> None:
    # Below the probe on the CPU they share: the attack is on the server, not the probe.
    os.nice(10)
    deadline = time.monotonic() + args.seconds
    selector = selectors.DefaultSelector()
    selector.register(sys.stdin, selectors.EVENT_READ, data="stdin")

    def open_one() -> None:
        sock = socket.create_connection((HOST, args.port), timeout=args.timeout)
        selector.register(sock, selectors.EVENT_READ)

    for _ in range(args.count):
        open_one()
    emit({"stalled": args.count})
    reopened = 0
    while time.monotonic() < deadline:
        for key, _ in selector.select(0.1):
            if key.data == "stdin":
                if not sys.stdin.readline():
                    deadline = 0.0
                continue
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                data = sock.recv(4096)
            except OSError:
                data = b""
            if not data:  # the server gave up on it: stall another one
                selector.unregister(sock)
                sock.close()
                open_one()
                reopened += 1
    for key in list(selector.get_map().values()):
        if isinstance(key.fileobj, socket.socket):
            key.fileobj.close()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    emit({"reopened": reopened, "cpu_s": usage.ru_utime + usage.ru_stime})


def probe(args: argparse.Namespace) -> None:
    context = client_context()
    deadline = time.monotonic() + args.seconds
    latencies: list[float] = []
    failures: list[str] = []
    for _ in range(args.warmup):  # the server's first connections are slower
        with contextlib.suppress(OSError, ssl.SSLError):
            connect_tls(context, args.port, args.timeout).close()
    for _ in range(args.count):
        if time.monotonic() > deadline:
            break
        start = time.perf_counter()
        try:
            connect_tls(context, args.port, args.timeout).close()
        except (OSError, ssl.SSLError) as error:
            failures.append(repr(error))
            continue
        latencies.append((time.perf_counter() - start) * 1000)
    emit({"latencies_ms": latencies, "failures": len(failures), "errors": failures[:5]})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, function in [
        ("download", download),
        ("upload", upload),
        ("hold", hold),
        ("stall", stall),
        ("probe", probe),
    ]:
        command = commands.add_parser(name)
        command.set_defaults(function=function)
        command.add_argument("--port", type=int, required=True)
        command.add_argument("--seconds", type=float, default=60.0, help="overall bound")
        command.add_argument("--timeout", type=float, default=10.0, help="per connection")
        if name in ("download", "upload"):
            command.add_argument("--bytes", type=int, required=True)
        else:
            command.add_argument("--count", type=int, required=True)
        if name in ("hold", "probe"):
            command.add_argument("--warmup", type=int, default=20 if name == "hold" else 5)
        if name == "hold":
            command.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    args.function(args)


if __name__ == "__main__":
    main()
