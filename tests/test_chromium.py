"""Headless Chromium loads the ``info`` handler's page: a real browser's TLS stack
(BoringSSL, its own certificate verifier over an NSS database) against our listener.

Chromium exits 0 even when the certificate is refused (it dumps its error page), so the
tests look at the page, and at what the server counted.
"""

from __future__ import annotations

import os
import shutil
import signal
from typing import TYPE_CHECKING, Final

import pytest
import trio

from trio_accept import Reason, dev_ca_path, dev_context, info_handler, open_server

if TYPE_CHECKING:
    from pathlib import Path

    from trio_accept import Server

pytestmark = pytest.mark.interop

#: The Debian packages these tests need: the browser, and ``certutil`` to make the NSS
#: database (``$HOME/.pki/nssdb``) through which Chromium on Linux trusts a CA.
DEBIAN_PACKAGES: Final = ("chromium", "libnss3-tools")
CHROMIUM: Final = shutil.which("chromium") or shutil.which("chromium-browser")
CERTUTIL: Final = shutil.which("certutil")
#: A safety net for one browser run (real clock): starting Chromium takes a few seconds
#: on a loaded machine, loading the page milliseconds.
BROWSER_GUARD: Final = 90

if CHROMIUM is None or CERTUTIL is None:
    pytest.skip(
        f"needs Chromium and certutil (Debian: {' '.join(DEBIAN_PACKAGES)})",
        allow_module_level=True,
    )


async def kill_process_group(process: trio.Process) -> None:
    """Chromium starts helper processes (zygote, GPU, network): end them all, by the
    group id of the one we started (it leads its own session)."""
    os.killpg(process.pid, signal.SIGKILL)


async def make_nss_home(home: Path, ca_file: Path | None) -> None:
    """A fresh ``$HOME`` whose NSS database trusts ``ca_file`` to issue server
    certificates (``C,,``), or trusts nothing extra when it is ``None``."""
    assert CERTUTIL is not None
    database = home / ".pki" / "nssdb"
    database.mkdir(parents=True)
    await trio.run_process([CERTUTIL, "-d", f"sql:{database}", "-N", "--empty-password"])
    if ca_file is not None:
        await trio.run_process(
            [CERTUTIL, "-d", f"sql:{database}", "-A", "-n", "trio-accept-dev",
             "-t", "C,,", "-i", str(ca_file)]
        )  # fmt: skip


async def dump_dom(url: str, home: Path, profile: Path) -> str:
    """Load ``url`` in headless Chromium with ``home`` as ``$HOME``; the DOM it shows."""
    assert CHROMIUM is not None
    with trio.fail_after(BROWSER_GUARD):
        result = await trio.run_process(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update",
             f"--user-data-dir={profile}", "--dump-dom", url],
            env={**os.environ, "HOME": str(home)},
            capture_stdout=True,
            capture_stderr=True,
            start_new_session=True,
            deliver_cancel=kill_process_group,
        )  # fmt: skip
    return result.stdout.decode()


async def load_page(tmp_path: Path, *, trust: bool) -> tuple[str, Server]:
    ca_directory = tmp_path / "dev-ca"
    context = dev_context(ca_directory)  # a certificate for localhost, 127.0.0.1, ::1
    home = tmp_path / "home"
    await make_nss_home(home, dev_ca_path(ca_directory) if trust else None)
    async with open_server(
        info_handler, host="127.0.0.1", ssl_context=context, idle_timeout=BROWSER_GUARD
    ) as server:
        port = server.addresses[0][1]
        # localhost: the name on the certificate; Chromium falls back from ::1.
        page = await dump_dom(f"https://localhost:{port}/", home, tmp_path / "profile")
        await server.shutdown(grace=0)
    return page, server


async def test_chromium_shows_the_connection(tmp_path: Path) -> None:
    page, server = await load_page(tmp_path, trust=True)
    assert '<dd id="tls-version">TLSv1.3</dd>' in page, page
    assert '<dd id="server-name">localhost</dd>' in page
    assert '<dd id="request-line">GET / HTTP/1.1</dd>' in page
    assert '<dd id="client-address">127.0.0.1:' in page
    assert '<dd id="client-certificate">none</dd>' in page
    assert server.stats.completed >= 1
    assert server.stats.handler_errors == 0


async def test_chromium_refuses_an_untrusted_certificate(tmp_path: Path) -> None:
    page, server = await load_page(tmp_path, trust=False)
    assert 'id="tls-version"' not in page
    assert "This connection, as the server sees it" not in page
    stats = server.stats
    assert stats.completed == 0
    # The alert Chromium (BoringSSL) sends when it rejects our certificate: today
    # bad_certificate; unknown_ca is what other clients send for the same problem.
    assert sum(stats.failed.values()) >= 1, stats
    assert set(stats.failed) <= {Reason.BAD_CERTIFICATE, Reason.UNKNOWN_CA}, stats
