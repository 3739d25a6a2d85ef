"""trio_accept: OpenSSL's SSL_accept(3) made into a structured-concurrency TLS server for Trio."""

from ._clienthello import ClientHello as ClientHello
from ._engine import TRANSITIONS as TRANSITIONS
from ._engine import EngineStateError as EngineStateError
from ._engine import ErrorKind as ErrorKind
from ._engine import Operation as Operation
from ._engine import Reason as Reason
from ._engine import Result as Result
from ._engine import State as State
from ._engine import TLSEngine as TLSEngine
from ._errors import HandshakeError as HandshakeError
from ._errors import TLSError as TLSError
from ._handshake import accept as accept
from ._stream import TLSInfo as TLSInfo
from ._stream import TLSStream as TLSStream

__version__ = "0.1.0.dev0"

# Show the public names as trio_accept.X (in reprs, tracebacks and the docs), not as the
# private module that happens to define them.
for _obj in (
    ClientHello,
    EngineStateError,
    ErrorKind,
    HandshakeError,
    Operation,
    Reason,
    Result,
    State,
    TLSEngine,
    TLSError,
    TLSInfo,
    TLSStream,
    accept,
):
    _obj.__module__ = __name__
del _obj
