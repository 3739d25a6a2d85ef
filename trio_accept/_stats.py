"""The server's counters as the command reports them: one readable line, and, with
``--workers``, the sum of every worker's.

A worker cannot tell systemd anything itself: its ``NOTIFY_SOCKET`` is the supervisor's
(:mod:`._workers`). So when a worker reports its stats (every ``--stats-interval``, and on
``SIGUSR1``) it sends them to the supervisor as a notification field of our own,
:data:`STATS_FIELD`, holding :func:`encode_stats`'s JSON; the supervisor keeps each
worker's latest in a :class:`StatsSum` and tells systemd ``STATUS=`` with the sum, which
is what ``systemctl status`` shows. The field never reaches systemd (which would ignore
it anyway, as it does every field it does not know).

The sum follows prometheus-client's multiprocess rules (:mod:`._metrics`): the counters
of a worker that died still count -- its last report is kept -- while its gauges
(handshakes in flight, open connections) are dropped with it.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Final, final

from ._engine import Reason
from ._listener import ServerStats

#: The notification field a worker sends its stats in (a name systemd does not use).
STATS_FIELD: Final = "X_TRIO_ACCEPT_STATS"
#: The fields of :class:`ServerStats` that say what is happening now, not what happened:
#: a worker that is gone has none of them.
GAUGES: Final = frozenset({"handshakes_in_flight", "silent", "active_connections"})

#: The fields that count by :class:`~trio_accept.Reason` (``{reason: count}``).
_BY_REASON: Final = ("failed", "broken")
#: The other fields, all counts.
_SCALARS: Final = tuple(
    item.name for item in dataclasses.fields(ServerStats) if item.name not in _BY_REASON
)


def stats_line(stats: ServerStats, *, label: str = "stats") -> str:
    """One readable line of a server's counters, ``label`` first."""
    # Of the connections closed, those the peer broke: only when there are some.
    broken = f", {_by_reason(stats.broken, 'broken')}" if stats.broken else ""
    return (
        f"{label}: {stats.accepted} accepted, {stats.handshakes_in_flight} handshaking, "
        f"{stats.completed} completed, {_by_reason(stats.failed, 'failed')}, "
        f"{stats.active_connections} active, {stats.closed} closed{broken}, "
        f"{stats.idle_closed} idle-closed, {stats.handler_errors} handler errors, "
        f"{stats.accept_errors} accept errors"
    )


def _by_reason(counts: dict[Reason, int], what: str) -> str:
    """``3 failed (timeout 2, reset 1)``: the total, then the reasons, most first."""
    reasons = ", ".join(
        f"{reason.value} {count}"
        for reason, count in sorted(counts.items(), key=lambda item: -item[1])
    )
    return f"{sum(counts.values())} {what}{f' ({reasons})' if reasons else ''}"


def encode_stats(stats: ServerStats) -> str:
    """``stats`` as one line of JSON (reasons by their value), for :data:`STATS_FIELD`."""
    fields = dataclasses.asdict(stats)
    for name in _BY_REASON:
        counts: dict[Reason, int] = getattr(stats, name)
        fields[name] = {reason.value: count for reason, count in counts.items()}
    return json.dumps(fields, separators=(",", ":"))


def decode_stats(text: str) -> ServerStats:
    """The stats :func:`encode_stats` encoded.

    Raises:
        ValueError: ``text`` is not such an encoding (a field missing, unknown or not a
            count; a reason that does not exist).
    """
    try:
        fields: Any = json.loads(text)
        by_reason = {
            name: {Reason(reason): count for reason, count in fields.pop(name).items()}
            for name in _BY_REASON
        }
        stats = ServerStats(**fields, failed=by_reason["failed"], broken=by_reason["broken"])
    except (TypeError, KeyError, AttributeError, ValueError) as exc:  # JSON, Reason(...)
        raise ValueError(f"not a stats report: {exc}") from None
    counts = [
        *(count for counts in by_reason.values() for count in counts.values()),
        *(getattr(stats, name) for name in _SCALARS),
    ]
    if not all(isinstance(count, int) and not isinstance(count, bool) for count in counts):
        raise ValueError("not a stats report: a count is not an integer")
    return stats


def _add(into: dict[str, Any], stats: ServerStats, *, gauges: bool) -> None:
    for name in _SCALARS:
        if gauges or name not in GAUGES:
            into[name] += getattr(stats, name)
    for name in _BY_REASON:
        total: dict[Reason, int] = into[name]
        for reason, count in getattr(stats, name).items():
            total[reason] = total.get(reason, 0) + count


@final
class StatsSum:
    """The workers' latest reports, summed (see the module notes).

    Workers are told apart by a key of the caller's (the supervisor uses their pids).
    """

    def __init__(self) -> None:
        self._latest: dict[int, ServerStats] = {}
        self._retired = self._zero()

    @staticmethod
    def _zero() -> dict[str, Any]:
        return {**dict.fromkeys(_SCALARS, 0), **{name: {} for name in _BY_REASON}}

    def update(self, worker: int, stats: ServerStats) -> None:
        """Record a running worker's latest report."""
        self._latest[worker] = stats

    def retire(self, worker: int) -> None:
        """A worker ended: keep its counters, drop its gauges."""
        stats = self._latest.pop(worker, None)
        if stats is not None:
            _add(self._retired, stats, gauges=False)

    @property
    def reporting(self) -> int:
        """How many running workers have reported."""
        return len(self._latest)

    def total(self) -> ServerStats:
        """Every worker's counters -- running or gone -- and the running ones' gauges."""
        total = self._zero()
        for name in _BY_REASON:
            total[name] = dict(self._retired[name])
        for name in _SCALARS:
            total[name] = self._retired[name]
        for stats in self._latest.values():
            _add(total, stats, gauges=True)
        return ServerStats(**total)
