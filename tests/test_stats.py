"""The command's stats: a worker's report to its supervisor, and the supervisor's sum."""

from __future__ import annotations

import pytest
from helpers import server_stats

from trio_accept import Reason
from trio_accept._stats import StatsSum, decode_stats, encode_stats, stats_line


def test_a_report_survives_the_trip() -> None:
    report = server_stats(9, 5, {Reason.TIMEOUT: 1, Reason.PLAIN_HTTP: 2}, active=3)
    assert decode_stats(encode_stats(report)) == report
    broke = server_stats(9, 5, {}, active=1, broken={Reason.RESET: 2, Reason.EOF: 1})
    assert decode_stats(encode_stats(broke)) == broke


@pytest.mark.parametrize(
    "text",
    [
        "",
        "[]",
        '{"failed": {}}',
        encode_stats(server_stats(1, 1, {}, 0)).replace('"accepted":1', '"accepted":"1"'),
        encode_stats(server_stats(1, 1, {}, 0)).replace('"accepted":1', '"accepted":true'),
        encode_stats(server_stats(1, 0, {Reason.TIMEOUT: 1}, 0)).replace("timeout", "bored"),
        encode_stats(server_stats(1, 1, {}, 0, {Reason.RESET: 1})).replace(
            '"reset":1', '"reset":"1"'
        ),
        encode_stats(server_stats(1, 1, {}, 0)).replace("{", '{"extra":1,', 1),
    ],
)
def test_a_malformed_report_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a stats report"):
        decode_stats(text)


def test_the_sum_keeps_the_counters_of_workers_gone() -> None:
    total = StatsSum()
    total.update(101, server_stats(4, 3, {Reason.TIMEOUT: 1}, active=2))
    total.update(102, server_stats(2, 1, {Reason.PLAIN_HTTP: 1}, active=1))
    total.update(101, server_stats(5, 4, {Reason.TIMEOUT: 1}, 2, {Reason.RESET: 1}))  # the latest
    assert total.reporting == 2
    assert stats_line(total.total(), label="stats of 2 workers") == (
        "stats of 2 workers: 7 accepted, 0 handshaking, 5 completed, "
        "2 failed (timeout 1, plain-http 1), 3 active, 2 closed, 1 broken (reset 1), "
        "0 idle-closed, 0 handler errors, 0 accept errors"
    )
    # Worker 101 dies with 2 connections open: its counters stay, its gauges go.
    total.retire(101)
    total.retire(999)  # never reported: nothing to keep
    assert total.reporting == 1
    summed = total.total()
    assert (summed.accepted, summed.completed, summed.closed) == (7, 5, 2)
    assert summed.failed == {Reason.TIMEOUT: 1, Reason.PLAIN_HTTP: 1}
    assert summed.broken == {Reason.RESET: 1}
    assert summed.active_connections == 1
    # Its replacement starts from zero.
    total.update(103, server_stats(1, 1, {}, active=1))
    assert (total.total().accepted, total.total().active_connections) == (8, 2)
