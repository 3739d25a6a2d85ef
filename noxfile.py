"""Check suite for trio_accept: ``nox`` runs tests, hostile, lint, typing and docs."""

from __future__ import annotations

import os
import shutil

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["tests", "hostile", "interop", "lint", "typing", "docs"]

# Debian package -> the binary that shows it is installed (default: same name).
_BINARY = {"graphviz": "dot", "libnss3-tools": "certutil"}


def ensure_debian_packages(session: nox.Session, *packages: str) -> None:
    """Install the Debian packages whose binaries are missing, with apt-get.

    Nothing is run when every binary is already on PATH. Installing needs root;
    otherwise the session fails with the command to run by hand.
    """
    missing = [p for p in packages if shutil.which(_BINARY.get(p, p)) is None]
    if not missing:
        return
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        session.error(
            f"missing Debian packages {missing}: install them first, as root: "
            f"apt-get install {' '.join(missing)}"
        )
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    session.run("apt-get", "update", external=True, env=env)
    session.run(
        "apt-get", "install", "-y", "--no-install-recommends", *missing, external=True, env=env
    )


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite, except the tests against external programs (``interop``)."""
    session.install("-e", ".[test]")
    ensure_debian_packages(session, "openssl", "curl")
    session.run(
        "pytest",
        "-m",
        "not interop",
        "--ignore=tests/hostile",  # a session of its own: `nox -s hostile`
        "--cov",
        "--cov-report=term-missing:skip-covered",
        "--cov-report=xml",
        *session.posargs,
    )


#: Where the hostile suite writes its report (JSON, Markdown, reStructuredText).
HOSTILE_REPORT = "build/hostile"
#: The reliability page's copy of the latest table.
HOSTILE_DOCS_TABLE = "docs/reliability-latest.txt"


def run_hostile(session: nox.Session, *pytest_args: str, scale: int, report: str) -> None:
    session.install("-e", ".[test]")
    ensure_debian_packages(session, "openssl")
    session.run(
        "pytest",
        "tests/hostile",
        *pytest_args,
        env={"TRIO_ACCEPT_HOSTILE_REPORT": report, "TRIO_ACCEPT_HOSTILE_SCALE": str(scale)},
    )


@nox.session
def hostile(session: nox.Session) -> None:
    """The hostile-client suite (docs/reliability.rst): well under a minute.

    ``nox -s hostile -- --update-docs`` also copies the table into the docs.
    """
    update_docs = "--update-docs" in session.posargs
    pytest_args = [arg for arg in session.posargs if arg != "--update-docs"]
    run_hostile(session, *pytest_args, scale=1, report=HOSTILE_REPORT)
    if update_docs:
        shutil.copyfile(f"{HOSTILE_REPORT}/hostile.rst", HOSTILE_DOCS_TABLE)
        session.log(f"updated {HOSTILE_DOCS_TABLE}")


@nox.session
def soak(session: nox.Session) -> None:
    """The hostile suite, three rounds with ten times the load and the fuzzing (fresh
    fuzzing inputs each round; a few minutes; not run by default)."""
    for round_number in (1, 2, 3):
        run_hostile(session, *session.posargs, scale=10, report=f"build/soak/{round_number}")


@nox.session
def interop(session: nox.Session) -> None:
    """Tests against real external programs as peers: openssl, curl, HAProxy, Chromium."""
    session.install("-e", ".[test]")
    ensure_debian_packages(session, "openssl", "curl", "haproxy", "chromium", "libnss3-tools")
    session.run("pytest", "-m", "interop", "--ignore=tests/hostile", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typing(session: nox.Session) -> None:
    # Tests and the docs' Sphinx extensions are type-checked too, and nox itself is
    # needed to check noxfile.py. Not an editable install: `pyright --verifytypes`
    # cannot follow setuptools' editable import hook to the package.
    session.install(".[typing,test,docs]", "nox")
    session.run("mypy")
    session.run("pyright")
    session.run("pyright", "--verifytypes", "trio_accept", "--ignoreexternal")


@nox.session
def docs(session: nox.Session) -> None:
    session.install("-e", ".[docs]")
    ensure_debian_packages(session, "graphviz")
    for builder in ("html", "doctest"):
        session.run(
            "sphinx-build",
            "-W",
            "-n",
            "--keep-going",
            "-b",
            builder,
            "docs",
            f"docs/_build/{builder}",
        )


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks against other TLS servers (not run by default): ``nox -s bench -- --quick``.

    ``bench/run.py`` (CPU time, memory, latency under attack; the arguments go to it),
    then ``bench/workers.py`` (1 vs 2 workers of the command) and
    ``bench/instructions.py`` (instructions per connection, under valgrind).
    """
    session.install("-e", ".[bench]")
    ensure_debian_packages(session, "openssl", "valgrind")
    quick = "--quick" in session.posargs
    session.run("python", "bench/run.py", *session.posargs)
    session.run("python", "bench/workers.py", *(["--quick"] if quick else []))
    session.run("python", "bench/instructions.py", "--connections", "20" if quick else "100")
