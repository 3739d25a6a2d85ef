"""The hostile suite's report: one row per case, one row per s_server comparison.

Rows are collected during the session (see ``conftest.py``), printed as Markdown at the
end, and written -- JSON for machines, reStructuredText for the docs page -- to the
directory named by :data:`REPORT_ENV`. ``nox -s hostile -- --update-docs`` copies the
reStructuredText into ``docs/`` so the reliability page shows the latest run.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Final, final

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

#: The environment variable naming the directory the report files are written to.
REPORT_ENV: Final = "TRIO_ACCEPT_HOSTILE_REPORT"

#: Every case of the suite, in the order of the docs page. The README states how many
#: there are (``test_report.py`` checks it), and the report flags a case without a row.
CASES: Final = (
    # garbage
    "random-bytes",
    "record-garbage-body",
    "oversized-record",
    "truncated-hello",
    "one-byte-writes",
    "duplicated-hello",
    "reordered-flight",
    "sslv2-hello",
    "plain-http",
    "http2-preface",
    "proxy-header",
    # PROXY protocol (a listener behind a load balancer)
    "proxy-garbage",
    "proxy-slowloris",
    "proxy-oversized",
    # CPU floods
    "hello-flood",
    "handshake-flood",
    # timing
    "slowloris-silent",
    "slowloris-drip",
    "stop-reading",
    "half-close",
    "reset",
    # volume
    "past-max-handshakes",
    "past-max-connections",
    "emfile",
    # faults
    "handler-exceptions",
    "cancel-every-checkpoint",
    "graceful-shutdown",
    "hard-stop",
    # fuzzing
    "engine-fuzz",
    "engine-fuzz-second-flight",
    "engine-fuzz-data-phase",
    "proxy-fuzz",
)


@final
@dataclass(frozen=True, slots=True)
class Row:
    """One case's outcome.

    Attributes:
        case: The case's name (one of :data:`CASES`).
        group: garbage, proxy, cpu, timing, volume, faults or fuzzing.
        connections: Hostile connections (or inputs) the case made.
        well_behaved: Well-behaved clients that completed, and how many ran.
        classified: How the server classified the hostile connections: a reason (or
            ``completed``, ``handler-error``, ...) and its count.
        leaks: Tasks, threads and file descriptors left behind (empty: none).
        worst_ms: The worst handshake latency of a well-behaved client during the case.
        idle_ms: The same client's latency on the idle server, at the start of the case.
        deadline_s: The outcome deadline every well-behaved client had to meet.
        note: Anything else the case measured (what a client got back, ...).
    """

    case: str
    group: str
    connections: int
    well_behaved: tuple[int, int]
    classified: dict[str, int]
    leaks: dict[str, int] = field(default_factory=dict[str, int])
    worst_ms: float | None = None
    idle_ms: float | None = None
    deadline_s: float | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        """The worst well-behaved handshake over the idle one (the issue's yardstick is
        10x; the outcome deadline has a floor, see ``harness.DEADLINE_FLOOR``)."""
        if self.worst_ms is None or not self.idle_ms:
            return None
        return self.worst_ms / self.idle_ms

    @property
    def success_rate(self) -> str:
        done, total = self.well_behaved
        if total == 0:
            return "n/a"
        return f"{done}/{total} ({100 * done / total:.0f} %)"


@final
@dataclass(frozen=True, slots=True)
class ParityRow:
    """One input sent to our listener and to ``openssl s_server``, and both reactions.

    Attributes:
        probe: The input's name.
        ours: How our listener reacted (see ``parity.Reaction``).
        theirs: How ``openssl s_server`` reacted.
        same: Whether the reactions are exactly the same.
        note: When they are not: the deliberate difference, and why it is one (a
            difference without a note is a failure of the yardstick).
    """

    probe: str
    ours: str
    theirs: str
    same: bool
    note: str = ""


@final
class Report:
    """The rows of this session."""

    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.parity: list[ParityRow] = []

    def add(self, row: Row) -> None:
        assert row.case in CASES, f"{row.case!r} is not in report.CASES"
        self.rows.append(row)

    def add_parity(self, row: ParityRow) -> None:
        self.parity.append(row)

    def missing(self) -> list[str]:
        """Cases without a row (not run, or failed before reporting)."""
        seen = {row.case for row in self.rows}
        return [case for case in CASES if case not in seen]

    def ordered(self) -> list[Row]:
        return sorted(self.rows, key=lambda row: CASES.index(row.case))

    # -- rendering ------------------------------------------------------------------

    def table(self) -> list[list[str]]:
        header = [
            "case",
            "group",
            "connections",
            "well-behaved completed",
            "hostile classified",
            "leaks",
            "worst handshake (idle)",
            "worst / idle",
        ]
        body = [
            [
                row.case,
                row.group,
                str(row.connections),
                row.success_rate,
                _counts(row.classified),
                _counts(row.leaks) or "none",
                _latency(row),
                "n/a" if row.ratio is None else f"{row.ratio:.0f}x",
            ]
            for row in self.ordered()
        ]
        return [header, *body]

    def parity_table(self) -> list[list[str]]:
        header = ["input", "trio_accept", "openssl s_server", "verdict"]
        body = [[row.probe, row.ours, row.theirs, _verdict(row)] for row in self.parity]
        return [header, *body]

    def notes(self) -> list[tuple[str, str]]:
        """``(case, note)`` for the rows that have a note."""
        return [(row.case, row.note) for row in self.ordered() if row.note]

    def markdown(self) -> str:
        parts = [_markdown(self.table())]
        parts += ["\n".join(f"- {case}: {note}" for case, note in self.notes())]
        if self.parity:
            parts.append(_markdown(self.parity_table()))
        return "\n\n".join(part for part in parts if part)

    def rst(self) -> str:
        """Both tables as reStructuredText ``list-table`` directives, for the docs."""
        parts = [_rst(self.table(), "The hostile cases", widths="16 7 9 12 30 6 12 6")]
        parts += [f"- **{case}**: {_rst_cell(note)}" for case, note in self.notes()]
        if self.parity:
            parts.append(
                "\n" + _rst(self.parity_table(), "Reactions compared with openssl s_server")
            )
        return "\n".join(parts) + "\n"

    def write(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        data = {
            "cases": [asdict(row) for row in self.ordered()],
            "parity": [asdict(row) for row in self.parity],
        }
        (directory / "hostile.json").write_text(json.dumps(data, indent=2) + "\n")
        (directory / "hostile.md").write_text(self.markdown() + "\n")
        (directory / "hostile.rst").write_text(self.rst())


def _verdict(row: ParityRow) -> str:
    if row.same:
        return "same"
    return f"differs by design: {row.note}" if row.note else "DIFFERS"


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{name}: {count}" for name, count in sorted(counts.items()))


def _latency(row: Row) -> str:
    if row.worst_ms is None:
        return "n/a"
    idle = f" ({row.idle_ms:.1f})" if row.idle_ms is not None else ""
    return f"{row.worst_ms:.1f} ms{idle}"


def _markdown(table: Sequence[Sequence[str]]) -> str:
    header, *body = table
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in body]
    return "\n".join(lines)


def _rst(table: Sequence[Sequence[str]], title: str, widths: str = "auto") -> str:
    lines = [f".. list-table:: {title}", "   :header-rows: 1", f"   :widths: {widths}", ""]
    for row in table:
        first, *rest = row
        lines.append(f"   * - {_rst_cell(first)}")
        lines += [f"     - {_rst_cell(cell)}" for cell in rest]
    lines.append("")
    return "\n".join(lines)


def _rst_cell(text: str) -> str:
    """``text`` with every character reStructuredText could read as markup escaped."""
    return "".join("\\" + char if char in _RST_SPECIAL else char for char in text)


_RST_SPECIAL: Final = frozenset("\\*`_|-+:[]<>")
