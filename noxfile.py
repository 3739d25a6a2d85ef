"""Check suite for trio_accept: ``nox`` runs tests, lint, typing and docs."""

from __future__ import annotations

import os
import shutil

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["tests", "interop", "lint", "typing", "docs"]

# Debian package -> the binary that shows it is installed (default: same name).
_BINARY = {"graphviz": "dot"}


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
        "--cov",
        "--cov-report=term-missing:skip-covered",
        "--cov-report=xml",
        *session.posargs,
    )


@nox.session
def interop(session: nox.Session) -> None:
    """Tests against real external programs as peers: openssl, curl, HAProxy."""
    session.install("-e", ".[test]")
    ensure_debian_packages(session, "openssl", "curl", "haproxy")
    session.run("pytest", "-m", "interop", *session.posargs)


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
    """Benchmarks against other TLS servers (not run by default): ``nox -s bench -- --quick``."""
    session.install("-e", ".[bench]")
    ensure_debian_packages(session, "openssl")
    session.run("python", "bench/run.py", *session.posargs)
