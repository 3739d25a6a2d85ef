"""The ``trio-accept`` command (``python -m trio_accept``).

``serve`` in one process, step by step (each step that can fail exits with status 2 and
one line saying why, before anything is served):

1. the settings: defaults, ``--config FILE``, the command line (:mod:`._settings`);
2. the handler (``echo``, ``info``, ``MODULE:FUNCTION``, or the proxy to ``--upstream``);
3. the certificates, with the key's password from a variable or a file;
4. the listening sockets: bound here, inherited (``--fd``, systemd's ``LISTEN_FDS``);
5. the metrics endpoint, then the switch to ``--user``/``--group`` -- after everything
   that may need root, before anything a client can reach;
6. serve until a signal: SIGINT/SIGTERM graceful (a second one: at once), SIGHUP reload,
   SIGUSR1 a stats line; systemd hears READY/RELOADING/STOPPING.

With ``--workers N`` (:mod:`._workers`) the same command runs N times under a supervisor,
each copy told its worker number; the supervisor checks steps 1-3 first so that a typo is
reported once, not by N workers (and so is a warning, such as a key that every user can
read: the workers do not repeat it).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import logging
import os
import shlex
import signal
import socket
import ssl
import sys
import tempfile
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Final, cast, final

import trio
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from ._config import (
    CertificateError,
    CertificateStore,
    CertificateWarning,
    SNICertificate,
    server_context,
)
from ._devcerts import CA_KEY_FILE, DEV_IDENTITIES, dev_ca, dev_ca_path, state_directory
from ._listener import Server, current_server, open_server
from ._metrics import (
    MULTIPROC_VARIABLE,
    Metrics,
    MetricsServer,
    MetricsUnavailable,
    certificate_expiry,
    listen_address,
    mark_worker_dead,
)
from ._process import (
    Identity,
    SetupError,
    bind,
    check_key_permissions,
    describe_address,
    drop_privileges,
    identity,
    inherited,
    key_password,
)
from ._settings import (
    BINDING,
    DEFAULT_HOST,
    DEFAULT_PORT,
    OPENSSL_GROUPS,
    Settings,
    SettingsError,
    add_arguments,
    load_settings,
    spelling,
)
from ._stats import STATS_FIELD, encode_stats, stats_line
from ._stream import TLSStream
from ._systemd import SystemdError, listen_fds, notify, reloading_fields
from ._workers import Supervisor

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "build_parser", "main", "stats_line"]

logger = logging.getLogger("trio_accept")

#: A connection handler, as :func:`~trio_accept.open_server` takes them.
Handler = Callable[[TLSStream], Awaitable[object]]

LOG_FORMAT: Final = "%(asctime)s %(levelname)s %(message)s"
#: The display name of the dev CA in a browser's certificate store.
NSS_NICKNAME: Final = "trio-accept dev CA"


def build_parser() -> argparse.ArgumentParser:
    """The command's argument parser."""
    parser = argparse.ArgumentParser(
        prog="trio-accept",
        description="A TLS server for Trio, built on OpenSSL's SSL_accept.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="run a TLS server: echo, info, your handler, or a TLS-terminating proxy",
        description="Run a TLS server. Without --cert/--key it uses development "
        "certificates from a local CA that clients can be told to trust (see "
        "'trio-accept ca'). Settings come from the options below, after those of "
        "--config FILE. Signals: SIGINT/SIGTERM shut down gracefully (a second one "
        "stops at once), SIGHUP reloads the certificates, SIGUSR1 logs a stats line.",
    )
    add_arguments(serve)
    # How the supervisor of --workers starts each worker; not for people.
    serve.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    serve.add_argument("--supervisor-fd", type=int, help=argparse.SUPPRESS)
    # The listening sockets the supervisor shares (its --fd's or LISTEN_FDS): they win
    # over everything the settings say about sockets, and were reported by it.
    serve.add_argument("--worker-fd", type=int, action="append", help=argparse.SUPPRESS)
    ca = commands.add_parser(
        "ca",
        help="create or show the development CA, and how to trust it",
        description="Create the development CA if there is none, show where it is, "
        "its subject and expiry, and how to make clients trust it.",
    )
    ca.add_argument(
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
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.command == "scenario":
        return _scenario_command(args.name, list_them=args.list, dev_ca_directory=args.dev_ca)
    if args.command == "ca":
        return _ca_command(args.dev_ca)
    # The subcommand comes first (the parser has no global options): the rest is
    # what a worker is started with again.
    return _serve_command(args, argv[1:])


def _error(message: str) -> int:
    print(f"trio-accept: {message}", file=sys.stderr)
    return 2


# -- serve: what to run ------------------------------------------------------------------


@final
@dataclass
class _Certificates:
    """The reloadable certificates, and when they expire (updated on every load)."""

    description: str
    ca_path: Path | None = None
    expiries: dict[str, Any] = field(default_factory=dict[str, Any])
    on_load: Callable[[Mapping[str, Any]], object] | None = None
    store: CertificateStore = field(init=False)


@final
@dataclass
class _Plan:
    """What ``serve`` runs, once every setting checked out."""

    settings: Settings
    handler: Handler
    what: str
    certificates: _Certificates


def _prepare(settings: Settings, *, worker: bool) -> _Plan:
    """Steps 2 and 3 (see the module notes); a worker does not repeat the supervisor's
    warnings.

    Raises:
        SettingsError, SetupError: a setting cannot be used.
        CertificateError, OSError, ssl.SSLError: the certificates cannot be loaded.
    """
    handler, what = resolve_handler(settings)
    password = key_password(env=settings.key_password_env, file=settings.key_password_file)
    keys = [settings.key] if settings.key is not None else []
    keys += [entry.key or entry.cert for entry in settings.sni]
    if not worker:
        check_key_permissions(keys)
    return _Plan(settings, handler, what, _certificates(settings, password))


def _certificates(settings: Settings, password: str | None) -> _Certificates:
    sni: dict[str, SNICertificate] = {}
    for entry in settings.sni:
        key = entry.key or entry.cert
        sni[entry.name] = (entry.cert, key) if password is None else (entry.cert, key, password)
    options: dict[str, Any] = {
        "password": password,
        "profile": settings.profile,
        "alpn": list(settings.alpn) or None,
        "client_ca": settings.client_ca,
        "require_client_cert": settings.require_client_cert,
        "sni": sni or None,
        "strict_sni": settings.strict_sni,
        "session_tickets": settings.session_tickets,
        "keylog_file": settings.keylog_file,
        "dev_ca_directory": settings.dev_ca,
    }
    if settings.tls_group is not None:
        options["group"] = None if settings.tls_group == OPENSSL_GROUPS else settings.tls_group
    expiring: dict[str, Path] = {"default": settings.cert} if settings.cert else {}
    expiring |= {entry.name: entry.cert for entry in settings.sni}
    files = [settings.cert, settings.key, settings.client_ca]
    files += [path for entry in settings.sni for path in (entry.cert, entry.key)]
    if settings.cert is not None:
        result = _Certificates(f"certificate {settings.cert}")
    else:
        result = _Certificates(f"dev certificate for {', '.join(DEV_IDENTITIES)}")
        result.ca_path = dev_ca_path(settings.dev_ca)
        # The dev leaf is issued afresh at each start; no client that trusts the dev CA
        # accepts it past the CA's own expiry, so that is the one to watch.
        expiring["default"] = result.ca_path

    def factory() -> ssl.SSLContext:
        context = server_context(settings.cert, settings.key, **options)
        result.expiries = {name: certificate_expiry(path) for name, path in expiring.items()}
        if result.on_load is not None:
            result.on_load(result.expiries)
        return context

    result.store = CertificateStore(factory, files=[path for path in files if path is not None])
    return result


def resolve_handler(settings: Settings) -> tuple[Handler, str]:
    """The connection handler the settings ask for, and what to call the server.

    Raises:
        SetupError: ``MODULE:FUNCTION`` cannot be imported or is not an async function;
            the upstream address is malformed.
    """
    if settings.upstream is not None:
        from ._relay import parse_host_port, relay_handler  # noqa: PLC0415

        try:
            host, port = parse_host_port(settings.upstream)
        except ValueError as exc:
            raise SetupError(f"upstream (--upstream): {exc}") from None
        relay = relay_handler(
            host,
            port,
            proxy_protocol=settings.upstream_proxy_protocol,
            connect_timeout=settings.upstream_connect_timeout,
        )
        return relay, f"proxy to {settings.upstream}"
    if settings.handler == "echo":
        return echo, "echo server"
    if settings.handler == "info":
        from ._info import info_handler  # noqa: PLC0415

        return info_handler, "info server"
    return load_handler(settings.handler), f"server ({settings.handler})"


def load_handler(spec: str) -> Handler:
    """Import ``MODULE:FUNCTION`` (the current directory is searched first, as with
    ``python -m``).

    Raises:
        SetupError: Saying what is wrong with it.
    """
    where = f"handler (--handler) {spec}"
    module_name, colon, attribute = spec.partition(":")
    if not colon or not module_name or not attribute:
        raise SetupError(f"{where}: use echo, info or MODULE:FUNCTION")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        found: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise SetupError(f"{where}: cannot import {module_name}: {exc}") from None
    except Exception as exc:  # the user's module raised on import: say what
        raise SetupError(
            f"{where}: importing {module_name} failed: {type(exc).__name__}: {exc}"
        ) from None
    for part in attribute.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise SetupError(f"{where}: {module_name} has no attribute {attribute!r}") from None
    if not callable(found):
        raise SetupError(f"{where}: {attribute} is a {type(found).__name__}, not a function")
    call = found if inspect.isroutine(found) else getattr(found, "__call__", None)  # noqa: B004
    if not inspect.iscoroutinefunction(call):
        raise SetupError(
            f"{where}: {attribute} is not an async function; define it as "
            "'async def handler(stream):'"
        )
    return cast("Handler", found)


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


def server_options(settings: Settings) -> dict[str, Any]:
    """The keyword arguments of :func:`~trio_accept.open_server` the settings give."""
    return {
        "hello_timeout": settings.hello_timeout,
        "handshake_timeout": settings.handshake_timeout,
        "close_timeout": settings.close_timeout,
        "idle_timeout": settings.idle_timeout,
        "max_connections": settings.max_connections,
        "max_handshakes": settings.max_handshakes,
        "shutdown_grace": settings.shutdown_grace,
        "tolerate_ragged_eof": settings.tolerate_ragged_eof,
        **({} if settings.plain_http_response else {"plain_http_response": None}),
        "proxy_protocol": settings.proxy_protocol,
    }


# -- serve: the command -----------------------------------------------------------------


def _configure_logging(level: str, worker: int | None) -> None:
    prefix = "" if worker is None else f"worker {worker} [%(process)d] "
    logging.basicConfig(
        level=level.upper(), format=LOG_FORMAT.replace("%(message)s", prefix + "%(message)s")
    )


def _serve_command(args: argparse.Namespace, argv: list[str]) -> int:
    try:
        settings = load_settings(args)
    except SettingsError as exc:
        return _error(str(exc))
    worker: int | None = args.worker_index
    _configure_logging(settings.log_level, worker)
    warnings.simplefilter("ignore", CertificateWarning)  # logged already, once is enough
    try:
        plan = _prepare(settings, worker=worker is not None)
    except (SettingsError, SetupError) as exc:
        return _error(str(exc))
    except (OSError, ssl.SSLError, CertificateError) as exc:
        if settings.cert is not None:
            what = f"the certificate {settings.cert} with the key {settings.key}"
        else:
            what = f"the dev CA in {settings.dev_ca or state_directory()}"
        return _error(f"cannot load {what}: {exc}")
    if settings.workers > 1 and worker is None:
        return _supervise(plan, argv)
    return _serve_here(
        plan, worker=worker, lifeline=args.supervisor_fd, shared=args.worker_fd or []
    )


def _inherited_fds(settings: Settings) -> tuple[list[int], str]:
    """The inherited listening descriptors -- ``--fd``'s, else systemd's -- and where they
    come from; none when the command is to bind.

    Raises:
        SystemdError: ``LISTEN_FDS`` is malformed.
    """
    if settings.fd:
        return list(settings.fd), "fd (--fd)"
    return listen_fds(), "LISTEN_FDS"


def _report_ignored(settings: Settings, source: str) -> None:
    """Inherited sockets win over host, port and backlog: say so once if any was given
    (typically by a configuration file shared with a unit that binds)."""
    ignored = [spelling(name) for name in BINDING if name in settings.explicit]
    if ignored:
        logger.info(
            "serving on the inherited sockets of %s: %s ignored", source, ", ".join(ignored)
        )


def _open_sockets(
    settings: Settings, *, reuse_port: bool, shared: Sequence[int] = ()
) -> list[socket.socket]:
    """The listening sockets: the supervisor's (``shared``), ``--fd``'s, systemd's, or
    bound here.

    Raises:
        SetupError, SystemdError: an inherited descriptor is unusable.
        OSError: binding failed.
    """
    if shared:
        return [inherited(fd, source="the supervisor's sockets") for fd in shared]
    fds, source = _inherited_fds(settings)
    if fds:
        _report_ignored(settings, source)
        return [inherited(fd, source=source) for fd in fds]
    return bind(settings.host, settings.port, backlog=settings.backlog, reuse_port=reuse_port)


def trio_listeners(sockets: Sequence[socket.socket]) -> list[trio.SocketListener]:
    """Trio listeners over listening sockets (inside ``trio.run``). Their connections are
    :class:`trio.SocketStream` objects, which turn ``TCP_NODELAY`` on: a TLS record is
    written whole, and waiting to coalesce it with the next would only add latency."""
    return [trio.SocketListener(trio.socket.from_stdlib_socket(sock)) for sock in sockets]


def _serve_here(
    plan: _Plan, *, worker: int | None, lifeline: int | None, shared: Sequence[int]
) -> int:
    settings = plan.settings
    try:
        sockets = _open_sockets(settings, reuse_port=worker is not None, shared=shared)
    except (SetupError, SystemdError) as exc:
        return _error(str(exc))
    except OSError as exc:
        return _error(f"cannot listen on {settings.host} port {settings.port}: {exc}")
    metrics_server: MetricsServer | None = None
    try:
        try:
            if settings.metrics is not None and worker is None:
                metrics_server = _metrics_server(settings.metrics)
            metrics = None
            if settings.metrics is not None:
                # A worker's values go to the supervisor's directory (multiprocess mode).
                # Made before the switch of user, like everything else that imports or
                # opens files: the switched-to user may not be able to read them.
                metrics = Metrics(metrics_server.registry if metrics_server else None)
                metrics.set_expiry(plan.certificates.expiries)
                plan.certificates.on_load = metrics.set_expiry
            who = identity(settings.user, settings.group)
            if who is not None:
                drop_privileges(who)
        except (SetupError, MetricsUnavailable) as exc:
            return _error(str(exc))
        try:
            serve = partial(
                _serve,
                plan,
                sockets,
                metrics=metrics,
                metrics_server=metrics_server,
                lifeline=lifeline,
                worker=worker,
            )
            return trio.run(serve)
        except KeyboardInterrupt:  # Ctrl-C before the signal handler was in place, or after
            return 130
    finally:
        for sock in sockets:
            sock.close()
        if metrics_server is not None:
            metrics_server.close()


def _metrics_server(address: str, *, directory: Path | None = None) -> MetricsServer:
    """The metrics endpoint at ``HOST:PORT``.

    Raises:
        SetupError: The address is malformed or cannot be bound.
        MetricsUnavailable: prometheus-client is not installed.
    """
    try:
        host, port = listen_address(address)
    except ValueError as exc:
        raise SetupError(f"metrics (--metrics): {exc}") from None
    try:
        return MetricsServer(host, port, multiprocess_directory=directory)
    except OSError as exc:
        raise SetupError(f"metrics (--metrics) {address}: cannot listen: {exc}") from None


async def _serve(
    plan: _Plan,
    sockets: list[socket.socket],
    *,
    metrics: Metrics | None,
    metrics_server: MetricsServer | None,
    lifeline: int | None,
    worker: int | None,
) -> int:
    """Serve until a signal: the first SIGINT or SIGTERM shuts down gracefully, a second
    stops at once; SIGHUP reloads the certificates; SIGUSR1 logs the stats.

    Returns the exit status.
    """
    settings, store = plan.settings, plan.certificates.store
    handler = plan.handler if metrics is None else _observed(plan.handler, metrics)
    listeners = trio_listeners(sockets)
    sockets.clear()  # the listeners own them now
    signals_wanted = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1)
    served: list[Server] = []  # the server, for its final stats (even after a hard stop)
    with (
        trio.CancelScope() as stop_now,
        trio.open_signal_receiver(*signals_wanted) as signals,
    ):
        async with trio.open_nursery() as nursery:
            async with open_server(
                handler, listeners=listeners, ssl_context=store, **server_options(settings)
            ) as server:
                served.append(server)
                addresses = [describe_address(item.socket) for item in _socket_listeners(server)]
                if worker is None:  # a supervisor speaks for its workers
                    _print_banner(plan, addresses, metrics_server)
                where = ", ".join(f"{host}:{port}" for host, port in addresses)
                notify("READY=1", f"STATUS=TLS {plan.what} on {where}")
                report = partial(_report_stats, server, worker=worker)
                nursery.start_soon(_watch_signals, signals, server, store, stop_now, report)
                if settings.stats_interval is not None:
                    nursery.start_soon(_log_stats, report, settings.stats_interval)
                if settings.watch is not None:
                    nursery.start_soon(store.watch, settings.watch)
                if metrics is not None:
                    nursery.start_soon(_sync_metrics, server, metrics)
                if lifeline is not None:
                    nursery.start_soon(_watch_supervisor, lifeline, server)
                await server.wait_shutting_down()
                notify("STOPPING=1")
            nursery.cancel_scope.cancel()  # shut down: stop watching for signals
    for server in served:
        if metrics is not None:
            metrics.sync(server.stats)
        logger.info("stopped; %s", stats_line(server.stats))
    return 0


def _socket_listeners(server: Server) -> list[trio.SocketListener]:
    return [item for item in server.listeners if isinstance(item, trio.SocketListener)]


def _observed(handler: Handler, metrics: Metrics) -> Handler:
    async def observed(stream: TLSStream) -> None:
        metrics.observe_handshake(stream.info.handshake_seconds)
        await handler(stream)

    return observed


async def _watch_signals(
    signals: AsyncIterator[int],
    server: Server,
    store: CertificateStore,
    stop_now: trio.CancelScope,
    report_stats: Callable[[], object],
) -> None:
    async for signum in signals:
        name = signal.Signals(signum).name
        if signum == signal.SIGHUP:
            logger.info("SIGHUP: reloading the certificates")
            notify(*reloading_fields())
            store.reload()  # logs the outcome; a failure keeps the current certificates
            notify("READY=1")
            continue
        if signum == signal.SIGUSR1:
            report_stats()
            continue
        if server.shutting_down:
            logger.warning("%s again: stopping now", name)
            stop_now.cancel()
            return
        logger.info("%s: shutting down gracefully (again to stop at once)", name)
        server.start_shutdown()


def _report_stats(server: Server, *, worker: int | None) -> None:
    """Log the stats line, and show it in ``systemctl status`` -- a worker's through its
    supervisor, which shows every worker's sum (see :mod:`._stats`)."""
    stats = server.stats
    line = stats_line(stats)
    logger.info("%s", line)
    notify(f"STATUS={line}" if worker is None else f"{STATS_FIELD}={encode_stats(stats)}")


async def _log_stats(report: Callable[[], object], interval: float) -> None:
    while True:
        await trio.sleep(interval)
        report()


async def _sync_metrics(server: Server, metrics: Metrics) -> None:
    from ._metrics import SYNC_INTERVAL  # noqa: PLC0415

    while True:
        metrics.sync(server.stats)
        await trio.sleep(SYNC_INTERVAL)


async def _watch_supervisor(lifeline: int, server: Server) -> None:
    """A worker's end of the lifeline: EOF means the supervisor is gone."""
    await trio.lowlevel.wait_readable(lifeline)
    logger.warning("the supervisor is gone: shutting down")
    server.start_shutdown()


def _print_banner(
    plan: _Plan,
    shown: Sequence[tuple[str, str]],
    metrics_server: MetricsServer | None,
    *,
    pids: Sequence[int] = (),
) -> None:
    certificates = plan.certificates
    for host, port in shown:
        print(
            f"trio-accept: TLS {plan.what} on {host}:{port} ({certificates.description})",
            flush=True,
        )
    if pids:
        print(f"  workers: {len(pids)} (pids {', '.join(map(str, pids))})", flush=True)
    if metrics_server is not None:
        print(f"  metrics: {metrics_server.url}", flush=True)
    ca_path = certificates.ca_path
    if ca_path is not None and shown:
        port = shown[0][1]
        ca = shlex.quote(str(ca_path))
        print(f"  dev CA: {ca_path}", flush=True)
        if plan.what == "echo server":
            print("  try it (type a line, it comes back):", flush=True)
            print(
                f"    openssl s_client -connect localhost:{port} -CAfile {ca} -quiet",
                flush=True,
            )
            print("  or see curl's request echoed back:", flush=True)
            print(
                f"    curl --http0.9 --max-time 1 --cacert {ca} https://localhost:{port}/",
                flush=True,
            )
        else:
            print("  try it:", flush=True)
            print(f"    curl --cacert {ca} https://localhost:{port}/", flush=True)


# -- serve --workers N ---------------------------------------------------------------------


def _supervise(plan: _Plan, argv: list[str]) -> int:
    """Run ``plan.settings.workers`` copies of this command (see :mod:`._workers`)."""
    settings = plan.settings
    try:
        who = identity(settings.user, settings.group)
        fds, source = _inherited_fds(settings)
        shared = [inherited(fd, source=source) for fd in fds]
    except (SetupError, SystemdError) as exc:
        return _error(str(exc))
    if shared:
        _report_ignored(settings, source)
    if who is not None and who.is_current():
        who = None  # started as that user already (systemd's User=): nothing to switch
    reserved: list[socket.socket] = []
    # The workers take the shared sockets whatever their settings say of host and port
    # (their LISTEN_FDS would not be theirs: LISTEN_PID names the supervisor).
    extra = [argument for fd in fds for argument in ("--worker-fd", str(fd))]
    if not shared:  # each worker binds; the supervisor holds the port (and picks it)
        try:
            reserved = bind(settings.host, settings.port, reuse_port=True, listen=False)
        except OSError as exc:
            return _error(f"cannot listen on {settings.host} port {settings.port}: {exc}")
        extra += ["--port", str(reserved[0].getsockname()[1])]
    addresses = [describe_address(sock) for sock in shared or reserved]
    try:
        with tempfile.TemporaryDirectory(prefix="trio-accept-") as temporary:
            return _run_supervisor(
                plan, Path(temporary), argv=argv + extra, fds=fds, addresses=addresses, who=who
            )
    finally:
        for sock in reserved + shared:
            sock.close()


def _run_supervisor(
    plan: _Plan,
    state: Path,
    *,
    argv: list[str],
    fds: list[int],
    addresses: list[tuple[str, str]],
    who: Identity | None,
) -> int:
    settings = plan.settings
    env = {name: value for name, value in os.environ.items() if not name.startswith("LISTEN_")}
    metrics_directory = state / "metrics"
    metrics_server: MetricsServer | None = None
    if settings.metrics is not None:
        metrics_directory.mkdir()
        env[MULTIPROC_VARIABLE] = str(metrics_directory)
        try:
            metrics_server = _metrics_server(settings.metrics, directory=metrics_directory)
        except (SetupError, MetricsUnavailable) as exc:
            return _error(str(exc))
    if who is not None:  # the workers switch user: let them write here
        logger.info(
            "workers switch to uid %d, gid %d; the supervisor stays root to restart them",
            who.uid,
            who.gid,
        )
        for path in (state, metrics_directory):
            if path.exists():
                os.chown(path, who.uid, who.gid)

    def command(index: int, lifeline: int) -> list[str]:
        return [
            *(sys.executable, "-m", "trio_accept", "serve", *argv),
            *("--worker-index", str(index), "--supervisor-fd", str(lifeline)),
        ]

    def on_exit(pid: int) -> None:
        if metrics_server is not None:
            mark_worker_dead(pid, metrics_directory)

    def on_ready(pids: Sequence[int]) -> None:
        _print_banner(plan, addresses, metrics_server, pids=pids)

    supervisor = Supervisor(
        count=settings.workers,
        command=command,
        pass_fds=fds,
        env=env,
        state_directory=state,
        stop_timeout=settings.shutdown_grace + settings.close_timeout,
        on_exit=on_exit,
        on_ready=on_ready,
    )
    try:
        return trio.run(supervisor.run)
    except KeyboardInterrupt:
        return 130
    finally:
        if metrics_server is not None:
            metrics_server.close()


# -- trio-accept ca ------------------------------------------------------------------------


def _ca_command(directory: Path | None) -> int:
    """``trio-accept ca``: create or show the dev CA, and how to trust it."""
    where = directory or state_directory()
    existed = (where / "dev-ca.pem").exists()
    try:
        _, path = dev_ca(directory)
        certificate = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        return _error(f"cannot load the dev CA in {where}: {exc}")
    quoted = shlex.quote(str(path))
    fingerprint = certificate.fingerprint(hashes.SHA256()).hex(":").upper()
    lines = [
        f"trio-accept: dev CA {'in' if existed else 'created in'} {path.parent}",
        f"  certificate: {path}",
        f"  key: {path.parent / CA_KEY_FILE} (keep it private: it can issue certificates "
        "for any name that a client trusting this CA accepts)",
        f"  subject: {certificate.subject.rfc4514_string()}",
        f"  expires: {certificate.not_valid_after_utc:%Y-%m-%d %H:%M} UTC",
        f"  SHA-256: {fingerprint}",
        "",
        "How to trust it (development machines only):",
        f"  curl:                 curl --cacert {quoted} https://localhost:{DEFAULT_PORT}/",
        f"  Python, OpenSSL:      export SSL_CERT_FILE={quoted}   # replaces the system CAs",
        f"  openssl s_client:     openssl s_client -CAfile {quoted} -connect "
        f"localhost:{DEFAULT_PORT}",
        "  Chromium (NSS):       certutil -d sql:$HOME/.pki/nssdb -A -t C,, "
        f"-n {shlex.quote(NSS_NICKNAME)} -i {quoted}",
        "  Debian/Ubuntu system: sudo cp "
        f"{quoted} /usr/local/share/ca-certificates/trio-accept-dev-ca.crt "
        "&& sudo update-ca-certificates",
        "Undo: certutil -d sql:$HOME/.pki/nssdb -D "
        f"-n {shlex.quote(NSS_NICKNAME)}; sudo rm "
        "/usr/local/share/ca-certificates/trio-accept-dev-ca.crt "
        "&& sudo update-ca-certificates --fresh",
    ]
    print("\n".join(lines), flush=True)
    return 0


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
