"""Zero-config development certificates, made with trustme and kept across restarts.

A dev CA is created once per user and stored in the state directory, so a client told to
trust it (``curl --cacert``) keeps trusting the server after a restart; the server's leaf
certificate (``localhost``, ``127.0.0.1``, ``::1``) is issued fresh from it at each
start, into a context with the same safe settings as any other (see ``_config``).
Nothing here is ever used when the user gave a certificate.

trustme marks the subjectAltName extension critical while the subject is non-empty;
OpenSSL, Python's ``ssl`` and curl accept that, strict RFC 5280 validators (the one in
``cryptography``, for instance) reject it. Fine for development; do not test clients
that use such validators against dev certificates.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

import trustme

#: File names inside the state directory.
CA_CERT_FILE: Final = "dev-ca.pem"
CA_KEY_FILE: Final = "dev-ca-key.pem"
#: The names the dev leaf certificate is valid for: the loopback ways to say "here".
DEV_IDENTITIES: Final = ("localhost", "127.0.0.1", "::1")


def state_directory() -> Path:
    """Where trio-accept keeps per-user state: ``$XDG_STATE_HOME/trio-accept``, or
    ``~/.local/state/trio-accept`` when that variable is not set (XDG Base Directory)."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(Path.home(), ".local", "state")
    return Path(base) / "trio-accept"


def dev_ca_path(directory: Path | None = None) -> Path:
    """The dev CA certificate a client must trust (PEM), creating the CA if needed.

    Args:
        directory: Where the CA lives; by default the per-user state directory,
            ``$XDG_STATE_HOME/trio-accept`` or ``~/.local/state/trio-accept``.
    """
    return _load_or_create_ca(directory or state_directory())[1]


def dev_ca(directory: Path | None = None) -> tuple[trustme.CA, Path]:
    """The dev CA and the path of its certificate, creating them if needed.

    Args:
        directory: Where the CA lives; :func:`state_directory` by default.
    """
    return _load_or_create_ca(directory or state_directory())


def _load_or_create_ca(directory: Path) -> tuple[trustme.CA, Path]:
    cert_path, key_path = directory / CA_CERT_FILE, directory / CA_KEY_FILE
    if cert_path.exists() and key_path.exists():
        return trustme.CA.from_pem(cert_path.read_bytes(), key_path.read_bytes()), cert_path
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name="trio-accept development CA")
    # The key first, readable by its owner only; then the certificate, which is public.
    descriptor = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as key_file:
        os.fchmod(descriptor, 0o600)  # the mode above applies only if the file is new
        key_file.write(ca.private_key_pem.bytes())
    ca.cert_pem.write_to_path(str(cert_path))
    return ca, cert_path
