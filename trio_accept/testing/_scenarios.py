"""The scenario registry: misbehaving TLS servers by name (a local, scriptable badssl).

Each :class:`Scenario` builds a serve function (see :mod:`trio_accept.testing._server`)
for one way a TLS server can be wrong, together with what a *correct* client does about
it (:attr:`Scenario.expected`). :func:`start_scenario` runs one in a background thread,
:func:`open_trio_scenario` in the caller's Trio run; users add their own with
:func:`register_scenario`. The built-in catalogue is ``_catalogue``, registered when
:mod:`trio_accept.testing` is imported.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import final

import trustme

from ._server import (
    ServeFunction,
    TLSTestServer,
    TrioTLSTestServer,
    open_trio_test_server,
)


@final
@dataclass(frozen=True, slots=True)
class ScenarioContext:
    """What a scenario is built from.

    Attributes:
        ca: The CA a correct client is told to trust (the fixtures' CA).
        directory: A scratch directory for files the scenario writes.
    """

    ca: trustme.CA
    directory: Path


@final
@dataclass(frozen=True, slots=True)
class ScenarioSetup:
    """A built scenario: the server to run, and what a client needs to know.

    Attributes:
        serve: The serve function.
        server_name: The host name for the server's ``url``.
        client_cert: A client certificate the server accepts (client-cert scenarios).
    """

    serve: ServeFunction
    server_name: str = "localhost"
    client_cert: trustme.LeafCert | None = None


ScenarioBuilder = Callable[[ScenarioContext], ScenarioSetup]


@final
@dataclass(frozen=True, slots=True)
class Scenario:
    """One misbehaving server.

    Attributes:
        name: The catalogue name (``"expired"``).
        description: What the server does.
        expected: What a correct client does about it.
        build: Makes the server's :class:`ScenarioSetup`.
    """

    name: str
    description: str
    expected: str
    build: ScenarioBuilder


#: The registry, in catalogue order.
SCENARIOS: dict[str, Scenario] = {}


def register_scenario(
    name: str, *, description: str, expected: str
) -> Callable[[ScenarioBuilder], ScenarioBuilder]:
    """Register the decorated builder as the scenario ``name``.

    Raises:
        ValueError: ``name`` is taken already.
    """

    def register(build: ScenarioBuilder) -> ScenarioBuilder:
        if name in SCENARIOS:
            raise ValueError(f"a scenario named {name!r} is registered already")
        SCENARIOS[name] = Scenario(name, description, expected, build)
        return build

    return register


def get_scenario(name: str) -> Scenario:
    """The scenario called ``name``.

    Raises:
        ValueError: there is none; the message lists the known names.
    """
    try:
        return SCENARIOS[name]
    except KeyError:
        raise ValueError(
            f"unknown scenario {name!r}; known scenarios: {', '.join(SCENARIOS)}"
        ) from None


def start_scenario(name: str, *, ca: trustme.CA, ca_path: Path, directory: Path) -> TLSTestServer:
    """Build the scenario ``name`` and start it in a background thread.

    The caller closes the server (``with``, or :meth:`TLSTestServer.close`).
    """
    setup = get_scenario(name).build(ScenarioContext(ca, directory))
    server = TLSTestServer(
        setup.serve,
        ca=ca,
        ca_path=ca_path,
        server_name=setup.server_name,
        client_cert=setup.client_cert,
    )
    return server.start()


@asynccontextmanager
async def open_trio_scenario(
    name: str, *, ca: trustme.CA, ca_path: Path, directory: Path
) -> AsyncGenerator[TrioTLSTestServer]:
    """Run the scenario ``name`` in this Trio run for the duration of the block."""
    setup = get_scenario(name).build(ScenarioContext(ca, directory))
    async with open_trio_test_server(
        setup.serve,
        ca=ca,
        ca_path=ca_path,
        server_name=setup.server_name,
        client_cert=setup.client_cert,
    ) as server:
        yield server
