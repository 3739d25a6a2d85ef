"""Development certificates: where the dev CA lives, how it is kept, and real handshakes."""

from __future__ import annotations

import ssl
import stat
from pathlib import Path

import pytest
import trustme

from trio_accept._config import dev_context
from trio_accept._devcerts import (
    CA_CERT_FILE,
    CA_KEY_FILE,
    DEV_IDENTITIES,
    dev_ca_path,
    state_directory,
)


def handshake(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext, server_hostname: str
) -> bytes:
    """Run a TLS handshake between two in-memory SSLObjects, then send one message from
    the client to the server. Returns the server's certificate (DER) as the client saw it;
    raises the client's :exc:`ssl.SSLError` if it rejects the server."""
    server_in, server_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    client_in, client_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    server = server_context.wrap_bio(server_in, server_out, server_side=True)
    client = client_context.wrap_bio(client_in, client_out, server_hostname=server_hostname)
    client_done = server_done = False
    for _ in range(10):  # a TLS 1.2 or 1.3 handshake needs 2 or 3 flights
        if not client_done:
            try:
                client.do_handshake()
                client_done = True
            except ssl.SSLWantReadError:
                pass
        server_in.write(client_out.read())
        if not server_done:
            try:
                server.do_handshake()
                server_done = True
            except ssl.SSLWantReadError:
                pass
        client_in.write(server_out.read())
        if client_done and server_done:
            break
    else:
        raise AssertionError("the handshake did not finish")
    client.write(b"ping")
    server_in.write(client_out.read())
    assert server.read(4) == b"ping"
    certificate = client.getpeercert(binary_form=True)
    assert certificate is not None
    return certificate


def trusting(ca_file: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca_file))
    assert context.check_hostname
    assert context.verify_mode is ssl.CERT_REQUIRED
    return context


# -- where the CA lives ------------------------------------------------------------------


def test_state_directory_honours_xdg_state_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert state_directory() == tmp_path / "state" / "trio-accept"


@pytest.mark.parametrize("xdg_state_home", [None, ""])
def test_state_directory_falls_back_to_local_state(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, xdg_state_home: str | None
) -> None:
    # Unset or empty: both mean "use the default" in the XDG Base Directory spec.
    if xdg_state_home is None:
        monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    else:
        monkeypatch.setenv("XDG_STATE_HOME", xdg_state_home)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert state_directory() == tmp_path / ".local" / "state" / "trio-accept"


def test_dev_ca_path_defaults_to_the_state_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert dev_ca_path() == tmp_path / "trio-accept" / CA_CERT_FILE
    assert (tmp_path / "trio-accept" / CA_KEY_FILE).is_file()


# -- how it is kept ----------------------------------------------------------------------


def test_dev_ca_path_creates_the_ca_with_a_private_key(tmp_path: Path) -> None:
    directory = tmp_path / "not" / "there" / "yet"
    path = dev_ca_path(directory)
    assert path == directory / CA_CERT_FILE
    assert path.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
    key = directory / CA_KEY_FILE
    assert b"PRIVATE KEY-----" in key.read_bytes()
    assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_dev_ca_is_reused(tmp_path: Path) -> None:
    first = dev_ca_path(tmp_path)
    cert, key = first.read_bytes(), (tmp_path / CA_KEY_FILE).read_bytes()
    second = dev_ca_path(tmp_path)
    assert second == first
    assert second.read_bytes() == cert
    assert (tmp_path / CA_KEY_FILE).read_bytes() == key
    dev_context(tmp_path)  # issuing a leaf does not replace the CA either
    assert first.read_bytes() == cert


def test_recreated_key_is_private_even_over_an_existing_file(tmp_path: Path) -> None:
    # A CA whose certificate was deleted is created anew; a key file left behind with
    # a lax mode must not keep that mode.
    stale_key = tmp_path / CA_KEY_FILE
    stale_key.write_bytes(b"stale")
    stale_key.chmod(0o644)
    dev_ca_path(tmp_path)
    assert stat.S_IMODE(stale_key.stat().st_mode) == 0o600
    assert stale_key.read_bytes() != b"stale"


# -- handshakes ----------------------------------------------------------------------------


@pytest.mark.parametrize("identity", DEV_IDENTITIES)
def test_dev_context_verifies_for_each_identity(tmp_path: Path, identity: str) -> None:
    handshake(dev_context(tmp_path), trusting(dev_ca_path(tmp_path)), identity)


def test_dev_identities_are_the_loopback_names() -> None:
    assert set(DEV_IDENTITIES) == {"localhost", "127.0.0.1", "::1"}


def test_dev_context_is_rejected_for_another_name(tmp_path: Path) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(dev_context(tmp_path), trusting(dev_ca_path(tmp_path)), "example.com")


def test_dev_context_is_rejected_by_a_client_trusting_another_ca(tmp_path: Path) -> None:
    other = trustme.CA()
    client_context = ssl.create_default_context()
    other.configure_trust(client_context)
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(dev_context(tmp_path), client_context, "localhost")


def test_each_dev_context_has_a_fresh_leaf_from_the_same_ca(tmp_path: Path) -> None:
    client_context = trusting(dev_ca_path(tmp_path))  # the CA file as first written
    first = handshake(dev_context(tmp_path), client_context, "localhost")
    second = handshake(dev_context(tmp_path), client_context, "localhost")
    assert first != second
