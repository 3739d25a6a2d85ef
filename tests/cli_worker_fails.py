"""A handler module that loads in the supervisor of ``serve --workers`` but not in its
workers: for the test of a worker that fails before it is ready."""

from __future__ import annotations

import sys

import trio_accept

if "--worker-index" in sys.argv:
    raise RuntimeError("this module refuses to load in a worker")


async def handler(stream: trio_accept.TLSStream) -> None:
    """Never runs: the workers cannot import it."""
