"""A real HTTP test double of the LLM providers (OpenAI, PerplexityAI, GooseAI).

`ProviderDouble` serves HTTP/1.1 (keep-alive, chunked server-sent events) on a loopback
port from its own asyncio loop in a daemon thread, so sync tests, async tests and a
service started as a subprocess all reach it over real sockets::

    with ProviderDouble(api_key="sk-test") as double:
        env = {"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": f"{double.url}/v1"}
        double.script(Fault.status(429, retry_after="1"), Fault.reset())
        ...  # exercise the service; the next two requests fail, the third succeeds
        assert double.requests[-1].json["model"] == "gpt-4"

Routes match on the path suffix, so any base prefix works (`{url}/v1` for OpenAI and
GooseAI, `{url}` for Perplexity): `.../chat/completions`, `.../embeddings` and
`.../engines/{model}/completions`; anything else is a 404. Requests without
`Authorization: Bearer <api_key>` get a 401, bodies that are not JSON a 400, all with
OpenAI's error shape. Every request is recorded in `requests` before it is answered.
Scripted faults apply to the next requests, one each, in order. Each streaming request
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
from dataclasses import dataclass, field
from typing import Any

import h11
import msgspec

__all__ = ("Fault", "ProviderDouble", "RecordedRequest")

_JSON = (b"content-type", b"application/json")
_IDS = itertools.count(1)


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
        """Answer with `code` (OpenAI's error body unless `body`); `retry_after` is sent verbatim."""
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
        with no terminating chunk and no [DONE]. On a non-streaming request: send the
        headers and half the body, then close."""
        return Fault("cut_stream", after_chunks=after_chunks)


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    json: Any  # the decoded body, or None if empty or not JSON


class _HTTPError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", code: str | None = None):
        super().__init__(message)
        self.status, self.body = status, _error_body(message, type_, code)


def _error_body(message: str, type_: str, code: Any) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


def _default_error(code: int) -> dict[str, Any]:
    known = {
        400: ("Bad request", "invalid_request_error", None),
        401: ("Incorrect API key provided", "invalid_request_error", "invalid_api_key"),
        404: ("The model does not exist", "invalid_request_error", "model_not_found"),
        429: ("Rate limit reached for requests", "requests", "rate_limit_exceeded"),
        500: ("The server had an error while processing your request.", "server_error", None),
        503: ("The engine is currently overloaded, please try again later.", "server_error", None),
    }
    phrase = http.HTTPStatus(code).phrase if code in http.HTTPStatus._value2member_map_ else "Error"
    fallback = (phrase, "server_error" if code >= 500 else "invalid_request_error", None)
    return _error_body(*known.get(code, fallback))


def _split(text: str, n: int) -> list[str]:
    """`n` consecutive pieces of `text` (some may be empty) whose concatenation is `text`."""
    size, extra = divmod(len(text), max(1, n))
    pieces, pos = [], 0
    for i in range(max(1, n)):
        step = size + (1 if i < extra else 0)
        pieces.append(text[pos : pos + step])
        pos += step
    return pieces


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close the connection with a TCP RST (SO_LINGER 0) instead of a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class ProviderDouble:
    """An OpenAI/Perplexity/GooseAI-compatible HTTP server for tests (see the module docstring)."""

    def __init__(self, api_key: str = "test-key", *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.api_key, self.host, self.port = api_key, host, port
        self.url = ""
        self.requests: list[RecordedRequest] = []
        self.streams: list[str] = []
        self.reply: str | None = None
        self.stream_chunks = 4
        self.chunk_delay = 0.0
        self.response_delay = 0.0
        self._faults: collections.deque[Fault] = collections.deque()
        self._streams_changed = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- control, from the test's thread ---------------------------------------------------
    def start(self) -> ProviderDouble:
        if self._loop is not None:
            raise RuntimeError("already started")
        self._loop = loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=loop.run_forever, name="provider-double", daemon=True)
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, self.host, self.port), loop
        ).result(timeout=10)
        self.port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://{self.host}:{self.port}"
        return self

    def stop(self) -> None:
        loop, self._loop = self._loop, None
        if loop is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        assert self._thread is not None
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
        self.reply, self.stream_chunks, self.chunk_delay, self.response_delay = None, 4, 0.0, 0.0

    def wait_for_streams(self, n: int, timeout: float = 5.0) -> list[str]:
        """Block until `n` streams have ended; raise TimeoutError after `timeout` seconds."""
        with self._streams_changed:
            if not self._streams_changed.wait_for(lambda: len(self.streams) >= n, timeout):
                raise TimeoutError(f"{len(self.streams)} of {n} streams ended: {self.streams}")
            return list(self.streams)

    def expected_reply(self, model: str, last_content: str) -> str:
        """The text of a completion when `reply` is None."""
        return f"Hello from {model}: {last_content}"

    def embedding_for(self, text: str) -> list[float]:
        """A deterministic 8-float vector in [-1, 1] derived from a hash of `text`."""
        words = struct.unpack(">8H", hashlib.sha256(text.encode()).digest()[:16])
        return [round(w / 65535 * 2 - 1, 6) for w in words]

    # -- the server, on the loop thread ----------------------------------------------------
    async def _shutdown(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        conn = h11.Connection(h11.SERVER)
        try:
            while (request := await self._read_request(conn, reader)) is not None:
                keep_alive = await self._respond(conn, reader, writer, *request)
                if not keep_alive or conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    break
                conn.start_next_cycle()
        except h11.RemoteProtocolError:
            if conn.our_state is h11.SEND_RESPONSE:
                with contextlib.suppress(Exception):
                    await self._send_json(conn, writer, 400, _default_error(400))
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    @staticmethod
    async def _next_event(conn: h11.Connection, reader: asyncio.StreamReader) -> Any:
        while (event := conn.next_event()) is h11.NEED_DATA:
            conn.receive_data(await reader.read(65536))  # b"" tells h11 about EOF
        return event

    async def _read_request(
        self, conn: h11.Connection, reader: asyncio.StreamReader
    ) -> tuple[h11.Request, bytes] | None:
        request = await self._next_event(conn, reader)
        if not isinstance(request, h11.Request):
            return None  # the client closed an idle keep-alive connection
        body = bytearray()
        while isinstance(event := await self._next_event(conn, reader), h11.Data):
            body += event.data
        return (request, bytes(body)) if isinstance(event, h11.EndOfMessage) else None

    @staticmethod
    async def _send(conn: h11.Connection, writer: asyncio.StreamWriter, *events: Any) -> None:
        for event in events:
            writer.write(conn.send(event))
        await writer.drain()

    async def _send_json(
        self, conn: h11.Connection, writer: asyncio.StreamWriter, status: int, payload: Any,
        headers: list[tuple[bytes, bytes]] | None = None, *, raw: bytes | None = None,
    ) -> None:
        body = raw if raw is not None else msgspec.json.encode(payload)
        head = [_JSON, (b"content-length", str(len(body)).encode()), *(headers or [])]
        reason = http.HTTPStatus(status).phrase.encode() if status in http.HTTPStatus._value2member_map_ else b""
        await self._send(conn, writer, h11.Response(status_code=status, headers=head, reason=reason),
                         h11.Data(data=body), h11.EndOfMessage())

    async def _respond(
        self, conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
        request: h11.Request, body: bytes,
    ) -> bool:
        """Answer one request; return False when the connection must be closed."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in request.headers}
        try:
            decoded = msgspec.json.decode(body) if body else None
        except msgspec.DecodeError:
            decoded = None
        record = RecordedRequest(request.method.decode(), request.target.decode(), headers, body, decoded)
        self.requests.append(record)
        fault = self._faults.popleft() if self._faults else None

        delay = self.response_delay + (fault.seconds if fault and fault.kind == "delay" else 0.0)
        if delay > 0:
            await asyncio.sleep(delay)
        if fault is not None and fault.kind == "hang":
            await asyncio.sleep(fault.seconds)
            return False
        if fault is not None and fault.kind == "reset":
            _abort(writer)
            return False
        if fault is not None and fault.kind == "status":
            extra = [(b"retry-after", fault.retry_after.encode())] if fault.retry_after is not None else []
            await self._send_json(conn, writer, fault.code, _default_error(fault.code), extra, raw=fault.body)
            return True
        if fault is not None and fault.kind == "malformed_json":
            await self._send_json(conn, writer, 200, None, raw=b'{"id": "chatcmpl-broken", "choices": [<html>')
            return True

        try:
            payload, events = self._route(record)
        except _HTTPError as error:
            await self._send_json(conn, writer, error.status, error.body)
            return True
        cut = fault.after_chunks if fault is not None and fault.kind == "cut_stream" else None
        if events is not None:
            return await self._stream(conn, reader, writer, events, cut)
        if cut is None:
            await self._send_json(conn, writer, 200, payload)
            return True
        data = msgspec.json.encode(payload)  # a cut non-streaming answer: half the body
        head = [_JSON, (b"content-length", str(len(data)).encode())]
        await self._send(conn, writer, h11.Response(status_code=200, headers=head), h11.Data(data[: len(data) // 2]))
        return False

    async def _stream(
        self, conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
        events: list[Any], cut: int | None,
    ) -> bool:
        """Send `events` as SSE; watch the socket so a departing client is noticed at once."""
        frames = [b"data: " + msgspec.json.encode(e) + b"\n\n" for e in events] + [b"data: [DONE]\n\n"]
        if cut is not None:
            frames = frames[: 1 + cut]  # the role event, then `cut` content events
        outcome = "client_closed"
        head = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"),
                (b"transfer-encoding", b"chunked")]
        watch: asyncio.Future[bytes] = asyncio.ensure_future(reader.read(65536))
        try:
            await self._send(conn, writer, h11.Response(status_code=200, headers=head))
            for i, frame in enumerate(frames):
                if i and self.chunk_delay > 0:
                    await asyncio.wait({watch}, timeout=self.chunk_delay)
                while watch.done():  # EOF or an error means the client went away
                    if watch.cancelled() or watch.exception() is not None or not watch.result():
                        return False
                    conn.receive_data(watch.result())  # a pipelined request: keep it for later
                    watch = asyncio.ensure_future(reader.read(65536))
                if writer.transport.is_closing():
                    return False
                await self._send(conn, writer, h11.Data(data=frame))
            if cut is not None:
                outcome = "cut"
                return False
            await self._send(conn, writer, h11.EndOfMessage())
            outcome = "completed"
            return True
        except ConnectionError:
            return False
        finally:
            watch.cancel()
            with self._streams_changed:
                self.streams.append(outcome)
                self._streams_changed.notify_all()

    # -- the provider API ------------------------------------------------------------------
    def _route(self, rec: RecordedRequest) -> tuple[Any, list[Any] | None]:
        """Return (JSON answer, None) or (None, stream events), or raise `_HTTPError`."""
        if rec.headers.get("authorization") != f"Bearer {self.api_key}":
            raise _HTTPError(401, "Incorrect API key provided", code="invalid_api_key")
        path = rec.path.split("?", 1)[0].rstrip("/")
        parts = path.split("/")
        if rec.method == "POST" and path.endswith("/chat/completions"):
            route = "chat"
        elif rec.method == "POST" and path.endswith("/embeddings"):
            route = "embeddings"
        elif rec.method == "POST" and len(parts) >= 3 and parts[-3] == "engines" and parts[-1] == "completions":
            route = "goose"
        else:
            raise _HTTPError(404, f"Invalid URL ({rec.method} {rec.path})")
        if not isinstance(rec.json, dict):
            raise _HTTPError(400, "We could not parse the JSON body of your request.")
        body: dict[str, Any] = rec.json
        created = int(time.time())

        if route == "embeddings":
            inputs = body.get("input")
            texts = [inputs] if isinstance(inputs, str) else inputs
            if not texts or not all(isinstance(t, str) for t in texts):
                raise _HTTPError(400, "'input' must be a string or a list of strings", code="invalid_value")
            data = [{"object": "embedding", "index": i, "embedding": self.embedding_for(t)} for i, t in enumerate(texts)]
            tokens = sum(len(t.split()) for t in texts)
            return {"object": "list", "data": data, "model": body.get("model"),
                    "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}, None

        if route == "goose":
            model, prompt = parts[-2], body.get("prompt")
            if not isinstance(prompt, str):
                raise _HTTPError(400, "'prompt' is a required string")
            text = self.reply if self.reply is not None else self.expected_reply(model, prompt)
            base = {"id": f"cmpl-{next(_IDS)}", "object": "text_completion", "created": created, "model": model}
            if body.get("stream") is True:
                pieces = _split(text, self.stream_chunks)
                return None, [{**base, "choices": [{"text": piece, "index": 0, "finish_reason":
                              "stop" if i == len(pieces) - 1 else None}]} for i, piece in enumerate(pieces)]
            return {**base, "choices": [{"text": text, "index": 0, "finish_reason": "stop"}]}, None

        model, messages = body.get("model"), body.get("messages")
        if not isinstance(model, str) or not isinstance(messages, list) or not messages:
            raise _HTTPError(400, "'model' and a non-empty 'messages' list are required")
        last = messages[-1].get("content") if isinstance(messages[-1], dict) else None
        last = last if isinstance(last, str) else msgspec.json.encode(last).decode()
        text = self.reply if self.reply is not None else self.expected_reply(model, last)
        base = {"id": f"chatcmpl-{next(_IDS)}", "created": created, "model": model}
        if body.get("stream") is True:
            chunk = {**base, "object": "chat.completion.chunk"}

            def event(delta: dict[str, str], finish: str | None = None) -> dict[str, Any]:
                return {**chunk, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

            return None, [event({"role": "assistant", "content": ""}),
                          *(event({"content": p}) for p in _split(text, self.stream_chunks)), event({}, "stop")]
        prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in messages if isinstance(m, dict))
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(text.split()),
                 "total_tokens": prompt_tokens + len(text.split())}
        return {**base, "object": "chat.completion", "usage": usage, "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}, None


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.provider_double", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--key", default="test-key", help="the API key clients must send as a Bearer token")
    parser.add_argument("--reply", default=None, help="a fixed completion text")
    parser.add_argument("--chunk-delay", type=float, default=0.0, help="seconds between stream events")
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
