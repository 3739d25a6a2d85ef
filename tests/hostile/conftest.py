"""Fixtures of the hostile suite, and the table printed at the end of the session."""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

import trio_accept

from .harness import Hostile
from .report import REPORT_ENV, Report

if TYPE_CHECKING:
    import trustme

_REPORT = pytest.StashKey[Report]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_REPORT] = Report()


@pytest.fixture
def report(request: pytest.FixtureRequest) -> Report:
    """This session's report: cases add their rows to it."""
    return request.config.stash[_REPORT]


@pytest.fixture(scope="session")
def server_pem(server_cert: trustme.LeafCert, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The server's key and certificate chain in one PEM file (for us and s_server)."""
    path = tmp_path_factory.mktemp("hostile") / "server.pem"
    server_cert.private_key_and_cert_chain_pem.write_to_path(str(path))
    return path


@pytest.fixture
def hostile_server_context(server_pem: Path) -> ssl.SSLContext:
    """The listener's context: the library's defaults (Mozilla intermediate, X25519)."""
    return trio_accept.server_context(server_pem)


@pytest.fixture
def hostile(
    hostile_server_context: ssl.SSLContext, client_context: ssl.SSLContext, report: Report
) -> Hostile:
    """The harness (see ``harness.py``)."""
    return Hostile(hostile_server_context, client_context, report)


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    report = config.stash.get(_REPORT, None)
    if report is None or not (report.rows or report.parity):
        return
    terminalreporter.section("hostile clients")
    terminalreporter.write_line(report.markdown())
    missing = report.missing()
    if missing:
        terminalreporter.write_line(f"\ncases without a row (not run, or failed early): {missing}")
    directory = os.environ.get(REPORT_ENV)
    if directory:
        report.write(Path(directory))
        terminalreporter.write_line(f"\nreport written to {directory}/hostile.{{json,md,rst}}")
