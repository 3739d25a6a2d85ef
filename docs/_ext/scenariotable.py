"""Sphinx extension: the table of the test scenario catalogue, from the catalogue.

The scenarios' names, what each server does and what a correct client does about it
live next to the code that builds them (:data:`trio_accept.testing.SCENARIOS`); the docs
print them from there, so the table cannot drift from the catalogue::

    .. scenario-table:: trio_accept.testing.SCENARIOS

The table is generated in memory on every read; nothing is written to the source tree.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from sphinx.util.docutils import SphinxDirective
from sphinx.util.parsing import nested_parse_to_nodes

if TYPE_CHECKING:
    from docutils.nodes import Node  # type: ignore[import-untyped,unused-ignore]
    from sphinx.application import Sphinx
    from sphinx.util.typing import ExtensionMetadata

# Characters that mean something inline in reStructuredText: the catalogue's prose is
# plain text, so each one is escaped (``client_cert`` is not a link, ``*`` no emphasis).
_SPECIAL = "\\`*_|<>[]"


class _Scenario(Protocol):
    @property
    def description(self) -> str: ...
    @property
    def expected(self) -> str: ...


def _plain(text: str) -> str:
    return "".join(f"\\{char}" if char in _SPECIAL else char for char in text)


def table_source(scenarios: Mapping[str, _Scenario]) -> str:
    """reStructuredText for the catalogue: name, what the server does, expected outcome."""
    rows = [
        ".. list-table::",
        "   :header-rows: 1",
        "   :widths: 18 40 42",
        "",
        "   * - Name",
        "     - What the server does",
        "     - What a correct client does",
    ]
    for name, scenario in scenarios.items():
        rows.append(f"   * - ``{name}``")
        rows.append(f"     - {_plain(scenario.description)}")
        rows.append(f"     - {_plain(scenario.expected)}")
    return "\n".join(rows)


class ScenarioTable(SphinxDirective):
    """``.. scenario-table:: package.module.SCENARIOS``"""

    required_arguments = 1

    def run(self) -> list[Node]:
        module_name, _, attribute = self.arguments[0].rpartition(".")
        module = importlib.import_module(module_name)
        # Rebuild when the package changes: the catalogue may live in any of its modules.
        files = [Path(f) for f in [getattr(module, "__file__", None)] if f]
        for directory in getattr(module, "__path__", ()):
            files.extend(sorted(Path(directory).glob("*.py")))
        for path in files:
            self.env.note_dependency(str(path))
        scenarios: Mapping[str, _Scenario] = getattr(module, attribute)
        return nested_parse_to_nodes(self.state, table_source(scenarios))


def setup(app: Sphinx) -> ExtensionMetadata:
    """Register the directive."""
    app.add_directive("scenario-table", ScenarioTable)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
