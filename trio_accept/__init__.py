"""trio_accept: OpenSSL's SSL_accept(3) made into a structured-concurrency TLS server for Trio."""

from ._clienthello import ClientHello as ClientHello
from ._config import PROFILES as PROFILES
from ._config import CertificateError as CertificateError
from ._config import CertificateStore as CertificateStore
from ._config import CertificateWarning as CertificateWarning
from ._config import Profile as Profile
from ._config import dev_context as dev_context
from ._config import load_certificate as load_certificate
from ._config import server_context as server_context
from ._devcerts import dev_ca_path as dev_ca_path
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
from ._info import info_handler as info_handler
from ._listener import Server as Server
from ._listener import ServerStats as ServerStats
from ._listener import current_server as current_server
from ._listener import open_server as open_server
from ._listener import serve_tls as serve_tls
from ._proxy import ProxyHeader as ProxyHeader
from ._proxy import ProxyProtocolError as ProxyProtocolError
from ._proxy import ProxySSL as ProxySSL
from ._proxy import encode_proxy_v1 as encode_proxy_v1
from ._proxy import encode_proxy_v2 as encode_proxy_v2
from ._proxy import parse_proxy_header as parse_proxy_header
from ._relay import parse_host_port as parse_host_port
from ._relay import relay_handler as relay_handler
from ._stream import TLSInfo as TLSInfo
from ._stream import TLSStream as TLSStream
from ._tlslistener import TLSListener as TLSListener
from ._tlslistener import open_tls_listeners as open_tls_listeners

__version__ = "0.1.0.dev0"

# Show the public names as trio_accept.X (in reprs, tracebacks and the docs), not as the
# private module that happens to define them.
for _obj in (
    CertificateError,
    CertificateStore,
    CertificateWarning,
    ClientHello,
    EngineStateError,
    ErrorKind,
    HandshakeError,
    Profile,
    ProxyHeader,
    ProxyProtocolError,
    ProxySSL,
    Server,
    ServerStats,
    Operation,
    Reason,
    Result,
    State,
    TLSEngine,
    TLSError,
    TLSInfo,
    TLSListener,
    TLSStream,
    accept,
    current_server,
    dev_ca_path,
    dev_context,
    encode_proxy_v1,
    encode_proxy_v2,
    info_handler,
    load_certificate,
    open_server,
    open_tls_listeners,
    parse_host_port,
    parse_proxy_header,
    relay_handler,
    serve_tls,
    server_context,
):
    _obj.__module__ = __name__
del _obj
