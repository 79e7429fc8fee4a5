"""`ProviderDouble`: a real HTTP/1.1 server that plays an LLM provider in tests.

It serves from its own asyncio loop in a daemon thread, over real sockets (keep-alive,
chunked server-sent events, optionally TLS), so sync tests, async tests and a service
started as a subprocess all reach it the way they reach the provider::

    with ProviderDouble(api_key="sk-test") as double:
        env = {"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": f"{double.url}/v1"}
        double.script(Fault.status(429, retry_after="1"), Fault.reset())
        ...  # the service's next two provider calls fail, the third succeeds
        assert double.requests[-1].json["model"] == "gpt-4"

By default it speaks OpenAI's API (and PerplexityAI's and GooseAI's, see `openai_api`);
`ProviderDouble.anthropic()` and `ProviderDouble.gemini()` speak those, and any other
HTTP/JSON API is a list of `Route`s away (`routes=`, `add_route`). A missing or wrong key
(`auth_header`, by default `authorization: Bearer <api_key>`) is answered as the route
says (by default 401), a missing `required_headers` entry 400, an unknown path 404 and a
body that is not JSON 400, all in the provider's error shape (`error_body`). Every request
is recorded in `requests` before it is answered; scripted faults apply to the next
requests, one each, in order. Each stream appends its outcome to `streams`: "completed",
"cut" or "client_closed".
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import struct
import threading
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import h11
import msgspec

from css_core.testing._exchange import Exchange
from css_core.testing.anthropic_api import ANTHROPIC_VERSION, anthropic_error, anthropic_routes
from css_core.testing.faults import Fault
from css_core.testing.gemini_api import gemini_error, gemini_routes
from css_core.testing.openai_api import openai_error, openai_routes, phrase
from css_core.testing.routes import RecordedRequest, Reject, Route
from css_core.testing.sse import Framing, Stream, encode_event
from css_core.testing.tls import TestCA

__all__ = ("ProviderDouble",)

Routes = Iterable[Route] | Callable[["ProviderDouble"], Iterable[Route]]
ErrorBody = Callable[[int, "str | None"], Any]
_SSE_HEAD = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


def _encode(body: Any) -> bytes:
    return body if isinstance(body, bytes) else msgspec.json.encode(body)


class ProviderDouble:
    """An HTTP server playing a provider (see the module docstring).

    `api_key=None` accepts any key. `routes`: the routes (or a function of the double
    returning them) used instead of OpenAI's; `tls=True` serves HTTPS with a certificate
    from a throwaway CA (`ca_file`) for the loopback names, `host` and `tls_names`.
    """

    reply: str | None  # the text of every completion; None: `expected_reply(model, last)`
    stream_chunks: int  # how many text events a stream has
    chunk_delay: float  # seconds between stream events
    response_delay: float  # seconds before answering any request
    framing: Framing  # how streams are written (a `Stream` may bring its own)
    routes: list[Route]  # tried in order; the first match answers

    def __init__(
        self,
        api_key: str | None = "test-key",
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        routes: Routes | None = None,
        auth_header: str = "authorization",
        auth_scheme: str | None = "Bearer",
        required_headers: Mapping[str, str] | None = None,
        error_body: ErrorBody = openai_error,
        framing: Framing | None = None,
        tls: bool = False,
        tls_names: Sequence[str] = (),
    ) -> None:
        self.api_key, self.host, self.port = api_key, host, port
        self.auth_header, self.auth_scheme = auth_header.lower(), auth_scheme
        self.required_headers = {k.lower(): v for k, v in (required_headers or {}).items()}
        self.error_body = error_body
        self.tls, self.tls_names = tls, tuple(tls_names)
        self.url = ""
        self.ca_file: str | None = None  # with `tls`, once started: the CA's PEM file
        self.requests: list[RecordedRequest] = []
        self.streams: list[str] = []
        self.connections = 0  # TCP connections accepted since the last reset
        self.handshakes = 0  # TLS handshakes completed since the last reset
        self.failed_handshakes = 0  # TLS handshakes failed (e.g. the client did not trust the CA)
        made = routes(self) if callable(routes) else routes
        self._default_routes = list(openai_routes(self) if made is None else made)
        self._default_framing = framing or Framing()
        self._faults: collections.deque[Fault] = collections.deque()
        self._changed = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None
        self._ca: TestCA | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.reset()

    @classmethod
    def anthropic(cls, api_key: str | None = "test-key", **options: Any) -> ProviderDouble:
        """A double of Anthropic's Messages API: `x-api-key`, `anthropic-version`, its errors."""
        defaults: dict[str, Any] = {
            "routes": anthropic_routes, "auth_header": "x-api-key", "auth_scheme": None,
            "required_headers": {"anthropic-version": ANTHROPIC_VERSION}, "error_body": anthropic_error,
        }
        return cls(api_key, **{**defaults, **options})

    @classmethod
    def gemini(cls, api_key: str | None = "test-key", **options: Any) -> ProviderDouble:
        """A double of Google's Gemini API: `x-goog-api-key`, its errors, CRLF event lines."""
        defaults: dict[str, Any] = {
            "routes": gemini_routes, "auth_header": "x-goog-api-key", "auth_scheme": None,
            "error_body": gemini_error, "framing": Framing(crlf=True),
        }
        return cls(api_key, **{**defaults, **options})

    # -- control, from the test's thread -------------------------------------------------
    def start(self) -> ProviderDouble:
        if self._loop is not None:
            raise RuntimeError("already started")
        if self.tls and self._ca is None:
            self._ca = TestCA([self.host, *self.tls_names])
            self.ca_file = self._ca.ca_file
        self._loop = loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=loop.run_forever, name="provider-double", daemon=True)
        self._thread.start()
        serving = asyncio.start_server(self._handle, self.host, self.port)
        try:
            server = asyncio.run_coroutine_threadsafe(serving, loop).result(timeout=10)
        except BaseException:
            self.stop()
            raise
        self._server = server
        self.port = server.sockets[0].getsockname()[1]
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"{'https' if self.tls else 'http'}://{host}:{self.port}"
        return self

    def stop(self) -> None:
        loop, self._loop = self._loop, None
        if loop is not None:
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=10)
            loop.call_soon_threadsafe(loop.stop)
            if self._thread is not None:
                self._thread.join(timeout=10)
            loop.close()
        if self._ca is not None:
            self._ca.remove()
            self._ca, self.ca_file = None, None

    def __enter__(self) -> ProviderDouble:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def script(self, *faults: Fault) -> None:
        """Enqueue faults: each of the next requests consumes one, in order."""
        self._faults.extend(faults)

    def add_route(self, *routes: Route) -> None:
        """Answer these routes too, before the others (so they can replace a built-in one)."""
        self.routes[:0] = routes

    def reset(self) -> None:
        """Forget requests, streams, counters, pending faults and added routes; restore the
        default behaviour (not `api_key`)."""
        self.requests.clear()
        self._faults.clear()
        with self._changed:
            self.streams.clear()
            self.connections = self.handshakes = self.failed_handshakes = 0
        self.routes = list(self._default_routes)
        self.framing = self._default_framing
        self.reply = None
        self.stream_chunks = 4
        self.chunk_delay = 0.0
        self.response_delay = 0.0

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0, what: str = "the condition") -> None:
        """Block until `predicate()` holds, re-checked whenever a request, a stream's end or a
        connection changes the double; raise TimeoutError after `timeout` seconds. A wait
        with a generous timeout, not a sleep, is what keeps tests steady on a loaded machine."""
        with self._changed:
            if not self._changed.wait_for(predicate, timeout):
                raise TimeoutError(f"{what} did not happen within {timeout} s")

    def wait_for_streams(self, n: int, timeout: float = 5.0) -> list[str]:
        """Block until `n` streams have ended; raise TimeoutError after `timeout` seconds."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.streams) >= n, timeout):
                raise TimeoutError(f"{len(self.streams)} of {n} streams ended: {self.streams}")
            return list(self.streams)

    def wait_for_requests(self, n: int, timeout: float = 5.0) -> list[RecordedRequest]:
        """Block until `n` requests have arrived; raise TimeoutError after `timeout` seconds."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.requests) >= n, timeout):
                raise TimeoutError(f"{len(self.requests)} of {n} requests arrived")
            return list(self.requests)

    def client_context(self) -> Any:
        """With `tls`: an `ssl.SSLContext` trusting the double's CA, for a test's own client."""
        if self._ca is None:
            raise RuntimeError("the double serves HTTPS only with tls=True, once started")
        return self._ca.client_context()

    def expected_reply(self, model: str, last_content: str) -> str:
        """The text of a completion while `reply` is None."""
        return f"Hello from {model}: {last_content}"

    def text_for(self, model: str, last_content: str) -> str:
        """The text the double answers for `model` and the last message: `reply` if set."""
        return self.reply if self.reply is not None else self.expected_reply(model, last_content)

    def embedding_for(self, text: str) -> list[float]:
        """A deterministic vector of 8 floats in [-1, 1] derived from a hash of `text`."""
        words = struct.unpack(">8H", hashlib.sha256(text.encode()).digest()[:16])
        return [round(w / 65535 * 2 - 1, 6) for w in words]

    # -- the server, on the loop thread --------------------------------------------------
    async def _shutdown(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        connection = self._count("connections")
        ex = Exchange(reader, writer)
        try:
            if self._ca is not None:
                try:
                    await writer.start_tls(self._ca.server_context(), ssl_handshake_timeout=10)
                except OSError:  # ssl.SSLError, a timeout, a reset
                    self._count("failed_handshakes")
                    return
                self._count("handshakes")
            while (request := await ex.read_request()) is not None:
                keep_alive = await self._respond(ex, *request, connection)
                if not keep_alive or ex.conn.states != {h11.CLIENT: h11.DONE, h11.SERVER: h11.DONE}:
                    break
                ex.conn.start_next_cycle()
        except h11.RemoteProtocolError:
            if ex.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                with contextlib.suppress(Exception):
                    await self._send(ex, 400, self.error_body(400, "Malformed HTTP request"))
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    def _count(self, counter: str) -> int:
        with self._changed:
            value: int = getattr(self, counter) + 1
            setattr(self, counter, value)
            self._changed.notify_all()
            return value

    def _record(self, request: RecordedRequest) -> None:
        with self._changed:
            self.requests.append(request)
            self._changed.notify_all()

    async def _send(self, ex: Exchange, status: int, body: Any, *extra: tuple[bytes, bytes],
                    cut: bool = False) -> None:
        await ex.send_body(status, _encode(body), *extra, reason=phrase(status).encode(), cut=cut)

    async def _respond(self, ex: Exchange, request: h11.Request, body: bytes, connection: int) -> bool:
        """Answer one request; return False when the connection must be closed."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in request.headers}
        json_ok = True
        try:
            decoded = msgspec.json.decode(body) if body else None
        except msgspec.DecodeError:
            decoded, json_ok = None, False
        method, target = request.method.decode(), request.target.decode("latin-1")
        query = dict(urllib.parse.parse_qsl(target.partition("?")[2], keep_blank_values=True))
        rec = RecordedRequest(method, target.partition("?")[0], headers, body, decoded, query=query,
                              connection=connection, target=target)
        self._record(rec)
        fault = self._faults.popleft() if self._faults else Fault("none")
        delay = self.response_delay + (fault.seconds if fault.kind == "delay" else 0.0)
        if delay > 0:
            await asyncio.sleep(delay)
        if fault.kind in ("hang", "reset", "status", "malformed_json"):
            return await self._misbehave(ex, fault)
        try:
            status, answer = self._answer(rec, json_ok)
        except Reject as error:
            await self._send(ex, error.status, self._reject_body(error))
            return True
        cut = fault.after_chunks if fault.kind == "cut_stream" else None
        if isinstance(answer, Stream):
            return await self._stream(ex, answer, cut)
        await self._send(ex, status, answer, cut=cut is not None)
        return cut is None

    def _reject_body(self, error: Reject) -> Any:
        return error.body if error.body is not None else self.error_body(error.status, error.message)

    def _answer(self, rec: RecordedRequest, json_ok: bool) -> tuple[int, Any]:
        """The route's status and answer for a request the double does not fault, or `Reject`."""
        route: Route | None = None
        for candidate in self.routes:
            if (params := candidate.match(rec.method, rec.path, rec.query)) is not None:
                route, rec.params = candidate, params
                break
        if self.api_key is not None:
            expected = f"{self.auth_scheme} {self.api_key}" if self.auth_scheme else self.api_key
            if rec.headers.get(self.auth_header) != expected:
                if route is not None and route.unauthorized is not None:
                    raise Reject(route.unauthorized[0], body=route.unauthorized[1])
                raise Reject(401)
        for name, value in self.required_headers.items():
            if rec.headers.get(name) != value:
                raise Reject(400, f"{name}: header required ({value!r})")
        if route is None:
            raise Reject(404, f"Invalid URL ({rec.method} {rec.path})")
        if not json_ok:
            raise Reject(400)
        return route.status, route.respond(rec)

    async def _misbehave(self, ex: Exchange, fault: Fault) -> bool:
        """Answer in place of the provider as `fault` says; return False to close."""
        if fault.kind == "hang":
            await asyncio.sleep(fault.seconds)
        elif fault.kind == "reset":
            ex.abort()
        elif fault.kind == "status":
            body = fault.body if fault.body is not None else self.error_body(fault.code, None)
            retry = () if fault.retry_after is None else ((b"retry-after", fault.retry_after.encode()),)
            await self._send(ex, fault.code, body, *retry)
        else:  # malformed_json
            await ex.send_body(200, b'{"id": "chatcmpl-broken", "choices": [<html>', reason=b"OK")
        return fault.kind in ("status", "malformed_json")

    async def _stream(self, ex: Exchange, stream: Stream, cut: int | None) -> bool:
        """Send `stream` as SSE, watching the socket so that a client leaving is seen at once."""
        framing = stream.framing or self.framing
        events = stream.all_events(cut=cut)
        outcome = "client_closed"
        watch: asyncio.Future[bytes] = asyncio.ensure_future(ex.reader.read(65536))
        try:
            await ex.send(h11.Response(status_code=200, headers=_SSE_HEAD, reason=b"OK"))  # h11 chunks it
            for i, event in enumerate(events):
                if i and self.chunk_delay > 0:
                    await asyncio.wait({watch}, timeout=self.chunk_delay)
                for j, piece in enumerate(encode_event(event, i + 1, framing)):
                    if j:
                        await asyncio.wait({watch}, timeout=framing.split_pause)
                    if not self._client_still_there(ex, watch):
                        return False
                    watch = self._rewatch(ex, watch)
                    await ex.send(h11.Data(data=piece))
            if cut is not None:
                outcome = "cut"
                return False
            await ex.send(h11.EndOfMessage())
            outcome = "completed"
            return True
        except ConnectionError:
            return False
        finally:
            watch.cancel()
            with self._changed:
                self.streams.append(outcome)
                self._changed.notify_all()

    @staticmethod
    def _client_still_there(ex: Exchange, watch: asyncio.Future[bytes]) -> bool:
        """False once the client closed (EOF, an error) or the transport is closing."""
        if watch.done() and (watch.cancelled() or watch.exception() is not None or not watch.result()):
            return False
        return not ex.writer.transport.is_closing()

    @staticmethod
    def _rewatch(ex: Exchange, watch: asyncio.Future[bytes]) -> asyncio.Future[bytes]:
        """A pipelined request that arrived mid-stream is kept for h11; watch the socket anew."""
        if watch.done():
            ex.conn.receive_data(watch.result())
            return asyncio.ensure_future(ex.reader.read(65536))
        return watch
