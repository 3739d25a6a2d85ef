"""The ``trio-accept`` command (``python -m trio_accept``)."""

from __future__ import annotations

import argparse
import logging
import signal
import ssl
import sys
import tempfile
import warnings
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Final

import trio
import trustme

from ._config import CertificateError, CertificateStore, CertificateWarning, dev_context
from ._devcerts import DEV_IDENTITIES, dev_ca, dev_ca_path, state_directory
from ._listener import Server, current_server, open_server
from ._stream import TLSStream

#: The command binds loopback only unless asked: a dev server must not appear on the
#: network by accident.
DEFAULT_HOST: Final = "127.0.0.1"
#: The conventional alternative HTTPS port, usable without root.
DEFAULT_PORT: Final = 8443

logger = logging.getLogger("trio_accept")


def build_parser() -> argparse.ArgumentParser:
    """The command's argument parser."""
    parser = argparse.ArgumentParser(
        prog="trio-accept",
        description="A TLS server for Trio, built on OpenSSL's SSL_accept.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="run a TLS echo server",
        description="Run a TLS echo server. Without --cert/--key it uses development "
        "certificates from a local CA that clients can be told to trust.",
    )
    serve.add_argument(
        "--host", default=DEFAULT_HOST, help="address to bind (default: %(default)s)"
    )
    serve.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="TCP port, 0 for any (default: %(default)s)"
    )
    serve.add_argument("--cert", type=Path, help="certificate chain (PEM)")
    serve.add_argument("--key", type=Path, help="private key (PEM)")
    serve.add_argument(
        "--dev-ca",
        type=Path,
        metavar="DIR",
        help=f"directory of the development CA (default: {state_directory()})",
    )
    scenario = commands.add_parser(
        "scenario",
        help="run a misbehaving TLS server from the scenario catalogue",
        description="Run one scenario of the catalogue of misbehaving TLS servers (an "
        "expired certificate, a stalling server, ...) on 127.0.0.1 and an ephemeral port, "
        "until Ctrl-C or SIGTERM. The certificates come from the development CA.",
    )
    scenario.add_argument("name", nargs="?", metavar="NAME", help="the scenario to run")
    scenario.add_argument("--list", action="store_true", help="list the scenarios and exit")
    scenario.add_argument(
        "--dev-ca",
        "--ca-dir",
        dest="dev_ca",
        type=Path,
        metavar="DIR",
        help=f"directory of the development CA (default: {state_directory()})",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``trio-accept``; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.command == "scenario":
        return _scenario_command(args.name, list_them=args.list, dev_ca_directory=args.dev_ca)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if (args.cert is None) != (args.key is None):
        print("trio-accept: --cert and --key go together", file=sys.stderr)
        return 2
    for option, path in (("--cert", args.cert), ("--key", args.key)):
        if path is not None and not path.is_file():
            print(f"trio-accept: {option} {path}: no such file", file=sys.stderr)
            return 2
    warnings.simplefilter("ignore", CertificateWarning)  # logged already, once is enough
    try:
        store, description, ca_path = _certificates(args.cert, args.key, args.dev_ca)
    except (OSError, ssl.SSLError, CertificateError) as exc:
        if args.cert is not None:
            what = f"the certificate {args.cert} with the key {args.key}"
        else:
            what = f"the dev CA in {args.dev_ca or state_directory()}"
        print(f"trio-accept: cannot load {what}: {exc}", file=sys.stderr)
        return 2
    try:
        return trio.run(_serve, args.host, args.port, store, description, ca_path)
    except KeyboardInterrupt:  # Ctrl-C before the signal handler was in place, or after
        return 130


def _certificates(
    cert: Path | None, key: Path | None, dev_ca: Path | None
) -> tuple[CertificateStore, str, Path | None]:
    """The reloadable certificates, a description of them, and the dev CA if used."""
    if cert is not None and key is not None:
        return CertificateStore.from_files(cert, key), f"certificate {cert}", None
    ca_path = dev_ca_path(dev_ca)
    description = f"dev certificate for {', '.join(DEV_IDENTITIES)}"
    return CertificateStore(lambda: dev_context(dev_ca)), description, ca_path


async def echo(stream: TLSStream) -> None:
    """Send back whatever arrives, until the client closes or the server shuts down."""
    server = current_server()
    async with trio.open_nursery() as nursery:

        async def stop_at_shutdown() -> None:
            await server.wait_shutting_down()
            nursery.cancel_scope.cancel()

        nursery.start_soon(stop_at_shutdown)
        async for data in stream:
            await stream.send_all(data)
        nursery.cancel_scope.cancel()


async def _serve(
    host: str, port: int, store: CertificateStore, description: str, ca_path: Path | None
) -> int:
    """Serve until a signal: the first SIGINT or SIGTERM shuts down gracefully, a second
    stops at once; SIGHUP reloads the certificates.

    Returns the exit status.
    """
    try:
        listeners = await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        print(f"trio-accept: cannot listen on {host} port {port}: {exc}", file=sys.stderr)
        return 2
    with (
        trio.CancelScope() as stop_now,
        trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals,
    ):
        async with trio.open_nursery() as nursery:
            async with open_server(echo, listeners=listeners, ssl_context=store) as server:
                _print_banner(server, description, ca_path)
                nursery.start_soon(_watch_signals, signals, server, store, stop_now)
                await server.wait_shutting_down()
            nursery.cancel_scope.cancel()  # shut down: stop watching for signals
    logger.info("stopped")
    return 0


async def _watch_signals(
    signals: AsyncIterator[int],
    server: Server,
    store: CertificateStore,
    stop_now: trio.CancelScope,
) -> None:
    async for signum in signals:
        name = signal.Signals(signum).name
        if signum == signal.SIGHUP:
            logger.info("SIGHUP: reloading the certificates")
            store.reload()  # logs the outcome; a failure keeps the current certificates
            continue
        if server.shutting_down:
            logger.warning("%s again: stopping now", name)
            stop_now.cancel()
            return
        logger.info("%s: shutting down gracefully (again to stop at once)", name)
        server.start_shutdown()


def _print_banner(server: Server, description: str, ca_path: Path | None) -> None:
    for host, port, *_ in server.addresses:
        shown = f"[{host}]" if ":" in host else host
        print(f"trio-accept: TLS echo server on {shown}:{port} ({description})", flush=True)
    if ca_path is not None:
        port = server.addresses[0][1]
        print(f"  dev CA: {ca_path}", flush=True)
        print("  try it (type a line, it comes back):", flush=True)
        print(
            f"    openssl s_client -connect localhost:{port} -CAfile {ca_path} -quiet", flush=True
        )
        print("  or see curl's request echoed back:", flush=True)
        print(
            f"    curl --http0.9 --max-time 1 --cacert {ca_path} https://localhost:{port}/",
            flush=True,
        )


# -- trio-accept scenario ----------------------------------------------------------------


def _scenario_command(name: str | None, *, list_them: bool, dev_ca_directory: Path | None) -> int:
    """``trio-accept scenario``: list the catalogue, or run one scenario."""
    from .testing._scenarios import SCENARIOS, get_scenario  # noqa: PLC0415 - only here

    if list_them:
        for scenario in SCENARIOS.values():
            print(f"{scenario.name}\n  {scenario.description}\n  expected: {scenario.expected}")
        return 0
    if name is None:
        print("trio-accept scenario: give a NAME (or --list)", file=sys.stderr)
        return 2
    try:
        get_scenario(name)
    except ValueError as exc:
        print(f"trio-accept scenario: {exc}", file=sys.stderr)
        return 2
    try:
        ca, ca_path = dev_ca(dev_ca_directory)
    except (OSError, ValueError) as exc:
        where = dev_ca_directory or state_directory()
        print(f"trio-accept: cannot load the dev CA in {where}: {exc}", file=sys.stderr)
        return 2
    try:
        with tempfile.TemporaryDirectory(prefix="trio-accept-scenario-") as directory:
            return trio.run(_run_scenario, name, ca, ca_path, Path(directory))
    except KeyboardInterrupt:  # Ctrl-C before the signal handler was in place
        return 130


async def _run_scenario(name: str, ca: trustme.CA, ca_path: Path, directory: Path) -> int:
    from .testing._scenarios import get_scenario, open_trio_scenario  # noqa: PLC0415

    scenario = get_scenario(name)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with open_trio_scenario(name, ca=ca, ca_path=ca_path, directory=directory) as server:
            print(f"trio-accept: scenario {name} on {server.url}", flush=True)
            print(f"  serving on: {server.host}:{server.port}", flush=True)
            print(f"  CA: {ca_path}", flush=True)
            if server.client_cert is not None:
                cert_path, key_path = directory / "client.pem", directory / "client-key.pem"
                server.client_cert.cert_chain_pems[0].write_to_path(str(cert_path))
                server.client_cert.private_key_pem.write_to_path(str(key_path))
                print(f"  client certificate: {cert_path}", flush=True)
                print(f"  client key: {key_path}", flush=True)
            print(f"  server: {scenario.description}", flush=True)
            print(f"  expected: {scenario.expected}", flush=True)
            print(f"  try it: curl --cacert {ca_path} {server.url}", flush=True)
            async for signum in signals:
                print(f"trio-accept: {signal.Signals(signum).name}: stopping", file=sys.stderr)
                break
    return 0
