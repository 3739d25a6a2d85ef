"""Sphinx extension: attribute docs for names that ``trio_accept`` re-exports.

trio_accept defines its public names in private modules (``trio_accept._engine``, ...)
and sets their ``__module__`` to ``"trio_accept"``, so that users see
``trio_accept.TLSEngine``. autodoc then looks for *attribute* documentation -- the
docstring under an enum member, a ``#:`` comment above a constant or an instance
attribute -- in ``trio_accept/__init__.py``, where there is none, and the enum members
and :data:`trio_accept.TRANSITIONS` would come out undocumented.

When the builder starts, this extension copies the attribute docs (and annotations and
source order) of the private modules into the source analyzer autodoc uses for the
package, for the public names only. Nothing else changes: classes, functions and
methods carry their own docstrings and need no help.
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING

from sphinx.pycode import ModuleAnalyzer

if TYPE_CHECKING:
    from sphinx.application import Sphinx
    from sphinx.util.typing import ExtensionMetadata

#: The packages whose private modules' attribute docs are merged.
PACKAGES = ("trio_accept",)


def _owner(scope: str, name: str) -> str:
    """The top-level name an attribute doc belongs to: ``("ErrorKind", "NONE")`` ->
    ``ErrorKind``; a module-level ``("", "TRANSITIONS")`` -> ``TRANSITIONS``."""
    return scope.partition(".")[0] or name


def merge_private_attr_docs(package: str) -> None:
    """Teach the analyzer of ``package`` the attribute docs of its private modules."""
    module = importlib.import_module(package)
    public = {name for name in vars(module) if not name.startswith("_")}
    target = ModuleAnalyzer.for_module(package)
    target.analyze()
    # The private modules the package imported: where its public names are defined.
    # (Only these: analysing a module may import it, and ``__main__`` must not run.)
    private = sorted(name for name in sys.modules if name.startswith(f"{package}._"))
    for name in private:
        if name.endswith(".__main__"):
            continue
        source = ModuleAnalyzer.for_module(name)
        source.analyze()
        for key, doc in source.attr_docs.items():
            if _owner(*key) in public:
                target.attr_docs.setdefault(key, doc)
        for key, annotation in source.annotations.items():
            if _owner(*key) in public:
                target.annotations.setdefault(key, annotation)
        for qualname, order in source.tagorder.items():
            if qualname.partition(".")[0] in public:
                target.tagorder.setdefault(qualname, order)


def _on_builder_inited(app: Sphinx) -> None:
    for package in PACKAGES:
        merge_private_attr_docs(package)


def setup(app: Sphinx) -> ExtensionMetadata:
    """Register the extension."""
    app.connect("builder-inited", _on_builder_inited)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
