"""A real HTTP test double of the LLM providers (OpenAI, PerplexityAI, GooseAI).

`ProviderDouble` serves HTTP/1.1 (keep-alive, chunked server-sent events) on a loopback
port from its own asyncio loop in a daemon thread, so sync tests, async tests and a
service started as a subprocess all reach it over real sockets::

    with ProviderDouble(api_key="sk-test") as double:
        env = {"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": f"{double.url}/v1"}
        double.script(Fault.status(429, retry_after="1"), Fault.reset())
        ...  # the service's next two provider calls fail, the third succeeds
        assert double.requests[-1].json["model"] == "gpt-4"

Routes match on the path suffix, so any base prefix works (`{url}/v1` for OpenAI and
GooseAI, `{url}` for Perplexity): `.../chat/completions`, `.../embeddings` and
`.../engines/{model}/completions`; anything else is a 404. A missing or wrong
`Authorization: Bearer <api_key>` is a 401 and a body that is not JSON a 400, all with
OpenAI's error shape. Every request is recorded in `requests` before it is answered;
scripted faults apply to the next requests, one each, in order. Each streaming request
appends its outcome to `streams`: "completed", "cut" or "client_closed".

Demo: ``python -m tests.provider_double --port 8100 --key sk-demo``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import hashlib
import http
import itertools
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import h11
import msgspec

__all__ = ("Fault", "ProviderDouble", "RecordedRequest")

_IDS = itertools.count(1)
_json = msgspec.json.encode
_Answer = tuple[Any, "list[Any] | None"]  # (JSON answer, None) or (None, stream events)
_Header = tuple[bytes, bytes]
_SSE_HEAD = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
_ERRORS = {  # OpenAI's (message, type, code) for the statuses tests use most
    400: ("We could not parse the JSON body of your request.", "invalid_request_error", None),
    401: ("Incorrect API key provided", "invalid_request_error", "invalid_api_key"),
    404: ("The model does not exist", "invalid_request_error", "model_not_found"),
    429: ("Rate limit reached for requests", "requests", "rate_limit_exceeded"),
    500: ("The server had an error while processing your request.", "server_error", None),
    503: ("The engine is currently overloaded, please try again later.", "server_error", None),
}


@dataclass(frozen=True)
class Fault:
    """One scripted misbehaviour, consumed by the next request (see `ProviderDouble.script`)."""

    kind: str
    seconds: float = 0.0
    code: int = 0
    retry_after: str | None = None
    body: bytes | None = None
    after_chunks: int = 0

    @staticmethod
    def status(code: int, *, retry_after: str | None = None, body: bytes | None = None) -> Fault:
        """Answer `code` with OpenAI's error body (or `body`); `retry_after` is sent verbatim."""
        if not 200 <= code <= 599 or code in (204, 304):
            raise ValueError(f"status {code} cannot carry a body")
        return Fault("status", code=code, retry_after=retry_after, body=body)

    @staticmethod
    def hang(seconds: float) -> Fault:
        """Read the request, send nothing for `seconds`, then close the connection."""
        return Fault("hang", seconds=seconds)

    @staticmethod
    def delay(seconds: float) -> Fault:
        """Answer normally, but only after `seconds`."""
        return Fault("delay", seconds=seconds)

    @staticmethod
    def malformed_json() -> Fault:
        """Answer 200 with a JSON content type and a body that is not JSON."""
        return Fault("malformed_json")

    @staticmethod
    def reset() -> Fault:
        """Read the request, then abort the TCP connection (RST) without a response."""
        return Fault("reset")

    @staticmethod
    def cut_stream(after_chunks: int) -> Fault:
        """Stream the role event and `after_chunks` content events, then close the connection
        (no terminating chunk, no [DONE]). A non-streaming request gets half its body."""
        return Fault("cut_stream", after_chunks=after_chunks)


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    json: Any  # the decoded body, or None if empty or not JSON


class _HTTPError(Exception):
    def __init__(self, status: int, message: str | None = None) -> None:
        super().__init__(message)
        self.status, self.body = status, _error_body(status, message)


def _error_body(status: int, message: str | None = None) -> dict[str, Any]:
    kind = "server_error" if status >= 500 else "invalid_request_error"
    default, kind, code = _ERRORS.get(status, (_phrase(status), kind, None))
    return {"error": {"message": message or default, "type": kind, "code": code}}


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _split(text: str, n: int) -> list[str]:
    """`n` consecutive pieces of `text` (some may be empty) whose concatenation is `text`."""
    n = max(1, n)
    size, extra = divmod(len(text), n)
    starts = [i * size + min(i, extra) for i in range(n + 1)]
    return [text[starts[i] : starts[i + 1]] for i in range(n)]


class _Exchange:
    """One client connection: the h11 state machine and the socket's streams."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.conn, self.reader, self.writer = h11.Connection(h11.SERVER), reader, writer

    async def next_event(self) -> Any:
        while (event := self.conn.next_event()) is h11.NEED_DATA:
            self.conn.receive_data(await self.reader.read(65536))  # b"" tells h11 about EOF
        return event

    async def read_request(self) -> tuple[h11.Request, bytes] | None:
        request = await self.next_event()
        if not isinstance(request, h11.Request):
            return None  # the client closed an idle keep-alive connection
        body = bytearray()
        while isinstance(event := await self.next_event(), h11.Data):
            body += event.data
        return (request, bytes(body)) if isinstance(event, h11.EndOfMessage) else None

    async def send(self, *events: Any) -> None:
        for event in events:
            self.writer.write(self.conn.send(event))
        await self.writer.drain()

    async def send_json(self, status: int, body: bytes, *extra: _Header, cut: bool = False) -> None:
        """Send a JSON answer; `cut`: only half its body (the caller then closes)."""
        head = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        response = h11.Response(status_code=status, headers=[*head, *extra], reason=_phrase(status))
        if cut:
            await self.send(response, h11.Data(data=body[: len(body) // 2]))
        else:
            await self.send(response, h11.Data(data=body), h11.EndOfMessage())

    def abort(self) -> None:
        """Close the connection with a TCP RST (SO_LINGER 0) instead of a FIN."""
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()


class ProviderDouble:
    """An OpenAI/Perplexity/GooseAI-compatible HTTP server for tests (see the module docstring)."""

    reply: str | None  # the text of every completion; None: `expected_reply(model, last)`
    stream_chunks: int  # how many content events a stream has
    chunk_delay: float  # seconds between stream events
    response_delay: float  # seconds before answering any request

    def __init__(self, api_key: str = "test-key", *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.api_key, self.host, self.port = api_key, host, port
        self.url = ""
        self.requests: list[RecordedRequest] = []
        self.streams: list[str] = []
        self._faults: collections.deque[Fault] = collections.deque()
        self._streams_changed = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.reset()

    # -- control, from the test's thread -------------------------------------------------
    def start(self) -> ProviderDouble:
        if self._loop is not None:
            raise RuntimeError("already started")
        self._loop = loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=loop.run_forever, name="provider-double")
        self._thread.daemon = True
        self._thread.start()
        serving = asyncio.start_server(self._handle, self.host, self.port)
        try:
            server = asyncio.run_coroutine_threadsafe(serving, loop).result(timeout=10)
        except BaseException:
            self.stop()
            raise
        self._server = server
        self.port = server.sockets[0].getsockname()[1]
        self.url = f"http://{self.host}:{self.port}"
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

    def __enter__(self) -> ProviderDouble:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def script(self, *faults: Fault) -> None:
        """Enqueue faults: each of the next requests consumes one, in order."""
        self._faults.extend(faults)

    def reset(self) -> None:
        """Forget requests, streams and pending faults; restore the default behaviour."""
        self.requests.clear()
        self._faults.clear()
        with self._streams_changed:
            self.streams.clear()
        self.reply = None
        self.stream_chunks = 4
        self.chunk_delay = 0.0
        self.response_delay = 0.0

    def wait_for_streams(self, n: int, timeout: float = 5.0) -> list[str]:
        """Block until `n` streams have ended; raise TimeoutError after `timeout` seconds."""
        with self._streams_changed:
            if not self._streams_changed.wait_for(lambda: len(self.streams) >= n, timeout):
                raise TimeoutError(f"{len(self.streams)} of {n} streams ended: {self.streams}")
            return list(self.streams)

    def expected_reply(self, model: str, last_content: str) -> str:
        """The text of a completion while `reply` is None."""
        return f"Hello from {model}: {last_content}"

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
        ex = _Exchange(reader, writer)
        try:
            while (request := await ex.read_request()) is not None:
                keep_alive = await self._respond(ex, *request)
                if not keep_alive or ex.conn.states != {h11.CLIENT: h11.DONE, h11.SERVER: h11.DONE}:
                    break
                ex.conn.start_next_cycle()
        except h11.RemoteProtocolError:
            if ex.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                with contextlib.suppress(Exception):
                    await ex.send_json(400, _json(_error_body(400, "Malformed HTTP request")))
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _respond(self, ex: _Exchange, request: h11.Request, body: bytes) -> bool:
        """Answer one request; return False when the connection must be closed."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in request.headers}
        try:
            decoded = msgspec.json.decode(body) if body else None
        except msgspec.DecodeError:
            decoded = None
        method, target = request.method.decode(), request.target.decode()
        rec = RecordedRequest(method, target, headers, body, decoded)
        self.requests.append(rec)
        fault = self._faults.popleft() if self._faults else Fault("none")
        delay = self.response_delay + (fault.seconds if fault.kind == "delay" else 0.0)
        if delay > 0:
            await asyncio.sleep(delay)
        if fault.kind in ("hang", "reset", "status", "malformed_json"):
            return await self._misbehave(ex, fault)
        try:
            payload, events = self._route(rec)
        except _HTTPError as error:
            await ex.send_json(error.status, _json(error.body))
            return True
        cut = fault.after_chunks if fault.kind == "cut_stream" else None
        if events is not None:
            return await self._stream(ex, events, cut)
        await ex.send_json(200, _json(payload), cut=cut is not None)
        return cut is None

    @staticmethod
    async def _misbehave(ex: _Exchange, fault: Fault) -> bool:
        """Answer in place of the provider as `fault` says; return False to close."""
        if fault.kind == "hang":
            await asyncio.sleep(fault.seconds)
        elif fault.kind == "reset":
            ex.abort()
        elif fault.kind == "status":
            body = fault.body if fault.body is not None else _json(_error_body(fault.code))
            retry = () if fault.retry_after is None else ((b"retry-after", fault.retry_after.encode()),)
            await ex.send_json(fault.code, body, *retry)
        else:  # malformed_json
            await ex.send_json(200, b'{"id": "chatcmpl-broken", "choices": [<html>')
        return fault.kind in ("status", "malformed_json")

    async def _stream(self, ex: _Exchange, events: list[Any], cut: int | None) -> bool:
        """Send `events` as SSE, watching the socket so that a client leaving is seen at once."""
        frames = [b"data: " + _json(e) + b"\n\n" for e in events]
        frames = frames[: 1 + cut] if cut is not None else [*frames, b"data: [DONE]\n\n"]
        outcome = "client_closed"
        watch: asyncio.Future[bytes] = asyncio.ensure_future(ex.reader.read(65536))
        try:
            await ex.send(h11.Response(status_code=200, headers=_SSE_HEAD))  # h11 chunks it
            for i, frame in enumerate(frames):
                if i and self.chunk_delay > 0:
                    await asyncio.wait({watch}, timeout=self.chunk_delay)
                while watch.done():  # EOF or an error: the client went away
                    if watch.cancelled() or watch.exception() is not None or not watch.result():
                        return False
                    ex.conn.receive_data(watch.result())  # a pipelined request: keep it for later
                    watch = asyncio.ensure_future(ex.reader.read(65536))
                if ex.writer.transport.is_closing():
                    return False
                await ex.send(h11.Data(data=frame))
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
            with self._streams_changed:
                self.streams.append(outcome)
                self._streams_changed.notify_all()

    # -- the providers' API --------------------------------------------------------------
    def _route(self, rec: RecordedRequest) -> _Answer:
        """Answer a request the double does not fault, or raise `_HTTPError`."""
        if rec.headers.get("authorization") != f"Bearer {self.api_key}":
            raise _HTTPError(401)
        parts = rec.path.split("?", 1)[0].rstrip("/").split("/")
        if rec.method != "POST":
            raise _HTTPError(404, f"Invalid URL ({rec.method} {rec.path})")
        handler: Callable[[dict[str, Any], dict[str, Any], list[str]], _Answer]
        if parts[-2:] == ["chat", "completions"]:
            handler = self._chat
        elif parts[-1] == "embeddings":
            handler = self._embeddings
        elif len(parts) >= 3 and parts[-3] == "engines" and parts[-1] == "completions":
            handler = self._goose
        else:
            raise _HTTPError(404, f"Invalid URL ({rec.method} {rec.path})")
        if not isinstance(rec.json, dict):
            raise _HTTPError(400)
        model = rec.json.get("model")
        base = {"id": f"cmpl-{next(_IDS)}", "created": int(time.time()), "model": model}
        return handler(rec.json, base, parts)

    def _chat(self, body: dict[str, Any], base: dict[str, Any], parts: list[str]) -> _Answer:
        model, messages = body.get("model"), body.get("messages")
        if not isinstance(model, str) or not isinstance(messages, list) or not messages:
            raise _HTTPError(400, "'model' and a non-empty 'messages' list are required")
        last = messages[-1].get("content") if isinstance(messages[-1], dict) else None
        last = last if isinstance(last, str) else _json(last).decode()
        text = self.reply if self.reply is not None else self.expected_reply(model, last)
        base = {**base, "id": f"chat{base['id']}"}  # chatcmpl-N
        if body.get("stream") is True:
            chunk = {**base, "object": "chat.completion.chunk"}

            def event(delta: dict[str, str], finish: str | None = None) -> dict[str, Any]:
                return {**chunk, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

            pieces = (event({"content": piece}) for piece in _split(text, self.stream_chunks))
            return None, [event({"role": "assistant", "content": ""}), *pieces, event({}, "stop")]
        n_in = sum(len(str(m.get("content", "")).split()) for m in messages if isinstance(m, dict))
        n_out = len(text.split())
        usage = {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out}
        message = {"role": "assistant", "content": text}
        choice = {"index": 0, "message": message, "finish_reason": "stop"}
        return {**base, "object": "chat.completion", "choices": [choice], "usage": usage}, None

    def _embeddings(self, body: dict[str, Any], base: dict[str, Any], parts: list[str]) -> _Answer:
        texts = body.get("input")
        texts = [texts] if isinstance(texts, str) else texts
        if not texts or not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise _HTTPError(400, "'input' must be a string or a list of strings")
        vectors = [self.embedding_for(text) for text in texts]
        data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
        tokens = sum(len(t.split()) for t in texts)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return {"object": "list", "data": data, "model": base["model"], "usage": usage}, None

    def _goose(self, body: dict[str, Any], base: dict[str, Any], parts: list[str]) -> _Answer:
        model, prompt = parts[-2], body.get("prompt")
        if not isinstance(prompt, str):
            raise _HTTPError(400, "'prompt' must be a string")
        text = self.reply if self.reply is not None else self.expected_reply(model, prompt)
        base = {**base, "object": "text_completion", "model": model}

        def event(piece: str, finish: str | None = "stop") -> dict[str, Any]:
            return {**base, "choices": [{"text": piece, "index": 0, "finish_reason": finish}]}

        if body.get("stream") is True:
            *pieces, last = _split(text, self.stream_chunks)
            return None, [*(event(piece, None) for piece in pieces), event(last)]
        return event(text), None


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser("python -m tests.provider_double", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--key", default="test-key", help="the API key clients must send")
    parser.add_argument("--reply", default=None, help="a fixed completion text")
    parser.add_argument("--chunk-delay", type=float, default=0.0, help="seconds between events")
    args = parser.parse_args(argv)
    stopping = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopping.set())
    with ProviderDouble(args.key, host=args.host, port=args.port) as double:
        double.reply, double.chunk_delay = args.reply, args.chunk_delay
        print(f"provider double listening on {double.url}", flush=True)
        while not stopping.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
