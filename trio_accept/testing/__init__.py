"""Test helpers for TLS *clients*: real TLS servers on loopback, and a pytest plugin.

The pytest plugin (``trio_accept.testing.plugin``, loaded automatically once trio-accept
is installed) provides the ``tls_``-prefixed fixtures; the names here are what they are
built from, for use without pytest.
"""

from ._handlers import echo as echo
from ._handlers import http_responder as http_responder
from ._scenarios import SCENARIOS as SCENARIOS
from ._scenarios import Scenario as Scenario
from ._scenarios import ScenarioContext as ScenarioContext
from ._scenarios import ScenarioSetup as ScenarioSetup
from ._scenarios import get_scenario as get_scenario
from ._scenarios import open_trio_scenario as open_trio_scenario
from ._scenarios import register_scenario as register_scenario
from ._scenarios import start_scenario as start_scenario
from ._server import ConnectionRecord as ConnectionRecord
from ._server import Recorder as Recorder
from ._server import ServeFunction as ServeFunction
from ._server import TLSTestServer as TLSTestServer
from ._server import TrioTLSTestServer as TrioTLSTestServer
from ._server import open_trio_test_server as open_trio_test_server
from ._server import tls_serve_function as tls_serve_function

# The built-in scenarios register themselves (after the registry above exists).
from . import _catalogue as _catalogue  # isort: skip

for _obj in (
    ConnectionRecord,
    Recorder,
    Scenario,
    ScenarioContext,
    ScenarioSetup,
    TLSTestServer,
    TrioTLSTestServer,
    echo,
    get_scenario,
    http_responder,
    open_trio_scenario,
    register_scenario,
    start_scenario,
    open_trio_test_server,
    tls_serve_function,
):
    _obj.__module__ = __name__
del _obj
