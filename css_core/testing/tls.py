"""A throwaway certificate authority for the double's HTTPS (needs `trustme`, imported here only).

The double's certificate is issued by a fresh CA per double, for the loopback names, so a
client trusts it only when told to (`SSL_CERT_FILE=<ca_file>`, or `client_context()`):
exactly the situation of a service in front of a provider with a private CA.
"""

from __future__ import annotations

import shutil
import ssl
import tempfile
from collections.abc import Iterable
from pathlib import Path

__all__ = ("TestCA",)

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")


class TestCA:
    """A CA, its PEM file on disk, and a server context with a certificate for `names`."""

    __test__ = False  # not a pytest test class, whatever its name

    def __init__(self, names: Iterable[str] = ()) -> None:
        try:
            import trustme
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise RuntimeError("ProviderDouble(tls=True) needs trustme: pip install trustme") from exc
        self._ca = trustme.CA()
        identities = list(dict.fromkeys([*LOOPBACK_NAMES, *names]))
        self._cert = self._ca.issue_cert(*identities)
        self._dir = Path(tempfile.mkdtemp(prefix="provider-double-tls-"))
        self.ca_file = str(self._dir / "ca.pem")
        self._ca.cert_pem.write_to_path(self.ca_file)

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._cert.configure_cert(context)
        return context

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts this CA (and nothing else)."""
        context = ssl.create_default_context(cafile=self.ca_file)
        return context

    def remove(self) -> None:
        """Delete the CA's file."""
        shutil.rmtree(self._dir, ignore_errors=True)
