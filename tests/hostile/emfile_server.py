"""A listener for the ``emfile`` case, run in a subprocess whose RLIMIT_NOFILE is low.

Usage: ``python emfile_server.py CERT_AND_KEY.pem``. The test sets the limit (in the
child, before this runs). This program prints one JSON line when it serves -- its port
and how many file descriptors it has left -- serves an echo until its stdin closes, shuts
down gracefully, and prints a second JSON line: the server's counters, and what it left
behind (see ``harness.Snapshot``). ``accept()`` errors are logged to stderr, where the
test watches for them.
"""

from __future__ import annotations

import json
import logging
import resource
import ssl
import sys
from pathlib import Path

import trio

import trio_accept

# The harness, for its Snapshot: this file runs as a script, outside the test package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hostile.harness import Snapshot, echo, open_fds


async def serve(context: ssl.SSLContext) -> None:
    stdin = trio.lowlevel.FdStream(0)
    before = Snapshot.take()
    async with trio_accept.open_server(
        echo,
        host="127.0.0.1",
        ssl_context=context,
        hello_timeout=30,
        handshake_timeout=30,
        shutdown_grace=1,
    ) as server:
        limit, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        ready = {"port": server.addresses[0][1], "free": limit - open_fds()}
        print(json.dumps(ready), flush=True)
        while await stdin.receive_some():
            pass
    await stdin.aclose()
    stats = server.stats
    result = {
        "accepted": stats.accepted,
        "completed": stats.completed,
        "failed": {reason.value: count for reason, count in stats.failed.items()},
        "accept_errors": stats.accept_errors,
        "leaks": Snapshot.take().leaks_since(before),
    }
    print(json.dumps(result), flush=True)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    context = trio_accept.server_context(sys.argv[1])
    trio.run(serve, context)


if __name__ == "__main__":
    main()
