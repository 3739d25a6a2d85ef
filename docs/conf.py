"""Sphinx configuration for trio-accept."""

from __future__ import annotations

import importlib.metadata
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sphinx.application import Sphinx

# The local extensions (the state diagram, attribute docs of re-exported names).
sys.path.insert(0, str(Path(__file__).parent / "_ext"))

project = "trio-accept"
author = "the trio_accept developers"
copyright = "the trio_accept developers"
try:
    release = importlib.metadata.version("trio-accept")
except importlib.metadata.PackageNotFoundError:  # docs built from a bare checkout
    release = "unknown"
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.doctest",
    "sphinx.ext.graphviz",
    "sphinxcontrib_trio",
    "reexported",
    "statediagram",
    "scenariotable",
]

# The docs are built offline (CI has no network), so there is no intersphinx:
# references to the standard library and to Trio stay unresolved, and are
# ignored here so that `sphinx-build -n` still checks the project's own names.
nitpick_ignore_regex = [
    (r"py:.*", r"(trio|ssl|typing|collections\.abc|enum|types|logging)(\..*)?"),
    (
        r"py:.*",
        r"(None|bool|int|float|str|bytes|bytearray|memoryview|object|type|list|dict|tuple"
        r"|set|frozenset|BaseException|Exception|ValueError|TypeError|RuntimeError"
        r"|OSError|EOFError|NotImplementedError)",
    ),
]
# Type aliases that autodoc prints by name but that have no page of their own (their
# definitions are in the API reference's prose).
nitpick_ignore = [("py:class", "StrPath"), ("py:class", "SNICertificate")]
nitpicky = True

napoleon_google_docstring = True
napoleon_numpy_docstring = False

autodoc_typehints = "description"
# Types for the parameters a docstring describes, and return types; not a bare list of
# every parameter's type under each class (dataclasses, exceptions).
autodoc_typehints_description_target = "documented_params"
autodoc_member_order = "bysource"

graphviz_output_format = "svg"

exclude_patterns = ["_build"]
html_theme = "alabaster"


# Attribute and property docstrings, kept aside while napoleon runs (see below).
_ATTRIBUTE_KINDS = frozenset({"attribute", "data", "property"})
_raw_attribute_docs: dict[str, list[str]] = {}


# Sphinx calls autodoc-process-docstring handlers with six positional arguments.
def _keep_attribute_doc(  # noqa: PLR0917
    app: Sphinx, what: str, name: str, obj: object, options: object, lines: list[str]
) -> None:
    if what in _ATTRIBUTE_KINDS:
        _raw_attribute_docs[name] = list(lines)


def _restore_attribute_doc(  # noqa: PLR0917
    app: Sphinx, what: str, name: str, obj: object, options: object, lines: list[str]
) -> None:
    if what in _ATTRIBUTE_KINDS and name in _raw_attribute_docs:
        lines[:] = _raw_attribute_docs.pop(name)


def setup(app: Sphinx) -> None:
    """Leave attribute and property docstrings to plain reStructuredText.

    napoleon reads the first line of an attribute's docstring as ``type: description``
    whenever it holds a colon, and ours are prose ("A protocol error: the handshake
    ... is dead."); their types come from annotations. So they are kept aside before
    napoleon runs (it listens at the default priority, 500) and put back after it.
    """
    app.connect("autodoc-process-docstring", _keep_attribute_doc, priority=400)
    app.connect("autodoc-process-docstring", _restore_attribute_doc, priority=600)
