"""The suite's numbers where users read them: the README and the reliability page."""

from __future__ import annotations

from pathlib import Path
from typing import Final

from .report import CASES

ROOT: Final = Path(__file__).resolve().parents[2]


def test_readme_and_docs_state_the_number_of_cases() -> None:
    readme = (ROOT / "README.md").read_text()
    assert f"the {len(CASES)} hostile-client cases" in readme
    page = " ".join((ROOT / "docs" / "reliability.rst").read_text().split())
    assert f"a suite of {len(CASES)} hostile-client cases" in page


def test_the_docs_show_a_row_for_every_case() -> None:
    # The page includes the table of the latest run (nox -s hostile -- --update-docs);
    # a case added since must not be missing from it.
    table = (ROOT / "docs" / "reliability-latest.txt").read_text().replace("\\", "")
    missing = [case for case in CASES if f"* - {case}\n" not in table]
    assert not missing, f"rerun `nox -s hostile -- --update-docs`: {missing}"
