"""Prometheus metrics (``serve --metrics``): what is counted, and the endpoint. The command
is scraped end to end, with workers, in test_workers."""

from __future__ import annotations

import datetime
import socket
import time
import urllib.request
from collections.abc import Mapping

import pytest

from trio_accept import Reason, ServerStats
from trio_accept._metrics import (
    EXPIRY_SECONDS,
    ExpiryCollector,
    Metrics,
    MetricsServer,
    listen_address,
)

pytest.importorskip("prometheus_client")


def stats(
    accepted: int, completed: int, failed: Mapping[Reason, int], active: int = 0
) -> ServerStats:
    return ServerStats(
        accepted=accepted,
        handshakes_in_flight=accepted - completed - sum(failed.values()),
        silent=0,
        completed=completed,
        failed=dict(failed),
        active_connections=active,
        closed=completed - active,
        idle_closed=0,
        handler_errors=0,
        accept_errors=0,
    )


def test_listen_address() -> None:
    assert listen_address("127.0.0.1:9100") == ("127.0.0.1", 9100)
    assert listen_address("[::1]:0") == ("::1", 0)
    assert listen_address("localhost:9100") == ("localhost", 9100)
    for bad in ("9100", ":9100", "::1:9100", "host:x", "host:70000", "host:"):
        with pytest.raises(ValueError, match=r"expected HOST:PORT|brackets|port must be"):
            listen_address(bad)


def test_sync_adds_what_changed() -> None:
    metrics = Metrics()
    value = metrics.registry.get_sample_value
    metrics.sync(stats(3, 1, {Reason.TIMEOUT: 1}, active=1))
    metrics.sync(stats(7, 3, {Reason.TIMEOUT: 1, Reason.PLAIN_HTTP: 2}, active=2))
    assert value("trio_accept_connections_accepted_total") == 7
    completed = {"result": "completed", "reason": ""}
    assert value("trio_accept_handshakes_total", completed) == 3
    timeout = {"result": "failed", "reason": "timeout"}
    assert value("trio_accept_handshakes_total", timeout) == 1
    plain = {"result": "failed", "reason": "plain-http"}
    assert value("trio_accept_handshakes_total", plain) == 2
    assert value("trio_accept_handshakes_in_flight") == 1
    assert value("trio_accept_connections_active") == 2
    assert value("trio_accept_connections_closed_total") == 1
    metrics.observe_handshake(0.003)
    assert value("trio_accept_handshake_duration_seconds_count") == 1
    assert value("trio_accept_handshake_duration_seconds_bucket", {"le": "0.005"}) == 1
    assert value("trio_accept_handshake_duration_seconds_bucket", {"le": "0.0025"}) == 0


def test_seconds_until_expiry_are_computed_at_scrape_time() -> None:
    metrics = Metrics()
    soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
    metrics.set_expiry({"default": soon, "api.example.com": None})
    collector = ExpiryCollector(metrics.registry)
    before = time.time()
    families = {family.name: family for family in collector.collect()}
    after = time.time()
    (sample,) = families[EXPIRY_SECONDS].samples
    assert sample.labels == {"certificate": "default"}
    assert soon.timestamp() - after <= sample.value <= soon.timestamp() - before
    # A certificate no longer configured (a reload dropped an SNI name) disappears.
    metrics.set_expiry({"api.example.com": soon})
    families = {family.name: family for family in collector.collect()}
    assert [s.labels for s in families[EXPIRY_SECONDS].samples] == [
        {"certificate": "api.example.com"}
    ]


def test_the_endpoint_serves_and_closes() -> None:
    server = MetricsServer("127.0.0.1", 0)
    metrics = Metrics(server.registry)
    metrics.sync(stats(1, 1, {}))
    try:
        assert server.url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(server.url, timeout=10) as response:
            text = response.read().decode()
        assert "trio_accept_connections_accepted_total 1.0" in text
        port = int(server.url.rsplit(":", 1)[1].split("/")[0])
    finally:
        server.close()
    with socket.socket() as probe:  # released (REUSEADDR: past TIME_WAIT, not a listener)
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))
