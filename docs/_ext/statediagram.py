"""Sphinx extension: the engine's state diagram and transition table, from the code.

As h11 does, the docs draw the state machine from the table the code runs on, so the
picture cannot drift from the behaviour. The table must have the shape of
:data:`trio_accept.TRANSITIONS`: ``{(state, operation): {result kind: next state}}``,
all three being enum members.

Two directives, both taking the dotted path of the table::

    .. state-diagram:: trio_accept.TRANSITIONS
       :collapse: FAILED

    .. transition-table:: trio_accept.TRANSITIONS
       :calls: trio_accept.TLSEngine

``state-diagram`` emits a ``graphviz`` directive: one node per state (the state of the
table's first key is drawn as the initial one), one edge per pair
of states labelled ``operation -> kind`` for each way of getting there (self-loops
included). Edges into the ``:collapse:`` state are drawn once per source state, with
the operations and kinds grouped, so that the failure state does not drown the rest.

``transition-table`` emits a table with one row per ``(state, operation)``; with
``:calls:``, operations link to the methods of that class named after their values.
Both are generated in memory on every read; nothing is written to the source tree.
"""

from __future__ import annotations

import enum
import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, cast

from sphinx.util.docutils import SphinxDirective
from sphinx.util.parsing import nested_parse_to_nodes

if TYPE_CHECKING:
    from docutils.nodes import Node  # type: ignore[import-untyped,unused-ignore]
    from sphinx.application import Sphinx
    from sphinx.util.typing import ExtensionMetadata, OptionSpec

Transitions = Mapping[tuple[enum.Enum, enum.Enum], Mapping[enum.Enum, enum.Enum]]

_ARROW = "\N{RIGHTWARDS ARROW}"


def _import_object(path: str) -> tuple[object, list[Path]]:
    """Import ``package.module.NAME``; also return the source files it may depend on."""
    module_name, _, attribute = path.rpartition(".")
    module = importlib.import_module(module_name)
    files = [Path(f) for f in [getattr(module, "__file__", None)] if f]
    for directory in getattr(module, "__path__", ()):
        files.extend(sorted(Path(directory).glob("*.py")))
    return getattr(module, attribute), files


def _qualified(member: enum.Enum) -> str:
    cls = type(member)
    return f"{cls.__module__}.{cls.__qualname__}.{member.name}"


def _ordered_states(table: Transitions) -> list[enum.Enum]:
    """Every state of the enum the table uses, in definition order."""
    first_state = next(iter(table))[0]
    return list(type(first_state))


def _dot_label(lines: list[str]) -> str:
    """A graphviz string of left-justified lines (each one ends with ``\\l``)."""
    escaped = (line.replace("\\", "\\\\").replace('"', '\\"') for line in lines)
    return '"' + "".join(f"{line}\\l" for line in escaped) + '"'


def dot_source(table: Transitions, *, collapse: str | None = None) -> str:
    """The graphviz source of the state diagram of ``table``."""
    states = _ordered_states(table)
    initial = next(iter(table))[0]
    # (source, target) -> label lines, in the table's order.
    edges: dict[tuple[str, str], list[str]] = {}
    # source -> {kinds: operations} for the edges into the collapsed state.
    collapsed: dict[str, dict[tuple[str, ...], list[str]]] = {}
    for (state, operation), outcomes in table.items():
        fatal: list[str] = []
        for kind, target in outcomes.items():
            if target.name == collapse:
                fatal.append(kind.name)
            else:
                line = f"{operation.value} {_ARROW} {kind.name}"
                if target is state:
                    line = "   " + line  # keep a self-loop's label clear of its arc
                edges.setdefault((state.name, target.name), []).append(line)
        if fatal:
            groups = collapsed.setdefault(state.name, {})
            groups.setdefault(tuple(fatal), []).append(operation.value)
    lines = [
        "digraph transitions {",
        '  rankdir="TB";',
        '  node [shape="box", style="rounded", fontname="sans-serif", fontsize="11"];',
        '  edge [fontname="sans-serif", fontsize="9"];',
        '  start [shape="point", width="0.15"];',
        f"  start -> {initial.name};",
    ]
    lines.extend(f"  {state.name};" for state in states)
    for (source, destination), labels in edges.items():
        lines.append(f"  {source} -> {destination} [label={_dot_label(labels)}];")
    for source, groups in collapsed.items():
        labels = [
            f"{'/'.join(operations)} {_ARROW} {'/'.join(kinds)}"
            for kinds, operations in groups.items()
        ]
        lines.append(f'  {source} -> {collapse} [label={_dot_label(labels)}, style="dashed"];')
    lines.append("}")
    return "\n".join(lines)


def table_source(table: Transitions, *, calls: str | None = None) -> str:
    """reStructuredText for the transition table of ``table``."""
    rows = [
        ".. list-table::",
        "   :header-rows: 1",
        "   :widths: 25 20 55",
        "",
        "   * - In state",
        "     - Call",
        f"     - Result kind {_ARROW} next state",
    ]
    for (state, operation), outcomes in table.items():
        if calls:
            call = f":meth:`~{calls}.{operation.value}`"
        else:
            call = f":attr:`~{_qualified(operation)}`"
        rows.append(f"   * - :attr:`~{_qualified(state)}`")
        rows.append(f"     - {call}")
        prefix = "     - "
        for kind, target in outcomes.items():
            rows.append(
                f"{prefix}| :attr:`~{_qualified(kind)}` {_ARROW} :attr:`~{_qualified(target)}`"
            )
            prefix = "       "
    return "\n".join(rows)


class _TableDirective(SphinxDirective):
    required_arguments = 1
    has_content = False

    def _table(self) -> Transitions:
        table, files = _import_object(self.arguments[0])
        for path in files:
            self.env.note_dependency(str(path))
        if not isinstance(table, Mapping) or not table:
            raise self.error(f"{self.arguments[0]} is not a non-empty transition table")
        return cast("Transitions", table)

    def _parse(self, text: str) -> list[Node]:
        return nested_parse_to_nodes(self.state, text, source=f"<{self.name} directive>")


class StateDiagram(_TableDirective):
    """``.. state-diagram:: path.to.TABLE`` -- a graphviz drawing of the table."""

    option_spec: ClassVar[OptionSpec] = {
        "collapse": str,
        "alt": str,
    }

    def run(self) -> list[Node]:
        """Emit a ``graphviz`` directive with the generated source."""
        dot = dot_source(self._table(), collapse=self.options.get("collapse"))
        alt = self.options.get("alt", f"State diagram of {self.arguments[0]}")
        body = "\n".join("   " + line for line in dot.splitlines())
        return self._parse(f".. graphviz::\n   :alt: {alt}\n\n{body}\n")


class TransitionTable(_TableDirective):
    """``.. transition-table:: path.to.TABLE`` -- the table, one row per call."""

    option_spec: ClassVar[OptionSpec] = {"calls": str}

    def run(self) -> list[Node]:
        """Emit a ``list-table`` with cross-references to the enum members."""
        return self._parse(table_source(self._table(), calls=self.options.get("calls")))


def setup(app: Sphinx) -> ExtensionMetadata:
    """Register the directives (the drawing itself needs ``sphinx.ext.graphviz``)."""
    app.setup_extension("sphinx.ext.graphviz")
    app.add_directive("state-diagram", StateDiagram)
    app.add_directive("transition-table", TransitionTable)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
