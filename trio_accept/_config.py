"""Server TLS configuration: safe by default, clear when wrong, reloadable.

:func:`server_context` builds the :class:`ssl.SSLContext` a listener uses;
:class:`CertificateStore` holds one and swaps in a new one on reload, so that a reload
reaches new handshakes only and a failed reload changes nothing. (Reloading into a live
context would be wrong: a ``load_cert_chain`` that fails half-way leaves the new
certificate with the old key, and every handshake after it fails.)

Defaults follow Mozilla's server-side TLS guidelines (version 5.7), "intermediate"
profile, with one deviation forced by Python 3.11 -- which can set one key-exchange group,
not a list; see :data:`PROFILES` and the docs page on certificates.
"""

from __future__ import annotations

import datetime
import itertools
import logging
import os
import ssl
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, final

import trio
from cryptography import x509

from ._devcerts import DEV_IDENTITIES, dev_ca

logger = logging.getLogger("trio_accept")

#: A file path, as the ``ssl`` module takes them.
StrPath = str | os.PathLike[str]


class CertificateError(ValueError):
    """A certificate, key or CA file cannot be used; the message names the file and says
    what to do about it."""


class CertificateWarning(UserWarning):
    """A certificate that loads but that clients will reject (expired, not yet valid)."""


@final
@dataclass(frozen=True, slots=True)
class Profile:
    """A named set of protocol settings (see :data:`PROFILES`).

    Attributes:
        name: ``"intermediate"`` or ``"modern"``.
        minimum_version: The oldest TLS version accepted.
        ciphers: The TLS 1.2 cipher suites, in OpenSSL's notation (``None``: TLS 1.3
            only, whose suites OpenSSL's defaults already match).
        group: The one key-exchange group Python 3.11 lets us set (see :data:`PROFILES`).
    """

    name: str
    minimum_version: ssl.TLSVersion
    ciphers: str | None
    group: str


#: Mozilla's "intermediate" TLS 1.2 suites (guidelines 5.7), in their order. The DHE
#: suites are only ever chosen with DH parameters loaded, which we do not do: every
#: client that would pick them also offers ECDHE.
INTERMEDIATE_CIPHERS: Final = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "DHE-RSA-AES128-GCM-SHA256",
        "DHE-RSA-AES256-GCM-SHA384",
        "DHE-RSA-CHACHA20-POLY1305",
    )
)

#: The profiles. Both let the client choose among the suites (Mozilla: "cipher
#: preference: client chooses" -- all of them are strong, and clients know which ones
#: their hardware makes fast). Mozilla lists the groups X25519, P-256 and P-384; Python
#: 3.11 can set only one, and X25519 is the one every current client offers first, so it
#: costs no HelloRetryRequest round trip. A client without X25519 (some FIPS-mode
#: clients) is refused: pass ``group="prime256v1"`` to serve those, at the price of a
#: round trip for everyone else, or ``group=None`` for OpenSSL's own list (X25519,
#: P-256, X448, P-521, P-384), which scanners flag for the two groups Mozilla omits.
PROFILES: Final[Mapping[str, Profile]] = {
    "intermediate": Profile(
        "intermediate", ssl.TLSVersion.TLSv1_2, INTERMEDIATE_CIPHERS, "X25519"
    ),
    "modern": Profile("modern", ssl.TLSVersion.TLSv1_3, None, "X25519"),
}

#: Default for ``session_tickets``: OpenSSL's (two TLS 1.3 tickets per handshake), enough
#: for a client that opens two connections in parallel to resume both.
SESSION_TICKETS: Final = 2
_USE_PROFILE: Final = "profile"

#: What the ``sni`` argument maps a server name to: a certificate file with its key
#: inside, a ``(certificate, key)`` pair, or ``(certificate, key, password)`` for an
#: encrypted key.
SNICertificate = StrPath | tuple[StrPath, StrPath] | tuple[StrPath, StrPath, str | bytes]


def server_context(
    certfile: StrPath | None = None,
    keyfile: StrPath | None = None,
    *,
    password: str | bytes | None = None,
    profile: str = "intermediate",
    group: str | None = _USE_PROFILE,
    alpn: Sequence[str] | None = None,
    client_ca: StrPath | None = None,
    require_client_cert: bool = False,
    sni: Mapping[str, SNICertificate] | None = None,
    strict_sni: bool = False,
    session_tickets: int = SESSION_TICKETS,
    keylog_file: StrPath | None = None,
    dev_ca_directory: StrPath | None = None,
) -> ssl.SSLContext:
    """Build a server :class:`ssl.SSLContext` with safe defaults.

    Args:
        certfile: PEM file with the server certificate first, then its chain (the
            intermediates, not the root). ``None``: a development certificate for
            ``localhost``, ``127.0.0.1`` and ``::1`` from the per-user dev CA (see
            :func:`dev_ca_path`) -- never used when a certificate is given.
        keyfile: PEM file with the private key (RSA or ECDSA); ``None`` if it is in
            ``certfile``.
        password: For an encrypted key. Without one, an encrypted key is an error --
            never an interactive prompt on the server's terminal.
        profile: ``"intermediate"`` (TLS 1.2 and 1.3, the default) or ``"modern"``
            (TLS 1.3 only); see :data:`PROFILES`.
        group: The key-exchange group; by default the profile's (X25519), except
            with ``client_ca`` on a profile that allows TLS 1.2, where it is OpenSSL's
            list (TLS 1.2 checks ECDSA client certificates' curves against it).
            ``None`` keeps OpenSSL's list. See :data:`PROFILES` for the trade-off.
        alpn: The ALPN protocols the server speaks, most preferred first. A client
            that offers ALPN but none of these continues without ALPN
            (``stream.info.alpn_protocol`` is ``None``): decide in the handler.
        client_ca: PEM file of the CA(s) that issue client certificates (mTLS).
        require_client_cert: With ``client_ca``: refuse clients without a valid
            certificate (``no-client-cert``, ``unknown-ca``, ...). Otherwise a client
            certificate is optional, and verified when sent.
        sni: Server name -> certificate, for names that need another certificate than
            the default one: exact names (``"api.example.com"``) or wildcards matching
            one label (``"*.example.com"``). The chosen name is ``stream.info.server_name``.
        strict_sni: Refuse clients that ask for a name (or no name) not covered by
            ``sni`` or the default certificate's names, like nginx's
            ``ssl_reject_handshake`` / HAProxy's ``strict-sni`` (reason
            ``unrecognized-name``).
        session_tickets: TLS 1.3 tickets sent per handshake, for resumption; 0 turns
            session tickets off (TLS 1.2 and 1.3).
        keylog_file: Append the session keys to this file (``SSLKEYLOGFILE`` format,
            for Wireshark). Only when given: the environment variable is ignored.
        dev_ca_directory: Where the dev CA lives when ``certfile`` is ``None``.

    Raises:
        CertificateError: A file is missing or unusable; the message says which and why.

    Warns:
        CertificateWarning: The certificate has expired or is not valid yet.
    """
    try:
        chosen = PROFILES[profile]
    except KeyError:
        raise ValueError(f"unknown profile {profile!r}: use one of {sorted(PROFILES)}") from None
    if group == _USE_PROFILE:
        group = chosen.group
        if client_ca is not None and chosen.minimum_version <= ssl.TLSVersion.TLSv1_2:
            # TLS 1.2 checks an ECDSA client certificate's curve against our group
            # list: with X25519 alone, every P-256 client certificate would be refused
            # (WRONG_CURVE). With mTLS on TLS 1.2, OpenSSL's list is the one that works.
            group = None
    if session_tickets < 0:
        raise ValueError(f"session_tickets must be >= 0, got {session_tickets!r}")
    if require_client_cert and client_ca is None:
        raise ValueError("require_client_cert needs client_ca: the CA that issues them")

    def build(
        cert: StrPath | None, key: StrPath | None, key_password: str | bytes | None
    ) -> ssl.SSLContext:
        context = _base_context(chosen, group, session_tickets, keylog_file)
        if cert is None:
            dev_ca(Path(dev_ca_directory) if dev_ca_directory else None)[0].issue_cert(
                *DEV_IDENTITIES
            ).configure_cert(context)
        else:
            load_certificate(context, cert, key, password=key_password)
        if client_ca is not None:
            _load_client_ca(context, client_ca)
            context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
        if alpn:
            context.set_alpn_protocols(list(alpn))
        return context

    context = build(certfile, keyfile, password)
    if sni or strict_sni:
        by_name = {name.lower(): build(*_sni_entry(entry)) for name, entry in (sni or {}).items()}
        default_names: set[str] = (
            _names_of(certfile) if certfile is not None else set[str](DEV_IDENTITIES)
        )
        context.sni_callback = _SNISelector(by_name, default_names, strict=strict_sni)
    return context


def _base_context(
    profile: Profile, group: str | None, session_tickets: int, keylog_file: StrPath | None
) -> ssl.SSLContext:
    # PROTOCOL_TLS_SERVER rather than create_default_context(): the latter reads
    # SSLKEYLOGFILE from the environment, and key logging must be asked for explicitly.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = profile.minimum_version
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    context.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE  # the client chooses
    if profile.ciphers is not None:
        context.set_ciphers(profile.ciphers)
    if group is not None:
        context.set_ecdh_curve(group)
    if session_tickets == 0:
        context.options |= ssl.OP_NO_TICKET
    context.num_tickets = session_tickets
    if keylog_file is not None:
        context.keylog_filename = os.fspath(keylog_file)
    return context


def _sni_entry(entry: SNICertificate) -> tuple[StrPath, StrPath | None, str | bytes | None]:
    """``(certificate, key, password)`` from an ``sni`` value."""
    if isinstance(entry, tuple):
        if len(entry) == 3:  # noqa: PLR2004 -- (certificate, key, password)
            return entry
        return entry[0], entry[1], None
    return entry, None, None


def load_certificate(
    context: ssl.SSLContext,
    certfile: StrPath,
    keyfile: StrPath | None = None,
    *,
    password: str | bytes | None = None,
) -> None:
    """Load a certificate chain and its key into ``context``, checking them first.

    Raises:
        CertificateError: naming the file and what to do.

    Warns:
        CertificateWarning: expired or not yet valid.
    """
    keyfile = keyfile if keyfile is not None else certfile
    for path, what in ((certfile, "certificate"), (keyfile, "private key")):
        if not os.path.isfile(path):
            raise CertificateError(f"{os.fspath(path)}: no such file (the {what}); check the path")
    chain = _read_chain(certfile)
    _check_chain_order(certfile, chain)
    _check_validity(certfile, chain[0])

    def no_password() -> str:
        raise CertificateError(
            f"{os.fspath(keyfile)}: the private key is encrypted; pass its password"
        )

    try:
        context.load_cert_chain(
            certfile, keyfile, password if password is not None else no_password
        )
    except ssl.SSLError as exc:
        raise _key_error(certfile, keyfile, exc, encrypted=_is_encrypted(keyfile)) from exc


def _read_chain(certfile: StrPath) -> list[x509.Certificate]:
    data = Path(certfile).read_bytes()
    try:
        chain = x509.load_pem_x509_certificates(data)
    except ValueError:
        chain = []
    if not chain:
        raise CertificateError(
            f"{os.fspath(certfile)}: no PEM certificate in it; expected "
            "'-----BEGIN CERTIFICATE-----' blocks, the server certificate first"
        )
    return chain


def _check_chain_order(certfile: StrPath, chain: list[x509.Certificate]) -> None:
    for position, (child, parent) in enumerate(itertools.pairwise(chain), start=1):
        if child.issuer != parent.subject:
            issuer, subject = parent.subject.rfc4514_string(), child.subject.rfc4514_string()
            raise CertificateError(
                f"{os.fspath(certfile)}: certificate {position + 1} ({issuer}) did not issue "
                f"certificate {position} ({subject}); put the server certificate first, "
                "then each issuer in turn, up towards the root"
            )


def _check_validity(certfile: StrPath, leaf: x509.Certificate) -> None:
    now = datetime.datetime.now(datetime.UTC)
    problem = advice = None
    if now > leaf.not_valid_after_utc:
        problem = f"expired on {leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
        advice = "renew it"
    elif now < leaf.not_valid_before_utc:
        problem = f"is not valid before {leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
        advice = "check the clock, or wait"
    if problem is not None:
        message = (
            f"{os.fspath(certfile)}: the certificate {problem}: clients will reject it; {advice}"
        )
        logger.warning("%s", message)
        warnings.warn(message, CertificateWarning, stacklevel=4)


def _is_encrypted(keyfile: StrPath) -> bool:
    """Whether the key file holds an encrypted PEM key (PKCS#8 or OpenSSL's own form)."""
    try:
        data = Path(keyfile).read_bytes()
    except OSError:
        return False
    return b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in data or b"Proc-Type: 4,ENCRYPTED" in data


def _key_error(
    certfile: StrPath, keyfile: StrPath, exc: ssl.SSLError, *, encrypted: bool
) -> CertificateError:
    reason = exc.reason or ""
    cert, key = os.fspath(certfile), os.fspath(keyfile)
    if reason == "KEY_VALUES_MISMATCH":
        return CertificateError(
            f"{key}: this private key does not belong to the certificate in {cert}; "
            "use the key the certificate was issued for"
        )
    # A wrong password surfaces as a bare "PEM lib" error (OpenSSL 3 keeps BAD_DECRYPT
    # deeper in its error queue, where Python does not look): go by the file instead.
    if (
        encrypted
        or reason in {"BAD_DECRYPT", "BAD_PASSWORD_READ"}
        or "decrypt" in str(exc).lower()
    ):
        return CertificateError(f"{key}: cannot decrypt the private key; check its password")
    return CertificateError(f"{key}: no usable private key for {cert} ({exc})")


def _load_client_ca(context: ssl.SSLContext, client_ca: StrPath) -> None:
    if not os.path.isfile(client_ca):
        raise CertificateError(
            f"{os.fspath(client_ca)}: no such file (the client CA); check the path"
        )
    try:
        context.load_verify_locations(cafile=client_ca)
    except ssl.SSLError as exc:
        raise CertificateError(
            f"{os.fspath(client_ca)}: no usable CA certificate ({exc})"
        ) from exc


def _names_of(certfile: StrPath) -> set[str]:
    """The DNS names (and IP addresses) a certificate file's leaf is valid for."""
    leaf = _read_chain(certfile)[0]
    try:
        alt_names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    names = {name.lower() for name in alt_names.get_values_for_type(x509.DNSName)}
    names |= {str(address) for address in alt_names.get_values_for_type(x509.IPAddress)}
    return names


def _matches(name: str, pattern: str) -> bool:
    """Exact match, or a ``*.`` wildcard standing for exactly one label (RFC 6125)."""
    if pattern.startswith("*."):
        head, _, rest = name.partition(".")
        return bool(head) and rest == pattern[2:]
    return name == pattern


@final
class _SNISelector:
    """The ``sni_callback``: switch the connection to the certificate for its name."""

    __slots__ = ("_by_name", "_default_names", "_strict")

    def __init__(
        self, by_name: dict[str, ssl.SSLContext], default_names: set[str], *, strict: bool
    ) -> None:
        self._by_name = by_name
        self._default_names = default_names
        self._strict = strict

    def __call__(
        self, ssl_object: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext
    ) -> int | None:
        if server_name is None:  # no SNI: the default certificate, unless strict
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME if self._strict else None
        name = server_name.lower()
        context = self._by_name.get(name)
        if context is None:
            context = next(
                (ctx for pattern, ctx in self._by_name.items() if _matches(name, pattern)), None
            )
        if context is not None:
            ssl_object.context = context
            return None
        if self._strict and not any(_matches(name, known) for known in self._default_names):
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        return None


def dev_context(directory: StrPath | None = None) -> ssl.SSLContext:
    """:func:`server_context` with a development certificate from the dev CA.

    Args:
        directory: Where the CA lives; by default the per-user state directory,
            ``$XDG_STATE_HOME/trio-accept`` or ``~/.local/state/trio-accept``.
    """
    return server_context(dev_ca_directory=directory)


@final
class CertificateStore:
    """The server's current :class:`ssl.SSLContext`, replaceable while serving.

    Pass it as ``ssl_context=`` to :func:`serve_tls`, :func:`open_server` or
    :class:`TLSListener`: each new handshake uses :attr:`context` as it is at that
    moment, so :meth:`reload` reaches new handshakes only and established connections
    keep the certificate they started with.

    Args:
        factory: Builds a fresh context; called now and on every reload.
        files: The files ``factory`` reads, for :meth:`watch`.

    Error handling:
        A reload that fails keeps the current context, logs why, and stores the error
        in :attr:`last_error`.
    """

    __slots__ = ("_context", "_factory", "_files", "_stamps", "last_error", "reloads")

    def __init__(
        self, factory: Callable[[], ssl.SSLContext], *, files: Sequence[StrPath] = ()
    ) -> None:
        self._factory = factory
        self._files = [Path(path) for path in files]
        # Stamps first: a file that changes while the factory reads it is reloaded again.
        self._stamps = self._file_stamps()
        self._context = factory()
        #: Successful reloads so far.
        self.reloads: int = 0
        #: Why the last reload failed (``None`` after a successful one).
        self.last_error: Exception | None = None

    @classmethod
    def from_files(
        cls,
        certfile: StrPath,
        keyfile: StrPath | None = None,
        *,
        client_ca: StrPath | None = None,
        sni: Mapping[str, SNICertificate] | None = None,
        **options: Any,
    ) -> CertificateStore:
        """A store that rebuilds :func:`server_context` from these files on reload.

        ``options`` are the other arguments of :func:`server_context`.
        """
        files: list[StrPath] = [certfile]
        files += [path for path in (keyfile, client_ca) if path is not None]
        for entry in (sni or {}).values():
            certificate, key, _ = _sni_entry(entry)
            files += [path for path in (certificate, key) if path is not None]

        def factory() -> ssl.SSLContext:
            return server_context(
                certfile,
                keyfile,
                client_ca=client_ca,
                sni=sni,
                **options,
            )

        return cls(factory, files=files)

    @property
    def context(self) -> ssl.SSLContext:
        """The context new handshakes use."""
        return self._context

    def reload(self) -> bool:
        """Build a new context and switch to it; on failure keep the current one.

        Returns:
            Whether the new context is in use.
        """
        # Stamps before reading: a file that changes while the factory reads it must
        # look changed to watch(), or its final version is never loaded.
        self._stamps = self._file_stamps()
        try:
            with warnings.catch_warnings():
                # Warn at every reload, not once per process -- but after the
                # application's own filters ("ignore", "error"), which still apply.
                warnings.simplefilter("always", CertificateWarning, append=True)
                context = self._factory()
        except Exception as exc:  # a reload must never take the server down
            self.last_error = exc
            logger.error(  # noqa: TRY400 -- one line: the reason is in the message
                "certificate reload failed, keeping the current one: %s", exc
            )
            return False
        self._context = context
        self.reloads += 1
        self.last_error = None
        logger.info("certificates reloaded")
        return True

    async def watch(self, interval: float = 2.0) -> None:
        """Reload whenever one of the files changes (checked every ``interval`` seconds).

        Run it in a nursery next to the server; it runs until cancelled.
        """
        while True:
            await trio.sleep(interval)
            if self._file_stamps() != self._stamps:
                self.reload()

    def _file_stamps(self) -> list[tuple[int, int] | None]:
        stamps: list[tuple[int, int] | None] = []
        for path in self._files:
            try:
                stat = path.stat()
            except OSError:
                stamps.append(None)
            else:
                stamps.append((stat.st_mtime_ns, stat.st_size))
        return stamps
