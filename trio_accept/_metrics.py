"""Prometheus metrics for ``trio-accept serve --metrics HOST:PORT``.

The exposition is prometheus-client's (an optional dependency: ``pip install
trio-accept[metrics]``); this module only decides what to count and where it comes from:

- The listener's :class:`~trio_accept.ServerStats` are the source of truth for the
  counters and gauges. A task copies them every :data:`SYNC_INTERVAL` seconds
  (:meth:`Metrics.sync`), adding the difference to each counter -- the library needs no
  metrics hook, and nothing is counted twice.
- The handshake-duration histogram is fed by the command's handler wrapper, which sees
  every completed handshake's :attr:`~trio_accept.TLSInfo.handshake_seconds`.
- Certificate expiry is recorded as a timestamp whenever the certificates are (re)loaded;
  the *seconds until* expiry are computed when Prometheus scrapes
  (:class:`ExpiryCollector`), so they are never stale.

With ``--workers`` every worker writes its values to files in a directory that the
supervisor made (prometheus-client's multiprocess mode, ``PROMETHEUS_MULTIPROC_DIR``), and
the supervisor alone serves the endpoint, summing the workers: counters of workers that
died keep counting, gauges of workers that died are dropped (``livesum``).
"""

from __future__ import annotations

import datetime
import importlib
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Final, final

from cryptography import x509

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import Collector, CollectorRegistry

    from ._listener import ServerStats

logger = logging.getLogger("trio_accept")

#: Seconds between copies of the server's counters into the metrics: fresh enough for a
#: scrape interval of 15 s or more, cheap enough to go unnoticed.
SYNC_INTERVAL: Final = 1.0
#: Histogram buckets for handshake durations (seconds): a full handshake on loopback
#: takes about 1 ms of CPU; across the Internet it is dominated by round trips.
DURATION_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
#: The environment variable of prometheus-client's multiprocess mode.
MULTIPROC_VARIABLE: Final = "PROMETHEUS_MULTIPROC_DIR"

PREFIX: Final = "trio_accept_"
EXPIRY_TIMESTAMP: Final = PREFIX + "certificate_expiry_timestamp_seconds"
EXPIRY_SECONDS: Final = PREFIX + "certificate_expiry_seconds"


class MetricsUnavailable(RuntimeError):
    """``--metrics`` without prometheus-client installed."""


def _import_client() -> None:
    try:
        importlib.import_module("prometheus_client")  # optional: only with --metrics
    except ImportError:
        raise MetricsUnavailable(
            "metrics (--metrics): prometheus-client is not installed; "
            "pip install 'trio-accept[metrics]'"
        ) from None


def listen_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6ADDR]:PORT`` for the endpoint; port 0 picks a free one (the
    banner says which).

    Raises:
        ValueError: Saying what is wrong.
    """
    host, colon, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{text!r}: write an IPv6 address in brackets, as in [::1]:9100")
    if not colon or not host:
        raise ValueError(f"{text!r}: expected HOST:PORT, as in 127.0.0.1:9100")
    if not (port.isascii() and port.isdigit() and int(port) <= 65535):  # noqa: PLR2004
        raise ValueError(f"{text!r}: the port must be a number, 0-65535")
    return host, int(port)


def certificate_expiry(path: Path) -> datetime.datetime | None:
    """When the first certificate in a PEM file expires, or None if it cannot be read."""
    try:
        return x509.load_pem_x509_certificate(path.read_bytes()).not_valid_after_utc
    except (OSError, ValueError):
        return None


@final
class Metrics:
    """The metrics of one serving process, kept in ``registry`` (or, in multiprocess mode,
    in the files of ``PROMETHEUS_MULTIPROC_DIR``).

    Args:
        registry: Where to register them; a fresh private registry by default.

    Raises:
        MetricsUnavailable: prometheus-client is not installed.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        _import_client()
        from prometheus_client import (  # noqa: PLC0415 - optional
            CollectorRegistry,
            Counter,
            Gauge,
            Histogram,
        )

        self.registry: CollectorRegistry = registry or CollectorRegistry()
        registry = self.registry

        def counter(name: str, documentation: str, *labels: str) -> Counter:
            return Counter(PREFIX + name, documentation, labels, registry=registry)

        self.handshakes = counter(
            "handshakes",
            "TLS handshakes by result (completed, failed) and failure reason",
            "result",
            "reason",
        )
        self.accepted = counter("connections_accepted", "TCP connections accepted")
        self.closed = counter("connections_closed", "Established connections closed")
        self.broken = counter(
            "connections_broken",
            "Established connections the peer broke (reset, EOF without close_notify, alert)",
            "reason",
        )
        self.idle_closed = counter(
            "connections_idle_closed", "Established connections closed for idling"
        )
        self.handler_errors = counter("handler_errors", "Handlers that raised")
        self.accept_errors = counter(
            "accept_errors", "accept() failures backed off (EMFILE, ENOBUFS, ...)"
        )
        self.active = Gauge(
            PREFIX + "connections_active",
            "Established connections open now",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.in_flight = Gauge(
            PREFIX + "handshakes_in_flight",
            "Handshakes in progress now",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.duration = Histogram(
            PREFIX + "handshake_duration_seconds",
            "Duration of completed handshakes, from accept to finished",
            registry=registry,
            buckets=DURATION_BUCKETS,
        )
        self.expiry = Gauge(
            EXPIRY_TIMESTAMP,
            "When the certificate expires (Unix time), by certificate: default or the SNI name",
            ["certificate"],
            registry=registry,
            multiprocess_mode="livemin",
        )
        self._seen: ServerStats | None = None
        self._expiring: set[str] = set()

    def observe_handshake(self, seconds: float) -> None:
        """Record a completed handshake's duration."""
        self.duration.observe(seconds)

    def set_expiry(self, expiries: Mapping[str, datetime.datetime | None]) -> None:
        """Record the expiry of the certificates in use (after a load or reload)."""
        for name in self._expiring - set(expiries):
            self.expiry.remove(name)
        self._expiring = set()
        for name, when in expiries.items():
            if when is not None:
                self.expiry.labels(name).set(when.timestamp())
                self._expiring.add(name)

    def sync(self, stats: ServerStats) -> None:
        """Bring the counters and gauges up to date with ``stats``."""
        seen = self._seen
        for counter, now, before in (
            (self.accepted, stats.accepted, seen.accepted if seen else 0),
            (self.closed, stats.closed, seen.closed if seen else 0),
            (self.idle_closed, stats.idle_closed, seen.idle_closed if seen else 0),
            (self.handler_errors, stats.handler_errors, seen.handler_errors if seen else 0),
            (self.accept_errors, stats.accept_errors, seen.accept_errors if seen else 0),
        ):
            if now > before:
                counter.inc(now - before)
        completed = stats.completed - (seen.completed if seen else 0)
        if completed:
            self.handshakes.labels("completed", "").inc(completed)
        for reason, count in stats.failed.items():
            new = count - (seen.failed.get(reason, 0) if seen else 0)
            if new:
                self.handshakes.labels("failed", reason.value).inc(new)
        for reason, count in stats.broken.items():
            new = count - (seen.broken.get(reason, 0) if seen else 0)
            if new:
                self.broken.labels(reason.value).inc(new)
        self.active.set(stats.active_connections)
        self.in_flight.set(stats.handshakes_in_flight)
        self._seen = stats


@final
class ExpiryCollector:
    """Everything ``inner`` collects, plus ``trio_accept_certificate_expiry_seconds``:
    seconds until each certificate expires, computed from the expiry timestamps at the
    moment of the scrape (negative once expired)."""

    def __init__(self, inner: Collector) -> None:
        self._inner = inner

    def describe(self) -> Iterable[Metric]:
        """No names to reserve: the inner collector's are its own."""
        return ()

    def collect(self) -> Iterator[Metric]:
        """The inner metrics, and the derived seconds until expiry."""
        from prometheus_client.core import GaugeMetricFamily  # noqa: PLC0415 - optional

        now = time.time()
        for metric in self._inner.collect():
            yield metric
            if metric.name == EXPIRY_TIMESTAMP:
                seconds = GaugeMetricFamily(
                    EXPIRY_SECONDS,
                    "Seconds until the certificate expires, by certificate (negative: expired)",
                    labels=["certificate"],
                )
                for sample in metric.samples:
                    seconds.add_metric([sample.labels["certificate"]], sample.value - now)
                yield seconds


@final
class MetricsServer:
    """The HTTP endpoint (prometheus-client's, in a thread of its own), until closed.

    Args:
        host: Address to bind.
        port: TCP port, 0 for a free one.
        multiprocess_directory: Serve the sum of the workers' values in this directory;
            without it, what is registered in :attr:`registry`.

    Raises:
        MetricsUnavailable: prometheus-client is not installed.
        OSError: The address cannot be bound.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        multiprocess_directory: Path | None = None,
    ) -> None:
        _import_client()
        from prometheus_client import CollectorRegistry, start_http_server  # noqa: PLC0415
        from prometheus_client.multiprocess import MultiProcessCollector  # noqa: PLC0415

        #: Where a single process registers its metrics (see :class:`Metrics`).
        self.registry: CollectorRegistry = CollectorRegistry()
        collector: Collector = self.registry
        if multiprocess_directory is not None:
            collector = MultiProcessCollector(  # type: ignore[no-untyped-call]
                None, path=str(multiprocess_directory)
            )
        served = CollectorRegistry()
        served.register(ExpiryCollector(collector))
        self._server: WSGIServer
        self._thread: threading.Thread
        self._server, self._thread = start_http_server(port, host, registry=served)
        address = self._server.socket.getsockname()
        shown = f"[{address[0]}]" if ":" in address[0] else address[0]
        #: The endpoint's URL.
        self.url: str = f"http://{shown}:{address[1]}/metrics"

    def close(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def mark_worker_dead(pid: int, directory: Path) -> None:
    """Drop a dead worker's gauges from the sums (its counters still count)."""
    from prometheus_client.multiprocess import (  # noqa: PLC0415
        mark_process_dead,  # pyright: ignore[reportUnknownVariableType]
    )

    mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]


def multiprocess_mode() -> bool:
    """Whether this process writes its metrics for a supervisor to sum."""
    return bool(os.environ.get(MULTIPROC_VARIABLE))
