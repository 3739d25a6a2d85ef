"""The pytest plugin: real TLS servers on loopback, for testing TLS *clients*.

How it works
------------

Installing trio-accept registers this module under the ``pytest11`` entry point, so its
fixtures are there in every test run, and every one of them is prefixed ``tls_``. They
are thin: the work happens in :mod:`trio_accept.testing`, and each fixture only ties
an object from there to pytest's lifetimes.

* One CA per session (``tls_ca``, ``tls_ca_path``), and one server certificate it issued
  for ``localhost``, ``127.0.0.1`` and ``::1`` (``tls_server_certfile``). Issuing is the
  slow part of a test server, so it happens once.
* Servers are per test. ``tls_server`` runs in a thread with its own ``trio.run``, so the
  test may be sync, asyncio or Trio: it only sees a port. ``tls_trio_server`` runs in
  the Trio test's own nursery instead (through pytest-trio), so a Trio test can
  ``await`` it and nothing crosses a thread. ``tls_scenario`` starts servers from the
  catalogue of misbehaving ones (:mod:`trio_accept.testing._scenarios`).
* Teardown is the server's ``close()``: the serve task is cancelled, the listening
  socket closed and the thread joined before the next test starts, so a run of a
  thousand tests has one server at a time and leaks no thread, descriptor or port. A
  server that crashed re-raises at teardown: the test errors instead of passing.

Choosing what the server does
-----------------------------

The server runs a *handler* (``async def handler(stream)``): :func:`~trio_accept.testing.
echo` unless the test says otherwise, either with the marker
``@pytest.mark.tls_server(handler=http_responder)`` or by indirect parametrization
(``@pytest.mark.parametrize("tls_server", [echo, http_responder], indirect=True)``).

Misuse is loud
--------------

A marker with arguments other than ``handler=``, a handler that is not callable, a
marker and a parameter on the same test, a marker on a test that uses no server, or an
unknown scenario name: each is an error that says what to write instead, never a
silently ignored setting. (pytest-trio itself refuses ``tls_trio_server`` in a test
that is not a Trio test.)
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Final, cast

import pytest
import trustme

from .._config import server_context
from ._handlers import echo
from ._scenarios import start_scenario
from ._server import (
    Handler,
    TLSTestServer,
    TrioTLSTestServer,
    open_trio_test_server,
    tls_serve_function,
)

#: The marker that chooses the handler of ``tls_server`` and ``tls_trio_server``.
MARKER: Final = "tls_server"
#: The only argument the marker takes.
MARKER_ARGUMENTS: Final = frozenset({"handler"})
#: The fixtures the marker configures: it means nothing to a test without one of them.
SERVER_FIXTURES: Final = ("tls_server", "tls_trio_server")
#: The names the server certificate is for: what a loopback client may connect to.
SERVER_NAMES: Final = ("localhost", "127.0.0.1", "::1")

#: ``tls_scenario``'s value: start the scenario of that name, get its running server.
ScenarioFactory = Callable[[str], TLSTestServer]


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker, so that ``--strict-markers`` accepts it."""
    config.addinivalue_line(
        "markers",
        f"{MARKER}(handler=echo): the handler that tls_server and tls_trio_server run "
        "(trio_accept.testing.echo, http_responder or your own async def handler(stream))",
    )


@pytest.hookimpl(tryfirst=True)  # before the fixtures are set up
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Refuse ``tls_trio_server`` outside Trio tests, and the marker on a test that has
    no server for it to configure."""
    fixturenames: list[str] = getattr(item, "fixturenames", [])
    if "tls_trio_server" in fixturenames and item.get_closest_marker("trio") is None:
        pytest.fail(
            f"tls_trio_server runs in the nursery of a Trio test, and {item.name} is not "
            "one: make it an async test run by pytest-trio (@pytest.mark.trio, or "
            "trio_mode = true), or use tls_server, which works from any test",
            pytrace=False,
        )
    for marker in getattr(item, "own_markers", []):
        if marker.name == MARKER and not any(name in fixturenames for name in SERVER_FIXTURES):
            pytest.fail(
                f"@pytest.mark.{MARKER} configures the tls_server or tls_trio_server "
                f"fixture, and {item.name} uses neither: add the fixture or drop the marker",
                pytrace=False,
            )


def _handler(request: pytest.FixtureRequest) -> Handler:
    """The handler the test chose, or :func:`~trio_accept.testing.echo`."""
    marker = request.node.get_closest_marker(MARKER)
    chosen: object = echo
    if marker is not None:
        unknown = sorted(set(marker.kwargs) - MARKER_ARGUMENTS)
        if marker.args or unknown:
            pytest.fail(
                f"@pytest.mark.{MARKER} takes only handler=..., not "
                + ", ".join([*map(repr, marker.args), *(f"{name}=" for name in unknown)]),
                pytrace=False,
            )
        chosen = marker.kwargs.get("handler", echo)
    if hasattr(request, "param"):
        if marker is not None:
            pytest.fail(
                f"{request.fixturename} is both parametrized and marked with "
                f"@pytest.mark.{MARKER}: choose the handler one way",
                pytrace=False,
            )
        chosen = getattr(request, "param")  # noqa: B009  (only SubRequest declares it)
    if not callable(chosen):
        pytest.fail(
            f"the handler of {request.fixturename} must be an async function taking the "
            f"stream, like trio_accept.testing.echo; got {chosen!r}",
            pytrace=False,
        )
    return cast(Handler, chosen)  # callable: its signature is the handler's business


@pytest.fixture(scope="session")
def tls_ca() -> trustme.CA:
    """The CA that issues the test servers' certificates (one per session)."""
    return trustme.CA()


@pytest.fixture(scope="session")
def tls_ca_path(tls_ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tls_ca``'s certificate as a PEM file: ``curl --cacert``, ``verify=`` and friends."""
    path = tmp_path_factory.mktemp("tls_ca") / "ca.pem"
    tls_ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture(scope="session")
def tls_server_certfile(tls_ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test servers' certificate, chain and key (one PEM file), issued by ``tls_ca``
    for ``localhost``, ``127.0.0.1`` and ``::1``; for ``trio_accept.server_context``."""
    path = tmp_path_factory.mktemp("tls_server") / "server.pem"
    tls_ca.issue_cert(*SERVER_NAMES).private_key_and_cert_chain_pem.write_to_path(str(path))
    return path


@pytest.fixture
def tls_client_context(tls_ca: trustme.CA) -> ssl.SSLContext:
    """A client context that trusts ``tls_ca`` (and nothing else); one per test."""
    context = ssl.create_default_context()
    tls_ca.configure_trust(context)
    return context


@pytest.fixture
def tls_server(
    request: pytest.FixtureRequest,
    tls_ca: trustme.CA,
    tls_ca_path: Path,
    tls_server_certfile: Path,
) -> Iterator[TLSTestServer]:
    """A running TLS server on 127.0.0.1 in a background thread, stopped after the test.

    Its ``url`` is ``https://localhost:PORT/``; it runs the echo handler unless the test
    chooses another (the ``tls_server`` marker, or indirect parametrization).
    """
    serve = tls_serve_function(_handler(request), ssl_context=server_context(tls_server_certfile))
    with TLSTestServer(serve, ca=tls_ca, ca_path=tls_ca_path) as server:
        yield server


@pytest.fixture
async def tls_trio_server(
    request: pytest.FixtureRequest,
    tls_ca: trustme.CA,
    tls_ca_path: Path,
    tls_server_certfile: Path,
) -> AsyncIterator[TrioTLSTestServer]:
    """``tls_server`` for Trio tests: the same server, in the test's own nursery."""
    serve = tls_serve_function(_handler(request), ssl_context=server_context(tls_server_certfile))
    async with open_trio_test_server(serve, ca=tls_ca, ca_path=tls_ca_path) as server:
        yield server


@pytest.fixture
def tls_scenario(
    tls_ca: trustme.CA, tls_ca_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ScenarioFactory]:
    """``tls_scenario(name)`` starts that scenario's server (threaded) and returns it;
    every server started is stopped after the test."""
    with contextlib.ExitStack() as servers:

        def start(name: str) -> TLSTestServer:
            directory = tmp_path_factory.mktemp("tls_scenario")
            server = start_scenario(name, ca=tls_ca, ca_path=tls_ca_path, directory=directory)
            servers.callback(server.close)
            return server

        yield start
