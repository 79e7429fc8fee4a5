"""A small real HTTP forward proxy for tests, on loopback, that records what it carried.

`HTTPProxy` serves from its own asyncio loop in a daemon thread, like the provider double:

- `CONNECT host:port` opens a tunnel (for https: the client's TLS runs through it, end to end);
- a request with an absolute URI (`POST http://host:port/path HTTP/1.1`, for plain http) is
  forwarded in origin form, one request per connection (`Connection: close` both ways), so
  each one is seen and counted.

Every request is recorded in `requests` as `(method, target)` before it is carried. It
refuses (403) any destination outside 127.0.0.0/8 and `localhost`: tests never leave the
machine through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import threading
from typing import Any
from urllib.parse import urlsplit

__all__ = ("HTTPProxy",)

_HOP_BY_HOP = {b"proxy-connection", b"proxy-authorization", b"connection", b"keep-alive"}


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class HTTPProxy:
    """A forward proxy on `127.0.0.1:<port>` (see the module docstring); `url` is its address."""

    def __init__(self) -> None:
        self.url = ""
        self.requests: list[tuple[str, str]] = []
        self._changed = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    def start(self) -> HTTPProxy:
        self._loop = loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=loop.run_forever, name="http-proxy", daemon=True)
        self._thread.start()
        server = asyncio.run_coroutine_threadsafe(asyncio.start_server(self._handle, "127.0.0.1", 0), loop)
        self._server = server.result(timeout=10)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    def stop(self) -> None:
        loop, self._loop = self._loop, None
        if loop is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=10)
        loop.close()

    def __enter__(self) -> HTTPProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def reset(self) -> None:
        with self._changed:
            self.requests.clear()

    def wait_for_requests(self, n: int, timeout: float = 10.0) -> list[tuple[str, str]]:
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.requests) >= n, timeout):
                raise TimeoutError(f"{len(self.requests)} of {n} requests went through the proxy")
            return list(self.requests)

    # -- on the loop thread ---------------------------------------------------------------------
    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            request_line, *header_lines = head[:-4].split(b"\r\n")
            method, target, version = request_line.decode("latin-1").split(" ", 2)
            with self._changed:
                self.requests.append((method, target))
                self._changed.notify_all()
            if method == "CONNECT":
                host, _, port = target.rpartition(":")
                await self._tunnel(reader, writer, host, int(port), version)
            else:
                await self._forward(reader, writer, method, target, version, header_lines)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
            pass
        except asyncio.CancelledError:
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _open(self, writer: asyncio.StreamWriter, host: str, port: int, version: str) -> Any:
        if not _loopback(host):
            writer.write(f"{version} 403 Forbidden\r\ncontent-length: 0\r\n\r\n".encode())
            await writer.drain()
            return None
        try:
            return await asyncio.open_connection(host.strip("[]"), port)
        except OSError:
            writer.write(f"{version} 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n".encode())
            await writer.drain()
            return None

    async def _tunnel(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, port: int,
                      version: str) -> None:
        upstream = await self._open(writer, host, port, version)
        if upstream is None:
            return
        writer.write(f"{version} 200 Connection established\r\n\r\n".encode())
        await writer.drain()
        await self._pipe(reader, writer, *upstream)

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, method: str, target: str,
                       version: str, header_lines: list[bytes]) -> None:
        url = urlsplit(target)
        if url.scheme != "http" or url.hostname is None:
            writer.write(f"{version} 400 Bad Request\r\ncontent-length: 0\r\n\r\n".encode())
            await writer.drain()
            return
        upstream = await self._open(writer, url.hostname, url.port or 80, version)
        if upstream is None:
            return
        path = url.path or "/"
        if url.query:
            path += "?" + url.query
        kept = [line for line in header_lines if line.split(b":", 1)[0].strip().lower() not in _HOP_BY_HOP]
        head = [f"{method} {path} {version}".encode(), *kept, b"connection: close"]
        upstream[1].write(b"\r\n".join(head) + b"\r\n\r\n")
        await self._pipe(reader, writer, *upstream)

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    up_reader: asyncio.StreamReader, up_writer: asyncio.StreamWriter) -> None:
        """Copy both ways until the upstream side is done (it closes after its answer), or either side fails."""

        async def copy(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
                if sink.can_write_eof():
                    sink.write_eof()

        outbound = asyncio.ensure_future(copy(reader, up_writer))
        inbound = asyncio.ensure_future(copy(up_reader, writer))
        try:
            await inbound  # the answer, to its end
        finally:
            outbound.cancel()
            await asyncio.gather(outbound, return_exceptions=True)
            up_writer.close()
