"""The ``trio-accept`` command (``python -m trio_accept``)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    """The command's argument parser."""
    return argparse.ArgumentParser(
        prog="trio-accept",
        description="A TLS server for Trio, built on OpenSSL's SSL_accept.",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``trio-accept``; returns the exit status."""
    parser = build_parser()
    parser.parse_args(argv)
    parser.print_help()
    return 0
