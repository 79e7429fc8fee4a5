"""The provider double itself: shapes, key check, recording, streams and every Fault."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.provider_double import Fault, ProviderDouble

KEY = "sk-double"
AUTH = {"Authorization": f"Bearer {KEY}"}
CHAT = {"model": "gpt-4", "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]}


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
    with httpx.Client(base_url=double.url, headers=AUTH, timeout=5) as c:
        yield c


def sse_payloads(lines: Iterator[str]) -> list[str]:
    return [line[len("data: ") :] for line in lines if line.startswith("data: ")]


def test_key_check_and_recording(double: ProviderDouble, client: httpx.Client) -> None:
    bad = client.post("/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401
    assert bad.json()["error"]["code"] == "invalid_api_key"
    missing = httpx.post(f"{double.url}/v1/chat/completions", json=CHAT)
    assert missing.status_code == 401
    assert client.post("/v1/nothing/here", json={}).status_code == 404
    invalid = client.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert invalid.status_code == 400 and "error" in invalid.json()

    paths = ["/v1/chat/completions", "/v1/chat/completions", "/v1/nothing/here", "/v1/chat/completions"]
    assert [(r.method, r.path) for r in double.requests] == [("POST", path) for path in paths]
    first = double.requests[0]
    assert first.headers["authorization"] == "Bearer nope" and first.json == CHAT
    assert double.requests[-1].body == b"{not json" and double.requests[-1].json is None


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


def test_keep_alive(client: httpx.Client) -> None:
    def peer(response: httpx.Response) -> object:
        return response.extensions["network_stream"].get_extra_info("client_addr")

    first = client.post("/v1/chat/completions", json=CHAT)
    with client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as streamed:
        streamed.read()
    last = client.post("/v1/embeddings", json={"model": "e", "input": "x"})
    assert peer(first) == peer(streamed) == peer(last)  # one connection for all three


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
    double.chunk_delay, double.stream_chunks = 0.05, 40  # about 2 s if read to the end
    with client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as resp:
        events = 0
        for line in resp.iter_lines():
            events += line.startswith("data: ")
            if events == 3:
                break  # leave mid-stream: the context manager closes the connection
    closed_at = time.monotonic()
    assert double.wait_for_streams(1, timeout=2) == ["client_closed"]
    assert time.monotonic() - closed_at < 0.5
