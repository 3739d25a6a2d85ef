"""The settings of ``trio-accept serve``: the command line, the TOML file, their checks,
and that the table covers every setting the library has."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

import trio_accept
from trio_accept._cli import build_parser, server_options
from trio_accept._settings import (
    DEFAULTS,
    OPTIONS,
    Settings,
    SettingsError,
    SNIEntry,
    load_settings,
)

DOCS = Path(__file__).parent.parent / "docs"
EXAMPLE = DOCS / "examples" / "trio-accept.toml"

#: How each parameter of open_server reaches it from the command: a setting that
#: server_options() passes on, or another way (named here).
OPEN_SERVER = {
    "handler": "handler / upstream",
    "port": "port (bound by the command)",
    "host": "host (bound by the command)",
    "listeners": "the command's sockets: host/port, fd, LISTEN_FDS",
    "ssl_context": "the certificate settings",
    "backlog": "backlog (bound by the command)",
    "handler_nursery": "not for the command: its handlers run in the server's nursery",
    "on_handshake_error": "not needed: failures are counted in Server.stats",
}
#: How each parameter of server_context is spelled in the settings.
SERVER_CONTEXT = {
    "certfile": "cert",
    "keyfile": "key",
    "password": "key_password_env",  # or key_password_file
    "profile": "profile",
    "group": "tls_group",
    "alpn": "alpn",
    "client_ca": "client_ca",
    "require_client_cert": "client_cert",
    "sni": "sni",
    "strict_sni": "strict_sni",
    "session_tickets": "session_tickets",
    "keylog_file": "keylog_file",
    "dev_ca_directory": "dev_ca",
}


def settings_of(*argv: str) -> Settings:
    return load_settings(build_parser().parse_args(["serve", *argv]))


def config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "trio-accept.toml"
    path.write_text(text)
    return path


# -- the table covers the library ------------------------------------------------------------


def test_every_open_server_parameter_reaches_it() -> None:
    parameters = set(inspect.signature(trio_accept.open_server).parameters)
    passed = set(server_options(settings_of()))
    passed |= set(server_options(settings_of("--no-plain-http-response")))
    # A parameter the library gains must be passed on (or named above): when this fails,
    # add the setting to _settings.py and pass it in server_options().
    assert parameters == passed | set(OPEN_SERVER)
    assert passed <= set(OPTIONS)


def test_every_server_context_parameter_has_a_setting() -> None:
    parameters = set(inspect.signature(trio_accept.server_context).parameters)
    assert parameters == set(SERVER_CONTEXT)
    assert set(SERVER_CONTEXT.values()) <= set(OPTIONS)


def test_the_defaults_are_the_librarys() -> None:
    # Except where the command knows better: loopback and 8443, not every interface and
    # a random port.
    assert (DEFAULTS["host"], DEFAULTS["port"]) == ("127.0.0.1", 8443)
    compared = 0
    for function in (trio_accept.open_server, trio_accept.server_context):
        for name, parameter in inspect.signature(function).parameters.items():
            # server_context's group is tls_group here (group is the Unix group).
            if name in OPTIONS and name not in {"host", "port", "handler", "group"}:
                default = parameter.default
                if name == "plain_http_response":  # on/off here, the bytes there
                    default = default is not None
                if default is None and DEFAULTS[name] == ():  # "none" as an empty list
                    default = ()
                assert DEFAULTS[name] == default, name
                compared += 1
    assert compared >= 15


def test_every_setting_is_an_option_with_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    help_text = capsys.readouterr().out
    for name, option in OPTIONS.items():
        assert option.flag(name) in help_text
        assert option.help


def test_every_key_is_in_the_example_file_and_the_docs() -> None:
    example = EXAMPLE.read_text()
    deployment = (DOCS / "deployment.rst").read_text()
    for name in OPTIONS:
        assert re.search(rf"^#? ?{name} = ", example, re.MULTILINE) or name == "sni", name
        assert f"``{name}``" in deployment, name
    assert "[sni]" in example


def test_the_example_file_loads() -> None:
    settings = settings_of("--config", str(EXAMPLE))
    base = EXAMPLE.parent
    assert (settings.host, settings.port, settings.workers) == ("0.0.0.0", 443, 2)
    assert settings.cert == base / "certs/example.com/fullchain.pem"
    assert settings.upstream == "127.0.0.1:8080"
    assert settings.alpn == ("http/1.1",)
    assert settings.sni == (
        SNIEntry(
            "api.example.com",
            base / "certs/api.example.com/fullchain.pem",
            base / "certs/api.example.com/privkey.pem",
        ),
    )
    assert settings.metrics == "127.0.0.1:9100"
    assert settings.user == "trio-accept"


def test_the_example_units_agree_with_the_file() -> None:
    """The socket-activated unit starts as the file's user (so there is nothing to switch,
    which a non-root process could not do); the other unit starts as root and lets the
    file's ``user`` switch."""

    def keys(unit: str) -> dict[str, str]:
        lines = (DOCS / "examples" / unit).read_text().splitlines()
        return dict(line.split("=", 1) for line in lines if "=" in line and line[0] != "#")

    user = settings_of("--config", str(EXAMPLE)).user
    activated = keys("trio-accept-activated.service")
    assert activated["User"] == activated["Group"] == user
    assert "--config /etc/trio-accept/trio-accept.toml" in activated["ExecStart"]
    assert "User" not in keys("trio-accept.service")


# -- precedence ----------------------------------------------------------------------------


def test_the_command_line_overrides_the_file(tmp_path: Path) -> None:
    path = config(tmp_path, "port = 1\nproxy_protocol = true\nhello_timeout = 2\n")
    settings = settings_of("--config", str(path), "--port", "2", "--no-proxy-protocol")
    assert (settings.port, settings.proxy_protocol, settings.hello_timeout) == (2, False, 2.0)
    assert isinstance(settings.hello_timeout, float)
    assert settings.handshake_timeout == DEFAULTS["handshake_timeout"]


def test_paths_in_the_file_are_relative_to_it(tmp_path: Path) -> None:
    path = config(tmp_path, 'cert = "c.pem"\nkey = "/abs/k.pem"\n[sni]\n"x.test" = "x.pem"\n')
    settings = settings_of("--config", str(path), "--dev-ca", "ca")
    assert settings.cert == tmp_path / "c.pem"
    assert settings.key == Path("/abs/k.pem")
    assert settings.sni == (SNIEntry("x.test", tmp_path / "x.pem"),)
    assert settings.dev_ca == Path("ca")  # the command line's: relative to the directory


def test_lists_on_the_command_line() -> None:
    settings = settings_of(
        *("--alpn", "h2, http/1.1", "--sni", "a.test=a.pem", "--sni", "*.b.test=b.pem:b.key"),
        *("--fd", "3", "--fd", "4"),
    )
    assert settings.alpn == ("h2", "http/1.1")
    assert settings.sni == (
        SNIEntry("a.test", Path("a.pem")),
        SNIEntry("*.b.test", Path("b.pem"), Path("b.key")),
    )
    assert settings.fd == (3, 4)


def test_inherited_sockets_win_over_the_files_host_and_port(tmp_path: Path) -> None:
    path = config(tmp_path, 'host = "0.0.0.0"\nport = 443\nbacklog = 16\n')
    settings = settings_of("--config", str(path), "--fd", "3")
    assert settings.fd == (3,)
    assert {"host", "port", "backlog", "fd"} <= settings.explicit
    # The same in one file: the inherited socket wins (the command logs what it ignores).
    path = config(tmp_path, "fd = [3]\nport = 443\n")
    assert settings_of("--config", str(path)).fd == (3,)
    assert settings_of("--config", str(path), "--port", "1").fd == (3,)
    # What was defaulted is not explicit; what was typed or read is.
    assert settings_of("--port", "1").explicit == {"port"}
    assert settings_of() == settings_of("--port", "8443")  # equal: same values


# -- errors name what is wrong ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("hello_timout = 3", "unknown key 'hello_timout' (did you mean 'hello_timeout'?)"),
        ("zzz = 3", "unknown key 'zzz'"),
        ('port = "443"', "port: expected an integer, got '443'"),
        ("port = true", "port: expected an integer, got True"),
        ("hello_timeout = true", "hello_timeout: expected a number, got True"),
        ("proxy_protocol = 1", "proxy_protocol: expected true or false, got 1"),
        ('alpn = "h2"', "alpn: expected a list of strings, got 'h2'"),
        ("cert = 1", "cert: expected a path (a string), got 1"),
        ('fd = ["3"]', "fd: expected a file descriptor number or a list of them"),
        ('sni = "x"', "sni: expected a table"),
        ('[sni]\n"x.test" = { cert = "x.pem", password = "p" }', 'for "x.test" a certificate'),
        ("port = [", "not valid TOML"),
    ],
)
def test_file_errors(tmp_path: Path, text: str, message: str) -> None:
    path = config(tmp_path, text + "\n")
    with pytest.raises(SettingsError) as info:
        settings_of("--config", str(path))
    assert str(info.value).startswith(f"{path}: ")
    assert message in str(info.value)


def test_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"missing\.toml: No such file"):
        settings_of("--config", str(tmp_path / "missing.toml"))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--port", "70000"], "port (--port): must be <= 65535, got 70000"),
        (["--port", "-1"], "port (--port): must be >= 0, got -1"),
        (["--hello-timeout", "0"], "hello_timeout (--hello-timeout): must be > 0, got 0.0"),
        (["--idle-timeout", "nan"], "idle_timeout (--idle-timeout): must be > 0, got nan"),
        (["--workers", "0"], "workers (--workers): must be >= 1, got 0"),
        (["--session-tickets", "-1"], "session_tickets (--session-tickets): must be >= 0"),
        (["--fd", "-3"], "fd (--fd): must be >= 0, got -3"),
        (["--cert", "c.pem"], "cert (--cert) and key (--key) go together"),
        (
            ["--key-password-env", "A", "--key-password-file", "f", "--cert", "c", "--key", "k"],
            "give one",
        ),
        (["--key-password-env", "A"], "a key password needs cert and key"),
        (["--client-cert", "optional"], "client_cert (--client-cert) needs client_ca"),
        (["--upstream", "x:1", "--handler", "info"], "the upstream is the handler"),
        (["--upstream", "x:1", "--handler", "echo"], "the upstream is the handler"),
        (["--upstream-proxy-protocol"], "needs upstream (--upstream)"),
        (
            ["--handler", "info", "--alpn", "h2"],
            "handler (--handler) info speaks HTTP/1.1 only, but alpn (--alpn) offers h2: "
            "give alpn http/1.1, or none",
        ),
        (["--handler", "info", "--alpn", "http/1.1,h2"], "offers h2:"),
        (["--fd", "3", "--host", "::"], "fd (--fd) serves an inherited socket"),
        (["--fd", "3", "--backlog", "5"], "an inherited socket has its backlog"),
        (["--sni", "nope"], "--sni nope: expected NAME=CERT or NAME=CERT:KEY"),
    ],
)
def test_command_line_errors(argv: list[str], message: str) -> None:
    with pytest.raises(SettingsError) as info:
        settings_of(*argv)
    assert message in str(info.value)


def test_choices_are_checked_in_the_file_too(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as info:
        settings_of("--config", str(config(tmp_path, 'profile = "old"\n')))
    assert str(info.value) == "profile (--profile): 'old' is not one of intermediate, modern"


def test_client_cert_is_required_by_default() -> None:
    assert settings_of("--client-ca", "ca.pem").require_client_cert
    assert not settings_of(
        "--client-ca", "ca.pem", "--client-cert", "optional"
    ).require_client_cert
    assert not settings_of().require_client_cert
