"""Prometheus metrics (``serve --metrics``): what is counted, the endpoint, and the command
scraped end to end in one process (with workers: test_workers)."""

from __future__ import annotations

import datetime
import socket
import time
import urllib.request
from pathlib import Path

import pytest
import trio
from clitools import echo_once, plain_http, scrape_until, serve, trusting
from cryptography import x509
from helpers import server_stats

from trio_accept import Reason
from trio_accept._metrics import (
    EXPIRY_SECONDS,
    ExpiryCollector,
    Metrics,
    MetricsServer,
    listen_address,
)

pytest.importorskip("prometheus_client")


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
    metrics.sync(server_stats(3, 1, {Reason.TIMEOUT: 1}, active=1))
    metrics.sync(server_stats(5, 2, {Reason.TIMEOUT: 1}, 1, {Reason.RESET: 1}))
    metrics.sync(
        server_stats(7, 3, {Reason.TIMEOUT: 1, Reason.PLAIN_HTTP: 2}, 2, {Reason.RESET: 1})
    )
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
    assert value("trio_accept_connections_broken_total", {"reason": "reset"}) == 1
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
    metrics.sync(server_stats(1, 1, {}))
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


# -- the command, end to end (with workers: test_workers) ---------------------------------


async def test_serve_metrics_in_one_process(tmp_path: Path) -> None:
    arguments = ["--dev-ca", str(tmp_path), "--metrics", "127.0.0.1:0"]
    async with serve(arguments) as server:
        url = server.banner_line("metrics:").split()[-1]
        context = trusting(tmp_path / "dev-ca.pem")
        echoed, _ = await trio.to_thread.run_sync(echo_once, server.port, context)
        assert echoed == b"hello\n"
        await trio.to_thread.run_sync(plain_http, server.port)
        completed = ("trio_accept_handshakes_total", (("reason", ""), ("result", "completed")))
        plain = ("trio_accept_handshakes_total", (("reason", "plain-http"), ("result", "failed")))
        samples, before = await scrape_until(
            url, lambda s: s.get(completed) == 1 and s.get(plain) == 1
        )
        assert samples[("trio_accept_connections_accepted_total", ())] == 2
        assert samples[("trio_accept_handshake_duration_seconds_count", ())] == 1
        assert samples[("trio_accept_connections_active", ())] == 0
        # The dev certificate is watched too: through its CA, which bounds it.
        ca = x509.load_pem_x509_certificate((tmp_path / "dev-ca.pem").read_bytes())
        expires = ca.not_valid_after_utc.timestamp()
        default = (("certificate", "default"),)
        assert samples[("trio_accept_certificate_expiry_timestamp_seconds", default)] == expires
        left = samples[("trio_accept_certificate_expiry_seconds", default)]
        assert 0 < left <= expires - before
        status, log = await server.stop()
    assert status == 0
    assert "Traceback" not in log
