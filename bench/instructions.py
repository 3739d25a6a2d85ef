"""Instructions per connection, by library: where a server's CPU goes, without the noise.

    python bench/instructions.py [--connections N] [--servers a,b]

CPU time on a shared machine moves with everything else running; the number of
instructions a server executes does not. Each server of bench/servers.py runs under
valgrind's callgrind with instrumentation off; after a few warm-up connections it is
switched on (``callgrind_control -i on``), a client makes N sequential connections --
a TLS 1.3 handshake, ``GET /``, the 3-byte answer, close_notify -- and the counts are
dumped. Reported per connection: all user-space instructions of the server, and their
split by shared object (OpenSSL's libcrypto and libssl, the Python interpreter, the C
library). Kernel work (syscalls, TCP) is not counted: compare it with ``bench/run.py``'s
CPU times, which include it.

Needs valgrind (Debian package ``valgrind``). Under valgrind the server runs some 50
times slower, so the client's bytes are always there when the server reads: paths that
avoid waiting are favoured. It measures the work per connection, not latency.
"""

from __future__ import annotations

import argparse
import re
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import trustme
from servers import SERVERS

BENCH = Path(__file__).resolve().parent
START_TIMEOUT = 120.0  # valgrind's start-up is slow
WARM_UP = 5
OBJECTS = {"libcrypto": "OpenSSL libcrypto", "libssl": "OpenSSL libssl",
           "libpython": "Python", "libc.so": "C library"}  # fmt: skip
ANNOTATED = re.compile(r"^\s*(?P<cost>[\d,]+) \(\s*[\d.]+%\)\s+\S.*\[(?P<object>[^\]]+)\]\s*$")


def connect(port: int, count: int) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    for _ in range(count):
        with socket.create_connection(("127.0.0.1", port), timeout=60) as raw:
            tls = context.wrap_socket(raw)
            tls.sendall(b"GET / HTTP/1.0\r\n\r\n")
            while tls.recv(4096):
                pass


def by_object(profile: Path) -> Counter[str]:
    """Self cost (instructions) by shared object, from ``callgrind_annotate``'s listing
    of every function (``  1,234 (0.5%)  file:function [object]``)."""
    listing = subprocess.run(
        ["callgrind_annotate", "--threshold=100", str(profile)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    costs: Counter[str] = Counter()
    for line in listing.splitlines():
        match = ANNOTATED.match(line)
        if match:
            costs[match["object"]] += int(match["cost"].replace(",", ""))
    return costs


def measure(name: str, connections: int, cert: Path, key: Path, tmp: Path) -> dict[str, float]:
    out = tmp / f"{name}.callgrind"
    command = [
        "valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
        sys.executable, str(BENCH / "servers.py"), name, "--port", "0",
        "--cert", str(cert), "--key", str(key), "--workload", "handshake",
    ]  # fmt: skip
    server = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        if not line:
            raise RuntimeError(f"{name}: the server exited (code {server.wait()})")
        port, pid = (int(field) for field in line.split())
        connect(port, WARM_UP)
        subprocess.run(["callgrind_control", "-i", "on", str(pid)], check=True,
                       capture_output=True)  # fmt: skip
        connect(port, connections)
        time.sleep(1)  # the server's side of the last connection
        subprocess.run(["callgrind_control", "-d", str(pid)], check=True, capture_output=True)
    finally:
        server.terminate()
        server.wait(60)
    (dump,) = [p for p in tmp.glob(f"{name}.callgrind*") if p.name.endswith(".1")]
    totals = 0
    for text_line in dump.read_text(errors="replace").splitlines():
        if text_line.startswith("totals:"):
            totals = int(text_line.split()[1])
    split = by_object(dump)
    result = {"total": totals / connections}
    for needle, label in OBJECTS.items():
        result[label] = sum(v for k, v in split.items() if needle in k) / connections
    result["other"] = result["total"] - sum(result[label] for label in OBJECTS.values())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument(
        "--servers", default="trio_accept,trio,anyio,asyncio,uvloop", help="comma-separated"
    )
    args = parser.parse_args()
    names = args.servers.split(",")
    unknown = set(names) - set(SERVERS) | ({"openssl"} & set(names))
    if unknown:
        parser.error(f"unknown or unsupported servers: {sorted(unknown)}")
    with tempfile.TemporaryDirectory() as directory:
        tmp = Path(directory)
        ca = trustme.CA(key_type=trustme.KeyType.ECDSA)
        issued = ca.issue_cert("localhost", key_type=trustme.KeyType.ECDSA)
        cert, key = tmp / "cert.pem", tmp / "key.pem"
        issued.cert_chain_pems[0].write_to_path(cert)
        issued.private_key_pem.write_to_path(key)
        rows = {name: measure(name, args.connections, cert, key, tmp) for name in names}
    columns = ["total", *OBJECTS.values(), "other"]
    print(f"Instructions per connection (thousands), {args.connections} connections each\n")
    print("| server | " + " | ".join(columns) + " |")
    print("|---|" + "--:|" * len(columns))
    for name, row in rows.items():
        print(f"| {name} | " + " | ".join(f"{row[c] / 1000:,.0f}" for c in columns) + " |")


if __name__ == "__main__":
    main()
