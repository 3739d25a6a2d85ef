"""The settings of ``trio-accept serve``: one table, two spellings.

Every setting is a field of :class:`Settings` whose metadata says how to read it. From that
one table come the command-line options (``--hello-timeout 3``), the keys of the TOML
configuration file (``hello_timeout = 3``), the checks, and the defaults -- which are the
library's own constants, so the command cannot drift from :func:`~trio_accept.open_server`
and :func:`~trio_accept.server_context`.

Precedence: the defaults, then the file (``--config FILE``), then the command line. A key
the table does not know is an error that names it (a typo must not be silently ignored),
and so is a value of the wrong type. Relative paths in the file are relative to the
file's directory, so a file and the certificates next to it can move together.

Inherited sockets (``fd``, or systemd's ``LISTEN_FDS``) win over ``host``, ``port`` and
``backlog``: those then do not apply, and the command logs once that it ignores them --
one file can serve a unit that binds and a socket-activated one. The one combination
refused is ``--fd`` typed on the same command line as ``--host``, ``--port`` or
``--backlog``: one command line that says both is a mistake.
"""

# The fields' defaults are dataclasses.field() calls made by _setting(), which ruff cannot
# see through.
# ruff: noqa: RUF009

from __future__ import annotations

import argparse
import dataclasses
import difflib
import enum
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, cast, final

from ._config import PROFILES, SESSION_TICKETS
from ._handshake import CLOSE_TIMEOUT, HANDSHAKE_TIMEOUT, HELLO_TIMEOUT
from ._listener import MAX_HANDSHAKES, SHUTDOWN_GRACE

#: The command binds loopback only unless asked: a dev server must not appear on the
#: network by accident.
DEFAULT_HOST: Final = "127.0.0.1"
#: The conventional alternative HTTPS port, usable without root.
DEFAULT_PORT: Final = 8443
#: Seconds to wait for an upstream's TCP connection in proxy mode (``--upstream``).
UPSTREAM_CONNECT_TIMEOUT: Final = 10.0
#: ``tls_group``'s value for "OpenSSL's own list" (``group=None`` in server_context).
OPENSSL_GROUPS: Final = "openssl"
LOG_LEVELS: Final = ("debug", "info", "warning", "error")
#: ALPN names of the HTTP versions the ``info`` handler does not speak.
NEWER_HTTP: Final = ("h2", "h3")


class SettingsError(ValueError):
    """A setting is unknown, of the wrong type, out of range, or at odds with another;
    the message names it as the file and the command line spell it."""


class Kind(enum.Enum):
    """How a setting is spelled on the command line and in the file."""

    TEXT = "text"
    INTEGER = "integer"
    NUMBER = "number"
    FLAG = "flag"
    PATH = "path"
    LIST = "list"  # --alpn h2,http/1.1 / alpn = ["h2", "http/1.1"]
    SNI = "sni"  # --sni NAME=CERT[:KEY], repeatable / a [sni] table
    FDS = "fds"  # --fd N, repeatable / fd = [3, 4]


@final
@dataclass(frozen=True, slots=True)
class Option:
    """How to read one setting (the metadata of a :class:`Settings` field).

    Attributes:
        kind: Its type and spelling.
        help: One line for ``--help`` and the docs.
        section: The ``--help`` section it is listed in.
        metavar: The value's name in ``--help``.
        choices: The allowed values, for text settings that have a fixed set.
        minimum: The smallest allowed value (numbers).
        exclusive: The minimum itself is not allowed (``> 0`` rather than ``>= 0``).
        cli: False for settings that only the file can set (none so far).
    """

    kind: Kind
    help: str
    section: str
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    minimum: float | None = None
    exclusive: bool = False
    cli: bool = True

    def flag(self, name: str) -> str:
        """The command-line spelling of setting ``name``."""
        return "--" + name.replace("_", "-")


def _setting(default: Any, kind: Kind, help: str, section: str, **options: Any) -> Any:
    return field(default=default, metadata={"option": Option(kind, help, section, **options)})


LISTEN, HANDLER, TLS, LIMITS, PROCESS, OBSERVE = (
    "listening",
    "what to serve",
    "certificates and TLS",
    "timeouts and limits",
    "process",
    "logs and metrics",
)


@final
@dataclass(frozen=True, slots=True)
class SNIEntry:
    """A certificate for one server name (``--sni NAME=CERT[:KEY]``).

    Attributes:
        name: The server name, exact or ``*.`` wildcard.
        cert: Its certificate chain.
        key: Its key; None when it is in ``cert``.
    """

    name: str
    cert: Path
    key: Path | None = None


@final
@dataclass(frozen=True, slots=True)
class Settings:
    """Everything ``trio-accept serve`` can be told (see the deployment docs for each)."""

    # -- listening
    host: str = _setting(DEFAULT_HOST, Kind.TEXT, "address to bind", LISTEN, metavar="ADDRESS")
    port: int = _setting(
        DEFAULT_PORT, Kind.INTEGER, "TCP port, 0 for any free one", LISTEN, minimum=0
    )
    fd: tuple[int, ...] = _setting(
        (),
        Kind.FDS,
        "serve on this inherited listening socket instead of binding (repeatable); "
        "systemd's LISTEN_FDS is used without it",
        LISTEN,
        metavar="N",
        minimum=0,
    )
    backlog: int | None = _setting(
        None, Kind.INTEGER, "listen backlog (default: the kernel's maximum)", LISTEN, minimum=1
    )
    proxy_protocol: bool = _setting(
        False,
        Kind.FLAG,
        "require a PROXY protocol header (v1 or v2) from the load balancer in front",
        LISTEN,
    )
    # -- what to serve
    handler: str = _setting(
        "echo",
        Kind.TEXT,
        "echo, info (JSON about the connection, over HTTP/1.1), or MODULE:FUNCTION, "
        "an async function taking a trio_accept.TLSStream",
        HANDLER,
        metavar="HANDLER",
    )
    upstream: str | None = _setting(
        None,
        Kind.TEXT,
        "be a TLS-terminating proxy to this TCP address (HOST:PORT, [V6ADDR]:PORT)",
        HANDLER,
        metavar="HOST:PORT",
    )
    upstream_proxy_protocol: bool = _setting(
        False,
        Kind.FLAG,
        "send a PROXY protocol v2 header to the upstream with the client's address",
        HANDLER,
    )
    upstream_connect_timeout: float = _setting(
        UPSTREAM_CONNECT_TIMEOUT,
        Kind.NUMBER,
        "seconds to connect to the upstream",
        HANDLER,
        metavar="SECONDS",
        minimum=0,
        exclusive=True,
    )
    # -- certificates and TLS
    cert: Path | None = _setting(
        None, Kind.PATH, "certificate chain (PEM), the server's first", TLS, metavar="FILE"
    )
    key: Path | None = _setting(None, Kind.PATH, "private key (PEM)", TLS, metavar="FILE")
    key_password_env: str | None = _setting(
        None,
        Kind.TEXT,
        "read the key's password from this environment variable",
        TLS,
        metavar="VARIABLE",
    )
    key_password_file: Path | None = _setting(
        None, Kind.PATH, "read the key's password from this file", TLS, metavar="FILE"
    )
    dev_ca: Path | None = _setting(
        None,
        Kind.PATH,
        "directory of the development CA, used without cert and key",
        TLS,
        metavar="DIR",
    )
    sni: tuple[SNIEntry, ...] = _setting(
        (),
        Kind.SNI,
        "another certificate for a server name (repeatable; KEY defaults to CERT)",
        TLS,
        metavar="NAME=CERT[:KEY]",
    )
    strict_sni: bool = _setting(
        False,
        Kind.FLAG,
        "refuse clients asking for a name no certificate covers",
        TLS,
    )
    profile: str = _setting(
        "intermediate",
        Kind.TEXT,
        "Mozilla profile: intermediate (TLS 1.2 and 1.3) or modern (TLS 1.3)",
        TLS,
        choices=tuple(PROFILES),
    )
    tls_group: str | None = _setting(
        None,
        Kind.TEXT,
        "key-exchange group (default: the profile's, X25519), or 'openssl' for OpenSSL's list",
        TLS,
        metavar="GROUP",
    )
    alpn: tuple[str, ...] = _setting(
        (), Kind.LIST, "ALPN protocols, most preferred first", TLS, metavar="h2,http/1.1"
    )
    client_ca: Path | None = _setting(
        None, Kind.PATH, "CA file that issues client certificates (mTLS)", TLS, metavar="FILE"
    )
    client_cert: str | None = _setting(
        None,
        Kind.TEXT,
        "with client_ca: required (the default) or optional",
        TLS,
        choices=("required", "optional"),
    )
    session_tickets: int = _setting(
        SESSION_TICKETS,
        Kind.INTEGER,
        "TLS 1.3 session tickets per handshake, 0 turns resumption off",
        TLS,
        minimum=0,
    )
    keylog_file: Path | None = _setting(
        None,
        Kind.PATH,
        "append session keys here (SSLKEYLOGFILE format; debugging only)",
        TLS,
        metavar="FILE",
    )
    watch: float | None = _setting(
        None,
        Kind.NUMBER,
        "also reload the certificates when their files change, checked this often",
        TLS,
        metavar="SECONDS",
        minimum=0,
        exclusive=True,
    )
    # -- timeouts and limits
    hello_timeout: float = _setting(
        HELLO_TIMEOUT,
        Kind.NUMBER,
        "seconds for a client's whole ClientHello",
        LIMITS,
        metavar="SECONDS",
        minimum=0,
        exclusive=True,
    )
    handshake_timeout: float = _setting(
        HANDSHAKE_TIMEOUT,
        Kind.NUMBER,
        "seconds for the whole handshake",
        LIMITS,
        metavar="SECONDS",
        minimum=0,
        exclusive=True,
    )
    close_timeout: float = _setting(
        CLOSE_TIMEOUT,
        Kind.NUMBER,
        "seconds to deliver an alert or a close_notify",
        LIMITS,
        metavar="SECONDS",
        minimum=0,
        exclusive=True,
    )
    idle_timeout: float | None = _setting(
        None,
        Kind.NUMBER,
        "close connections that move no bytes for this long (default: never)",
        LIMITS,
        metavar="SECONDS",
        minimum=0,
        exclusive=True,
    )
    max_connections: int | None = _setting(
        None,
        Kind.INTEGER,
        "connections held at once, handshaking or established (default: no limit)",
        LIMITS,
        minimum=1,
    )
    max_handshakes: int = _setting(
        MAX_HANDSHAKES,
        Kind.INTEGER,
        "handshakes in flight; beyond it the least-progressed one is shed",
        LIMITS,
        minimum=1,
    )
    shutdown_grace: float = _setting(
        SHUTDOWN_GRACE,
        Kind.NUMBER,
        "seconds handlers get to finish when shutting down",
        LIMITS,
        metavar="SECONDS",
        minimum=0,
    )
    tolerate_ragged_eof: bool = _setting(
        False,
        Kind.FLAG,
        "treat a client's close without close_notify as a normal end of stream",
        LIMITS,
    )
    plain_http_response: bool = _setting(
        True,
        Kind.FLAG,
        "answer plain HTTP on the TLS port with a readable 400",
        LIMITS,
    )
    # -- process
    workers: int = _setting(
        1,
        Kind.INTEGER,
        "worker processes sharing the port (SO_REUSEPORT), supervised",
        PROCESS,
        metavar="N",
        minimum=1,
    )
    user: str | None = _setting(
        None, Kind.TEXT, "switch to this user after binding (as root)", PROCESS, metavar="USER"
    )
    group: str | None = _setting(
        None,
        Kind.TEXT,
        "switch to this group after binding (default: the user's)",
        PROCESS,
        metavar="GROUP",
    )
    # -- logs and metrics
    log_level: str = _setting("info", Kind.TEXT, "log level", OBSERVE, choices=LOG_LEVELS)
    stats_interval: float | None = _setting(
        None,
        Kind.NUMBER,
        "log a stats line this often (default: only on SIGUSR1)",
        OBSERVE,
        metavar="SECONDS",
        minimum=0,
        exclusive=True,
    )
    metrics: str | None = _setting(
        None,
        Kind.TEXT,
        "serve Prometheus metrics at http://HOST:PORT/metrics (needs prometheus-client)",
        OBSERVE,
        metavar="HOST:PORT",
    )
    # -- not a setting: where the others came from
    explicit: frozenset[str] = field(default=frozenset[str](), compare=False)
    """The settings given in the file or on the command line rather than defaulted: a
    rule may depend on whether a value was asked for, not on what it is."""

    @property
    def require_client_cert(self) -> bool:
        """Whether clients must present a certificate (``client_cert``, required by default
        once ``client_ca`` is set)."""
        return self.client_ca is not None and self.client_cert != "optional"


#: Every setting's reading rules, by name, in the order of the fields.
OPTIONS: Final[Mapping[str, Option]] = {
    item.name: item.metadata["option"]
    for item in dataclasses.fields(Settings)
    if "option" in item.metadata
}
#: Default values, by name.
DEFAULTS: Final[Mapping[str, Any]] = {
    item.name: item.default for item in dataclasses.fields(Settings) if item.name in OPTIONS
}
#: The settings that only apply when the command binds its sockets itself.
BINDING: Final = ("host", "port", "backlog")


# -- the command line ----------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--config`` and an option for every setting to ``parser``.

    Options that are not given are absent from the parsed namespace (not set to their
    default), so that the file's values are overridden only by what was typed.
    """
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="read settings from this TOML file; options given here override it",
    )
    sections: dict[str, Any] = {}  # argparse's groups, a private class
    for name, option in OPTIONS.items():
        if not option.cli:
            continue
        section = sections.get(option.section)
        if section is None:
            section = sections[option.section] = parser.add_argument_group(option.section)
        help_text = option.help
        default = DEFAULTS[name]
        if default not in (None, (), False) and option.kind is not Kind.FLAG:
            help_text += f" (default: {default})"
        arguments: dict[str, Any] = {
            "dest": name,
            "default": argparse.SUPPRESS,
            "help": help_text.replace("%", "%%"),
        }
        if option.kind is Kind.FLAG:
            arguments["action"] = argparse.BooleanOptionalAction
        else:
            arguments["metavar"] = option.metavar
            arguments["choices"] = option.choices
            arguments["type"] = {
                Kind.INTEGER: int,
                Kind.NUMBER: float,
                Kind.PATH: Path,
                Kind.FDS: int,
            }.get(option.kind, str)
            if option.kind in {Kind.SNI, Kind.FDS}:
                arguments["action"] = "append"
        section.add_argument(option.flag(name), **arguments)


def _given(args: argparse.Namespace) -> dict[str, Any]:
    """The settings typed on the command line, converted to their settings types."""
    given: dict[str, Any] = {}
    for name, option in OPTIONS.items():
        if not hasattr(args, name):
            continue
        value = getattr(args, name)
        if option.kind is Kind.LIST:
            value = tuple(item.strip() for item in value.split(",") if item.strip())
        elif option.kind is Kind.SNI:
            value = tuple(_parse_sni(option.flag(name), text) for text in value)
        elif option.kind is Kind.FDS:
            value = tuple(value)
        given[name] = value
    return given


def _parse_sni(where: str, text: str) -> SNIEntry:
    name, equals, files = text.partition("=")
    cert, _, key = files.partition(":")
    if not equals or not name or not cert:
        raise SettingsError(f"{where} {text}: expected NAME=CERT or NAME=CERT:KEY")
    return SNIEntry(name, Path(cert), Path(key) if key else None)


# -- the file ------------------------------------------------------------------------


def read_config(path: Path) -> dict[str, Any]:
    """The settings in a TOML file, checked and converted (see the module notes).

    Raises:
        SettingsError: The file cannot be read or parsed, or holds an unknown key or a
            value of the wrong type; the message names the file and the key.
    """
    try:
        with path.open("rb") as file:
            document = tomllib.load(file)
    except OSError as exc:
        raise SettingsError(f"{path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path}: not valid TOML: {exc}") from None
    base = path.parent
    values: dict[str, Any] = {}
    for key, value in document.items():
        option = OPTIONS.get(key)
        if option is None:
            close = difflib.get_close_matches(key, list(OPTIONS), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise SettingsError(f"{path}: unknown key {key!r}{hint}")
        values[key] = _from_toml(path, key, option, value, base)
    return values


class _WrongType(Exception):
    """A file's value is not of the setting's type; ``args[0]`` says what was expected."""


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _flag(value: Any, base: Path) -> bool:
    if not isinstance(value, bool):
        raise _WrongType("true or false")
    return value


def _integer(value: Any, base: Path) -> int:
    if not _is_integer(value):
        raise _WrongType("an integer")
    result: int = value
    return result


def _number(value: Any, base: Path) -> float:
    if not (_is_integer(value) or isinstance(value, float)):
        raise _WrongType("a number")
    return float(value)


def _text(value: Any, base: Path) -> str:
    if not isinstance(value, str):
        raise _WrongType("a string")
    return value


def _path(value: Any, base: Path) -> Path:
    if not isinstance(value, str):
        raise _WrongType("a path (a string)")
    return base / Path(value).expanduser()


def _as_list(value: Any) -> list[Any] | None:
    if isinstance(value, list):
        # Redundant for mypy (Any narrows to list[Any]), not for pyright (list[Unknown]).
        return cast("list[Any]", value)  # type: ignore[redundant-cast]
    return None


def _list(value: Any, base: Path) -> tuple[str, ...]:
    items = _as_list(value)
    if items is None or not all(isinstance(item, str) for item in items):
        raise _WrongType("a list of strings")
    return tuple(items)


def _fds(value: Any, base: Path) -> tuple[int, ...]:
    items = [value] if _is_integer(value) else _as_list(value)
    if items is None or not all(_is_integer(item) for item in items):
        raise _WrongType("a file descriptor number or a list of them")
    return tuple(items)


def _sni(value: Any, base: Path) -> tuple[SNIEntry, ...]:
    if not isinstance(value, dict):
        raise _WrongType('a table: [sni], then "NAME" = "CERT" or "NAME" = {cert=..., key=...}')
    entries: list[SNIEntry] = []
    table = cast("dict[str, Any]", value)
    for name, entry in table.items():
        if isinstance(entry, str):
            entries.append(SNIEntry(name, base / entry))
            continue
        files = cast("dict[str, Any]", entry) if isinstance(entry, dict) else {}
        cert, key = files.get("cert"), files.get("key")
        if (
            not isinstance(cert, str)
            or not isinstance(key, str | None)
            or set(files)
            - {
                "cert",
                "key",
            }
        ):
            raise _WrongType(
                f'for "{name}" a certificate path, or a table with cert and (optionally) key paths'
            )
        entries.append(SNIEntry(name, base / cert, base / key if key else None))
    return tuple(entries)


_FROM_TOML: Final[Mapping[Kind, Any]] = {
    Kind.FLAG: _flag,
    Kind.INTEGER: _integer,
    Kind.NUMBER: _number,
    Kind.TEXT: _text,
    Kind.PATH: _path,
    Kind.LIST: _list,
    Kind.FDS: _fds,
    Kind.SNI: _sni,
}


def _from_toml(path: Path, key: str, option: Option, value: Any, base: Path) -> Any:
    try:
        return _FROM_TOML[option.kind](value, base)
    except _WrongType as exc:
        raise SettingsError(f"{path}: {key}: expected {exc.args[0]}, got {value!r}") from None


# -- all together --------------------------------------------------------------------


def load_settings(args: argparse.Namespace) -> Settings:
    """The settings from the defaults, ``--config``'s file and the command line.

    Raises:
        SettingsError: See :func:`read_config`, plus values out of range and settings
            that contradict each other.
    """
    config: Path | None = getattr(args, "config", None)
    from_file = read_config(config) if config is not None else {}
    given = _given(args)
    values = {**DEFAULTS, **from_file, **given}
    for name, value in values.items():
        _check_range(name, OPTIONS[name], value)
    settings = Settings(**values, explicit=frozenset(from_file) | frozenset(given))
    _check_together(settings, typed=set(given))
    return settings


def spelling(name: str) -> str:
    """A setting's two spellings, for messages: ``hello_timeout (--hello-timeout)``."""
    return f"{name} ({OPTIONS[name].flag(name)})"


def _check_range(name: str, option: Option, value: Any) -> None:
    if option.choices is not None and value is not None and value not in option.choices:
        raise SettingsError(
            f"{spelling(name)}: {value!r} is not one of {', '.join(option.choices)}"
        )
    if option.minimum is None or value is None:
        return
    numbers = cast("tuple[float, ...]", value if isinstance(value, tuple) else (value,))
    for number in numbers:
        if not math.isfinite(number) or (
            number <= option.minimum if option.exclusive else number < option.minimum
        ):
            relation = ">" if option.exclusive else ">="
            raise SettingsError(
                f"{spelling(name)}: must be {relation} {option.minimum:g}, got {number!r}"
            )
    if name == "port" and numbers[0] > 65535:  # noqa: PLR2004 - the largest TCP port
        raise SettingsError(f"{spelling(name)}: must be <= 65535, got {value!r}")


def _check_together(settings: Settings, *, typed: set[str]) -> None:
    explicit = settings.explicit
    if (settings.cert is None) != (settings.key is None):
        raise SettingsError("cert (--cert) and key (--key) go together")
    if settings.key_password_env is not None and settings.key_password_file is not None:
        raise SettingsError(
            "key_password_env (--key-password-env) and key_password_file "
            "(--key-password-file): give one"
        )
    has_password = settings.key_password_env is not None or settings.key_password_file
    if has_password and settings.cert is None and not settings.sni:
        raise SettingsError("a key password needs cert and key (--cert, --key) or sni")
    if settings.client_cert is not None and settings.client_ca is None:
        raise SettingsError(f"{spelling('client_cert')} needs {spelling('client_ca')}")
    # Asked for, not different from the default: --handler echo --upstream X is as
    # contradictory as --handler info --upstream X.
    if settings.upstream is not None and "handler" in explicit:
        raise SettingsError(
            f"{spelling('upstream')} and {spelling('handler')}: the upstream is the handler;"
            " give one"
        )
    # The info handler speaks HTTP/1.1 only: a client that ALPN puts on HTTP/2 sends a
    # preface the handler cannot read, and gets a 400 instead of the page.
    newer = [protocol for protocol in settings.alpn if protocol in NEWER_HTTP]
    if settings.handler == "info" and newer:
        raise SettingsError(
            f"{spelling('handler')} info speaks HTTP/1.1 only, but {spelling('alpn')} "
            f"offers {', '.join(newer)}: give alpn http/1.1, or none"
        )
    for name in ("upstream_proxy_protocol", "upstream_connect_timeout"):
        if name in explicit and settings.upstream is None:
            raise SettingsError(f"{spelling(name)} needs {spelling('upstream')}")
    # Inherited sockets win over host, port and backlog (see the module notes), except
    # on one command line that says both.
    if "fd" in typed and typed & {"host", "port"}:
        raise SettingsError(
            f"{spelling('fd')} serves an inherited socket: host and port do not apply"
        )
    if "fd" in typed and "backlog" in typed:
        raise SettingsError(f"{spelling('backlog')}: an inherited socket has its backlog")
