"""For measurement only: the service's provider calls through pyreqwest's httpx transport.

With this directory and bench/ on `PYTHONPATH` and `BENCH_PYREQWEST=1`, every Python process
(pytest, and the command line and its workers that tests launch) swaps each `ProviderHTTP`'s
transport and client for pyreqwest's once the pool is opened (bench/variants.py
`pyreqwest_transport`, given the `SSL_CERT_FILE` of the settings; `BENCH_PYREQWEST=shipped`:
the transport as pyreqwest ships it), so that the project's own transport tests can be run
against it:

    BENCH_PYREQWEST=1 PYTHONPATH=bench/pyreqwest_site:bench pytest tests/test_tls.py ...

Calls through a proxy are sent by the same transport: reqwest reads the proxy variables
itself. Nothing here is imported by the service.
"""

from __future__ import annotations

import os

if (_SWITCH := os.environ.get("BENCH_PYREQWEST")) in ("1", "shipped"):
    import httpx
    from variants import pyreqwest_transport

    from css_core.providers.http import ProviderHTTP

    _init, _enter = ProviderHTTP.__init__, ProviderHTTP.__aenter__

    def __init__(self, settings, base_urls=()):  # type: ignore[no-untyped-def]
        _init(self, settings, base_urls)
        self.bench_cafile = settings.get("SSL_CERT_FILE")

    async def __aenter__(self):  # type: ignore[no-untyped-def]
        await _enter(self)
        old = self.client
        self.transport = pyreqwest_transport(self.timeout, self.bench_cafile, shipped=_SWITCH == "shipped")
        self.client = httpx.AsyncClient(transport=self.transport, timeout=self.timeout, trust_env=False)
        self._transports = dict.fromkeys(self._transports, self.transport)
        await old.aclose()
        return self

    ProviderHTTP.__init__ = __init__  # type: ignore[method-assign]
    ProviderHTTP.__aenter__ = __aenter__  # type: ignore[method-assign]
