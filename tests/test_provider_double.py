"""The provider double itself (`css_core.testing`): shapes, key checks, recording, routes,
streams and their framing, TLS, every Fault, and the command that runs it on its own."""

from __future__ import annotations

import json
import os
import re
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import h11
import httpx
import pytest

from css_core.testing import (
    Event,
    Fault,
    Framing,
    ProviderDouble,
    RecordedRequest,
    Reject,
    Route,
    Stream,
    gemini_key_invalid,
)

ROOT = Path(__file__).resolve().parents[1]
KEY = "sk-double"
AUTH = {"Authorization": f"Bearer {KEY}"}
CHAT = {"model": "gpt-4", "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]}
ANTHROPIC_HEADERS = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
CLAUDE = {"model": "claude-x", "max_tokens": 64,
          "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}
GEMINI = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}


@pytest.fixture(scope="module")
def server() -> Iterator[ProviderDouble]:
    with ProviderDouble(KEY) as double:
        yield double


@pytest.fixture
def double(server: ProviderDouble) -> Iterator[ProviderDouble]:
    server.reset()
    yield server
    server.reset()


@pytest.fixture
def client(double: ProviderDouble) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=double.url, headers=AUTH, timeout=5, trust_env=False) as c:
        yield c


def sse_payloads(lines: Iterator[str]) -> list[str]:
    return [line[len("data: ") :] for line in lines if line.startswith("data: ")]


def parse_sse(raw: bytes) -> list[dict[str, Any]]:
    """The events of an SSE body as the specification reads them: `{"event", "id", "data"}`.

    Lines end with CRLF, LF or CR; `:` starts a comment; `data` lines join with "\\n"; a
    blank line dispatches the event, unless it has no data.
    """
    events: list[dict[str, Any]] = []
    name: str | None = None
    ident: str | None = None
    data: list[str] = []
    for line in re.split(r"\r\n|\r|\n", raw.decode()):
        if not line:
            if data:
                events.append({"event": name, "id": ident, "data": "\n".join(data)})
            name, ident, data = None, None, []
        elif not line.startswith(":"):
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "data":
                data.append(value)
            elif field == "event":
                name = value
            elif field == "id":
                ident = value
    return events


def raw_chunks(url: str, path: str, body: Any, headers: Mapping[str, str]) -> list[bytes]:
    """POST `body` and return the response body as the HTTP chunks the server sent: one per
    write of the server, whatever TCP does to them (h11 marks where each chunk starts and ends)."""
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    conn = h11.Connection(h11.CLIENT)
    content = json.dumps(body).encode()
    head = [("host", parts.netloc), ("content-type", "application/json"), ("content-length", str(len(content))),
            *headers.items()]
    chunks: list[bytes] = []
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        for event in (h11.Request(method="POST", target=path, headers=head), h11.Data(data=content),
                      h11.EndOfMessage()):
            sock.sendall(conn.send(event) or b"")
        while not isinstance(event := conn.next_event(), h11.EndOfMessage):
            if event is h11.NEED_DATA:
                conn.receive_data(sock.recv(65536))
            elif isinstance(event, h11.Data):
                if event.chunk_start or not chunks:
                    chunks.append(b"")
                chunks[-1] += event.data
            elif isinstance(event, h11.Response):
                assert event.status_code == 200, event
    return chunks


# -- OpenAI's API, the default -----------------------------------------------------------------


def test_key_check_and_recording(double: ProviderDouble, client: httpx.Client) -> None:
    bad = client.post("/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401
    assert bad.json()["error"]["code"] == "invalid_api_key"
    missing = httpx.post(f"{double.url}/v1/chat/completions", json=CHAT, trust_env=False)
    assert missing.status_code == 401
    assert client.post("/v1/nothing/here", json={}).status_code == 404
    invalid = client.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert invalid.status_code == 400 and "error" in invalid.json()

    paths = ["/v1/chat/completions", "/v1/chat/completions", "/v1/nothing/here", "/v1/chat/completions"]
    assert [(r.method, r.path) for r in double.requests] == [("POST", path) for path in paths]
    first = double.requests[0]
    assert first.headers["authorization"] == "Bearer nope" and first.json == CHAT
    assert double.requests[-1].body == b"{not json" and double.requests[-1].json is None


def test_recorded_query_params_and_connection(double: ProviderDouble, client: httpx.Client) -> None:
    client.post("/v1/engines/gpt-j-6b/completions?x=1&y=two", json={"prompt": "p"})
    (request,) = double.requests
    assert request.path == request.url_path == "/v1/engines/gpt-j-6b/completions"  # the path alone
    assert request.target == "/v1/engines/gpt-j-6b/completions?x=1&y=two"  # the target as sent
    assert request.query == {"x": "1", "y": "two"}
    assert request.params == {"model": "gpt-j-6b"}
    assert request.connection == double.connections >= 1


def test_recorded_path_is_what_a_route_path_matches(double: ProviderDouble, client: httpx.Client) -> None:
    """One rule for both: a `Route.path` and a `RecordedRequest.path` are the path without the
    query; the query is `Route.query` / `RecordedRequest.query`, the whole target `.target`."""
    double.add_route(Route("GET", r"/items/(?P<id>\d+)", lambda rec: {"path": rec.path, "id": rec.params["id"]}),
                     Route("GET", r"/only-with-x", {}, query={"x": "1"}))
    assert client.get("/v1/items/7?x=1&x=2&e=").json() == {"path": "/v1/items/7", "id": "7"}
    assert client.get("/only-with-x?x=1").status_code == 200
    assert client.get("/only-with-x?x=2").status_code == 404
    assert client.get("/only-with-x").status_code == 404
    first, *_ = double.requests
    assert (first.path, first.target, first.query) == ("/v1/items/7", "/v1/items/7?x=1&x=2&e=", {"x": "2", "e": ""})
    assert [r.path for r in double.requests] == ["/v1/items/7", "/only-with-x", "/only-with-x", "/only-with-x"]
    by_hand = RecordedRequest("GET", "/v1/items/8?x=1", {}, b"", None)  # to call an answer function directly
    assert (by_hand.path, by_hand.target, by_hand.query) == ("/v1/items/8", "/v1/items/8?x=1", {"x": "1"})


def test_chat_completion_shape_any_prefix(double: ProviderDouble, client: httpx.Client) -> None:
    for prefix in ("/v1", ""):  # OpenAI's base and Perplexity's
        body = client.post(f"{prefix}/chat/completions", json=CHAT).json()
        assert body["object"] == "chat.completion" and body["model"] == "gpt-4"
        choice = body["choices"][0]
        assert choice["message"] == {"role": "assistant", "content": double.expected_reply("gpt-4", "hi")}
        assert choice["finish_reason"] == "stop" and "total_tokens" in body["usage"]
    double.reply = "fixed"
    assert client.post("/chat/completions", json=CHAT).json()["choices"][0]["message"]["content"] == "fixed"


def test_embeddings_and_goose_shapes(double: ProviderDouble, client: httpx.Client) -> None:
    emb = client.post("/v1/embeddings", json={"model": "text-embedding-3-small", "input": "hello"}).json()
    assert emb["object"] == "list" and emb["model"] == "text-embedding-3-small"
    vector = emb["data"][0]["embedding"]
    assert vector == double.embedding_for("hello") and len(vector) == 8
    assert vector != double.embedding_for("hello!")

    goose = client.post("/v1/engines/gpt-j-6b/completions", json={"prompt": "once upon"}).json()
    assert goose["object"] == "text_completion" and goose["model"] == "gpt-j-6b"
    assert goose["choices"][0]["text"] == double.expected_reply("gpt-j-6b", "once upon")


def test_streams_reassemble(double: ProviderDouble, client: httpx.Client) -> None:
    double.stream_chunks = 3
    with client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        payloads = sse_payloads(resp.iter_lines())
    assert payloads[-1] == "[DONE]"
    events = [json.loads(p) for p in payloads[:-1]]
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert events[-1]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "stop"}
    assert len(events) == 3 + 2
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events)
    assert text == double.expected_reply("gpt-4", "hi")

    with client.stream("POST", "/v1/engines/gpt-j-6b/completions", json={"prompt": "p", "stream": True}) as resp:
        payloads = sse_payloads(resp.iter_lines())
    assert payloads[-1] == "[DONE]" and len(payloads) == 4
    assert "".join(json.loads(p)["choices"][0]["text"] for p in payloads[:-1]) == double.expected_reply("gpt-j-6b", "p")
    assert double.wait_for_streams(2) == ["completed", "completed"]


def test_keep_alive(double: ProviderDouble, client: httpx.Client) -> None:
    def peer(response: httpx.Response) -> object:
        return response.extensions["network_stream"].get_extra_info("client_addr")

    first = client.post("/v1/chat/completions", json=CHAT)
    with client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as streamed:
        streamed.read()
    last = client.post("/v1/embeddings", json={"model": "e", "input": "x"})
    assert peer(first) == peer(streamed) == peer(last)  # one connection for all three
    assert double.connections == 1 and {r.connection for r in double.requests} == {1}


# -- faults ---------------------------------------------------------------------------------------


def test_status_and_delay_faults(double: ProviderDouble, client: httpx.Client) -> None:
    double.script(Fault.status(429, retry_after="2"), Fault.status(503, body=b"upstream down"), Fault.delay(0.2))
    limited = client.post("/v1/chat/completions", json=CHAT)
    assert limited.status_code == 429 and limited.headers["retry-after"] == "2"
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"
    down = client.post("/v1/chat/completions", json=CHAT)
    assert down.status_code == 503 and down.content == b"upstream down"
    started = time.monotonic()
    assert client.post("/v1/chat/completions", json=CHAT).status_code == 200
    assert time.monotonic() - started >= 0.2
    assert client.post("/v1/chat/completions", json=CHAT).status_code == 200  # the script is used up
    assert len(double.requests) == 4


def test_hang_malformed_and_reset(double: ProviderDouble, client: httpx.Client) -> None:
    double.script(Fault.hang(1.0), Fault.malformed_json(), Fault.reset())
    with pytest.raises(httpx.ReadTimeout):
        client.post("/v1/chat/completions", json=CHAT, timeout=0.2)
    broken = client.post("/v1/chat/completions", json=CHAT)
    assert broken.status_code == 200 and broken.headers["content-type"] == "application/json"
    with pytest.raises(json.JSONDecodeError):
        broken.json()
    with pytest.raises(httpx.TransportError):
        client.post("/v1/chat/completions", json=CHAT)
    assert client.post("/v1/chat/completions", json=CHAT).status_code == 200  # a new connection works
    assert len(double.requests) == 4


def test_cut_stream(double: ProviderDouble, client: httpx.Client) -> None:
    double.script(Fault.cut_stream(2))
    received: list[str] = []
    stream = client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True})
    with pytest.raises(httpx.RemoteProtocolError), stream as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            received.append(line)
    payloads = sse_payloads(iter(received))
    assert len(payloads) == 3 and "[DONE]" not in payloads  # the role event and two content events
    assert double.wait_for_streams(1) == ["cut"]


def test_client_closed_is_detected_quickly(double: ProviderDouble, client: httpx.Client) -> None:
    double.chunk_delay, double.stream_chunks = 0.05, 1200  # a minute if read to the end
    with client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as resp:
        events = 0
        for line in resp.iter_lines():
            events += line.startswith("data: ")
            if events == 3:
                break  # leave mid-stream: the context manager closes the connection
    # seen when the client leaves, long before the stream's end (the timeout is generous for a loaded machine)
    assert double.wait_for_streams(1, timeout=15) == ["client_closed"]


# -- routes of any API ------------------------------------------------------------------------------


def test_custom_routes_answer_canned_json_functions_and_streams(double: ProviderDouble, client: httpx.Client) -> None:
    def echo(request: RecordedRequest) -> Any:
        if request.json.get("fail"):
            raise Reject(418, "no coffee")
        return {"model": request.params["model"], "got": request.json, "query": request.query}

    double.add_route(
        Route("GET", r"/v2/models", {"data": ["a", "b"]}),
        Route("POST", r"/v2/models/(?P<model>[^/:]+):run", echo),
        Route("POST", r"/v2/stream", Stream([{"n": 1}, Event({"n": 2}, event="tick", id="7")]), query={"alt": "sse"}),
        Route("POST", r"/v2/created", {"ok": True}, status=201),
    )
    assert client.get("/v2/models").json() == {"data": ["a", "b"]}
    ran = client.post("/prefix/v2/models/m-1.5:run?k=v", json={"x": 1})
    assert ran.json() == {"model": "m-1.5", "got": {"x": 1}, "query": {"k": "v"}}
    refused = client.post("/v2/models/m:run", json={"fail": True})
    assert refused.status_code == 418 and refused.json()["error"]["message"] == "no coffee"
    streamed = client.post("/v2/stream?alt=sse", json={})
    assert streamed.headers["content-type"] == "text/event-stream"
    assert parse_sse(streamed.content) == [{"event": None, "id": None, "data": '{"n":1}'},
                                           {"event": "tick", "id": "7", "data": '{"n":2}'}]
    assert client.post("/v2/stream", json={}).status_code == 404  # the query must hold alt=sse
    assert client.get("/v2/models/m:run").status_code == 404  # the method must match
    assert client.post("/v2/created", json={}).status_code == 201
    assert double.requests[1].params == {"model": "m-1.5"}

    double.reset()  # routes added by a test are gone
    assert client.get("/v2/models").status_code == 404


def test_an_added_route_replaces_a_built_in_one(double: ProviderDouble, client: httpx.Client) -> None:
    double.add_route(Route("POST", r"/chat/completions", {"mine": True}))
    assert client.post("/v1/chat/completions", json=CHAT).json() == {"mine": True}
    assert client.post("/v1/embeddings", json={"model": "e", "input": "x"}).status_code == 200  # the others stay
    double.routes = [Route("POST", r"/only", {})]  # or replace them all
    assert client.post("/v1/embeddings", json={"model": "e", "input": "x"}).status_code == 404


def test_faults_apply_to_custom_routes(double: ProviderDouble, client: httpx.Client) -> None:
    double.add_route(Route("POST", r"/v2/stream", Stream([{"n": i} for i in range(5)])),
                     Route("POST", r"/v2/json", {"ok": True}))
    status, body = gemini_key_invalid()
    double.script(Fault.status(status, body=body), Fault.cut_stream(1), Fault.reset(), Fault.cut_stream(0))
    refused = client.post("/v2/json", json={})
    assert refused.status_code == 400 and refused.json()["error"]["details"][0]["reason"] == "API_KEY_INVALID"
    received: list[bytes] = []
    with pytest.raises(httpx.RemoteProtocolError), client.stream("POST", "/v2/stream", json={}) as resp:
        received.extend(resp.iter_raw())
    assert [e["data"] for e in parse_sse(b"".join(received))] == ['{"n":0}', '{"n":1}']
    with pytest.raises(httpx.TransportError):
        client.post("/v2/json", json={})
    with pytest.raises(httpx.RemoteProtocolError):
        client.post("/v2/json", json={})  # half a JSON body, then the connection closes
    assert double.wait_for_streams(1) == ["cut"]


@pytest.mark.parametrize(
    ("auth_header", "auth_scheme", "sent"),
    [("authorization", "Bearer", {"Authorization": f"Bearer {KEY}"}),
     ("x-api-key", None, {"X-Api-Key": KEY}),
     ("x-goog-api-key", None, {"x-goog-api-key": KEY}),
     ("authorization", "Token", {"authorization": f"Token {KEY}"})],
    ids=["bearer", "anthropic", "gemini", "other-scheme"],
)
def test_auth_header_and_scheme(auth_header: str, auth_scheme: str | None, sent: dict[str, str]) -> None:
    route = Route("POST", r"/x", {"ok": True})
    with ProviderDouble(KEY, routes=[route], auth_header=auth_header, auth_scheme=auth_scheme) as double, \
            httpx.Client(base_url=double.url, trust_env=False) as client:
        assert client.post("/x", json={}, headers=sent).json() == {"ok": True}
        wrong = {name: value.replace(KEY, "sk-wrong") for name, value in sent.items()}
        assert client.post("/x", json={}, headers=wrong).status_code == 401
        assert client.post("/x", json={}).status_code == 401
        if auth_scheme is None:  # the bare key: a scheme in front of it is wrong
            assert client.post("/x", json={}, headers={auth_header: f"Bearer {KEY}"}).status_code == 401


def test_no_key_and_a_route_that_says_how_to_refuse_one() -> None:
    with ProviderDouble(None, routes=[Route("POST", r"/open", {})]) as double:
        assert httpx.post(f"{double.url}/open", json={}, trust_env=False).status_code == 200
    refusal = (403, {"detail": "go away"})
    with ProviderDouble(KEY, routes=[Route("POST", r"/x", {}, unauthorized=refusal)]) as double:
        answer = httpx.post(f"{double.url}/x", json={}, trust_env=False)
        assert (answer.status_code, answer.json()) == refusal


def test_required_headers() -> None:
    with ProviderDouble(KEY, required_headers={"Anthropic-Version": "2023-06-01"}) as double, \
            httpx.Client(base_url=f"{double.url}/v1", headers=AUTH, trust_env=False) as client:
        assert client.post("/chat/completions", json=CHAT).status_code == 400
        wrong = client.post("/chat/completions", json=CHAT, headers={"anthropic-version": "2020-01-01"})
        assert wrong.status_code == 400 and "anthropic-version" in wrong.json()["error"]["message"]
        ok = client.post("/chat/completions", json=CHAT, headers={"anthropic-version": "2023-06-01"})
        assert ok.status_code == 200


# -- Anthropic and Gemini -------------------------------------------------------------------------


def test_anthropic_messages() -> None:
    with ProviderDouble.anthropic(KEY) as double, \
            httpx.Client(base_url=double.url, headers=ANTHROPIC_HEADERS, trust_env=False) as client:
        message = client.post("/v1/messages", json=CLAUDE).json()
        assert message["type"] == "message" and message["role"] == "assistant" and message["model"] == "claude-x"
        assert message["content"] == [{"type": "text", "text": double.expected_reply("claude-x", "hi")}]
        assert message["stop_reason"] == "end_turn" and set(message["usage"]) == {"input_tokens", "output_tokens"}

        double.stream_chunks = 3
        streamed = client.post("/v1/messages", json={**CLAUDE, "stream": True})
        events = parse_sse(streamed.content)
        names = [e["event"] for e in events]
        assert names == ["message_start", "content_block_start", "ping", *["content_block_delta"] * 3,
                         "content_block_stop", "message_delta", "message_stop"]
        assert all(json.loads(e["data"])["type"] == e["event"] for e in events)
        deltas = [json.loads(e["data"])["delta"] for e in events if e["event"] == "content_block_delta"]
        assert all(d["type"] == "text_delta" for d in deltas)
        assert "".join(d["text"] for d in deltas) == double.expected_reply("claude-x", "hi")
        assert b"[DONE]" not in streamed.content  # the stream ends by closing

        no_tokens = client.post("/v1/messages", json={k: v for k, v in CLAUDE.items() if k != "max_tokens"})
        assert no_tokens.status_code == 400 and no_tokens.json()["error"]["type"] == "invalid_request_error"
        bad_key = client.post("/v1/messages", json=CLAUDE, headers={"x-api-key": "nope"})
        assert bad_key.status_code == 401
        refusal = {"type": "authentication_error", "message": "invalid x-api-key"}
        assert bad_key.json() == {"type": "error", "error": refusal}
        bearer = client.post("/v1/messages", json=CLAUDE, headers={"x-api-key": "", "authorization": f"Bearer {KEY}"})
        assert bearer.status_code == 401
        unversioned = httpx.post(f"{double.url}/v1/messages", json=CLAUDE, headers={"x-api-key": KEY}, trust_env=False)
        assert unversioned.status_code == 400 and "anthropic-version" in unversioned.json()["error"]["message"]
        double.script(Fault.status(529))
        overloaded = client.post("/v1/messages", json=CLAUDE)
        assert overloaded.status_code == 529 and overloaded.json()["error"]["type"] == "overloaded_error"


def test_gemini_generate_stream_and_embed() -> None:
    path = "/v1beta/models/gemini-2.0-flash"
    with ProviderDouble.gemini(KEY) as double, \
            httpx.Client(base_url=double.url, headers={"x-goog-api-key": KEY}, trust_env=False) as client:
        answer = client.post(f"{path}:generateContent", json=GEMINI).json()
        (candidate,) = answer["candidates"]
        assert candidate["content"] == {"parts": [{"text": double.expected_reply("gemini-2.0-flash", "hi")}],
                                        "role": "model"}
        assert candidate["finishReason"] == "STOP" and "totalTokenCount" in answer["usageMetadata"]

        double.stream_chunks = 3
        streamed = client.post(f"{path}:streamGenerateContent?alt=sse", json=GEMINI)
        assert streamed.headers["content-type"] == "text/event-stream"
        assert b"\r\n\r\n" in streamed.content and b"[DONE]" not in streamed.content  # Gemini's CRLF, no [DONE]
        chunks = [json.loads(e["data"]) for e in parse_sse(streamed.content)]
        assert len(chunks) == 3 and chunks[-1]["candidates"][0]["finishReason"] == "STOP"
        texts = [c["candidates"][0]["content"]["parts"][0]["text"] for c in chunks]
        assert "".join(texts) == double.expected_reply("gemini-2.0-flash", "hi")
        array = client.post(f"{path}:streamGenerateContent", json=GEMINI).json()  # without alt=sse: one JSON array
        assert [c["candidates"][0]["content"]["parts"][0]["text"] for c in array] == texts

        embed = {"content": {"parts": [{"text": "x"}]}}
        embedded = client.post("/v1beta/models/text-embedding-004:embedContent", json=embed)
        assert embedded.json() == {"embedding": {"values": double.embedding_for("x")}}

        bad_key = client.post(f"{path}:generateContent", json=GEMINI, headers={"x-goog-api-key": "nope"})
        assert bad_key.status_code == 400
        error = bad_key.json()["error"]
        assert (error["code"], error["status"]) == (400, "INVALID_ARGUMENT")
        assert error["details"][0]["reason"] == "API_KEY_INVALID"
        empty = client.post(f"{path}:generateContent", json={"contents": []})
        assert empty.json()["error"]["status"] == "INVALID_ARGUMENT"
        double.script(Fault.status(429))
        assert client.post(f"{path}:generateContent", json=GEMINI).json()["error"]["status"] == "RESOURCE_EXHAUSTED"
        assert [r.params for r in double.requests[:3]] == [{"model": "gemini-2.0-flash"}] * 3
        assert double.requests[1].query == {"alt": "sse"}


# -- stream framing ----------------------------------------------------------------------------


FRAMINGS = {
    "plain": Framing(),
    "event-and-id": Framing(event="message", ids=True),
    "comments": Framing(comments=True),
    "multiline-data": Framing(multiline=True),
    "crlf": Framing(crlf=True),
    "compact": Framing(compact=True),
    "everything": Framing(event="completion", ids=True, comments=True, multiline=True, crlf=True),
}


@pytest.mark.parametrize("framing", FRAMINGS.values(), ids=FRAMINGS.keys())
def test_framings_keep_the_events(double: ProviderDouble, client: httpx.Client, framing: Framing) -> None:
    double.reply, double.stream_chunks = 'Ünï "quoted", {braced}: and\nsplit', 5
    plain = parse_sse(client.post("/v1/chat/completions", json={**CHAT, "stream": True}).content)
    double.framing = framing
    raw = client.post("/v1/chat/completions", json={**CHAT, "stream": True}).content
    framed = parse_sse(raw)
    assert [e["data"] for e in framed] != [] and len(framed) == len(plain) == 5 + 3

    def same(a: str, b: str) -> bool:  # the same JSON value (a multi-line payload has a "\n" in it) but its id
        if "[DONE]" in (a, b):
            return a == b
        unique = ("id", "created")
        return {k: v for k, v in json.loads(a).items() if k not in unique} == {
            k: v for k, v in json.loads(b).items() if k not in unique}

    assert all(same(f["data"], p["data"]) for f, p in zip(framed, plain, strict=True))
    ids = [e["id"] for e in framed]
    assert ids == ([str(i) for i in range(1, len(framed) + 1)] if framing.ids else [None] * len(framed))
    assert {e["event"] for e in framed} == {framing.event}
    assert (b"\r\n" in raw) is framing.crlf
    assert (b"\n:" in raw or raw.startswith(b":")) is framing.comments
    assert (b"data:{" in raw) is framing.compact
    if framing.multiline:
        assert "\n" in framed[0]["data"] and raw.count(b"data:") == 2 * (len(framed) - 1) + 1  # [DONE] is one line


def test_a_split_event_is_two_writes(double: ProviderDouble) -> None:
    double.stream_chunks = 2
    double.framing = Framing(split=True, split_pause=0.05)
    chunks = raw_chunks(f"{double.url}/v1", "/v1/chat/completions", {**CHAT, "stream": True}, AUTH)
    events = parse_sse(b"".join(chunks))
    assert len(events) == 2 + 3 and events[-1]["data"] == "[DONE]"
    assert len(chunks) == 2 * len(events)  # each event in two writes, each its own HTTP chunk
    assert all(not half.endswith(b"\n\n") for half in chunks[0::2])  # the first half is not a whole event
    assert all(rest.endswith(b"\n\n") for rest in chunks[1::2])

    double.framing = Framing(crlf=True, multiline=True, split=True, split_after=b"\r")
    chunks = raw_chunks(f"{double.url}/v1", "/v1/chat/completions", {**CHAT, "stream": True}, AUTH)
    assert all(half.startswith(b"data: ") and half.endswith(b"\r") for half in chunks[0::2])  # CR | LF
    assert all(rest.startswith(b"\n") for rest in chunks[1::2])
    assert [e["data"] for e in parse_sse(b"".join(chunks))][-1] == "[DONE]"


def test_a_stream_can_bring_its_own_framing(double: ProviderDouble, client: httpx.Client) -> None:
    double.add_route(Route("POST", r"/v2/s", Stream([{"a": 1}], done=True, framing=Framing(crlf=True))))
    assert client.post("/v2/s", json={}).content == b'data: {"a":1}\r\n\r\ndata: [DONE]\r\n\r\n'


# -- TLS ---------------------------------------------------------------------------------------------


def test_tls_serves_https_from_its_own_ca() -> None:
    with ProviderDouble(KEY, tls=True) as double:
        assert double.url.startswith("https://127.0.0.1:") and double.ca_file is not None
        ca_file = double.ca_file
        assert Path(ca_file).read_text().startswith("-----BEGIN CERTIFICATE-----")
        trusting = ssl.create_default_context(cafile=ca_file)
        with httpx.Client(base_url=f"{double.url}/v1", headers=AUTH, verify=trusting, trust_env=False) as client:
            for _ in range(3):
                assert client.post("/chat/completions", json=CHAT).status_code == 200
            with client.stream("POST", "/chat/completions", json={**CHAT, "stream": True}) as resp:
                assert sse_payloads(resp.iter_lines())[-1] == "[DONE]"
            assert double.connections == double.handshakes == 1  # one connection, one handshake, kept alive
            assert {r.connection for r in double.requests} == {1}
            double.script(Fault.reset(), Fault.cut_stream(1))  # faults work over TLS too
            with pytest.raises(httpx.TransportError):
                client.post("/chat/completions", json=CHAT)
            with pytest.raises(httpx.RemoteProtocolError), \
                    client.stream("POST", "/chat/completions", json={**CHAT, "stream": True}) as resp:
                list(resp.iter_lines())

        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.post(f"{double.url}/v1/chat/completions", json=CHAT, headers=AUTH, trust_env=False)
        double.wait_for(lambda: double.failed_handshakes == 1, timeout=15, what="a failed handshake")
        with httpx.Client(verify=double.client_context(), trust_env=False) as client:
            localhost = client.post(f"https://localhost:{double.port}/v1/chat/completions", json=CHAT, headers=AUTH)
            assert localhost.status_code == 200  # the certificate names localhost too
    assert not Path(ca_file).exists()  # removed when the double stops


# -- on its own -------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.parametrize(
    ("module", "options", "path", "headers", "body"),
    [("css_core.testing", [], "/v1/chat/completions", {"authorization": "Bearer sk-demo"}, CHAT),
     ("css_core.testing", ["--api", "anthropic"], "/v1/messages",
      {"x-api-key": "sk-demo", "anthropic-version": "2023-06-01"}, CLAUDE)],
    ids=["openai", "anthropic"],
)
def test_runs_on_its_own(module: str, options: list[str], path: str, headers: dict[str, str], body: Any) -> None:
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", module, "--port", str(port), "--key", "sk-demo", "--reply", "demo", *options]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, process.communicate()[0]
            try:
                answer = httpx.post(f"http://127.0.0.1:{port}{path}", json=body, headers=headers, trust_env=False)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the double did not start"
                time.sleep(0.05)
        assert answer.status_code == 200 and "demo" in answer.text
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=15)
    assert process.returncode == 0, output
    assert f"provider double listening on http://127.0.0.1:{port}" in output
