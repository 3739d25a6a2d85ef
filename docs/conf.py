"""Sphinx configuration for trio-accept."""

from __future__ import annotations

import importlib.metadata

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
]

# The docs are built offline (CI has no network), so there is no intersphinx:
# references to the standard library and to Trio stay unresolved, and are
# ignored here so that `sphinx-build -n` still checks the project's own names.
nitpick_ignore_regex = [
    (r"py:.*", r"(trio|ssl|typing|collections\.abc|enum|types)\..*"),
    (
        r"py:.*",
        r"(None|bool|int|float|str|bytes|bytearray|memoryview|object|type|list|dict|tuple"
        r"|set|frozenset|BaseException|Exception|ValueError|TypeError|RuntimeError"
        r"|OSError|EOFError|NotImplementedError)",
    ),
]
nitpicky = True

napoleon_google_docstring = True
napoleon_numpy_docstring = False

autodoc_typehints = "description"
autodoc_member_order = "bysource"

graphviz_output_format = "svg"

exclude_patterns = ["_build"]
html_theme = "alabaster"
