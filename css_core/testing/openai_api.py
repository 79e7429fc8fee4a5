"""OpenAI's wire format, and PerplexityAI's and GooseAI's, which follow it: the double's default.

Routes match on the end of the path, so any base prefix works (`{url}/v1` for OpenAI and
GooseAI, `{url}` for Perplexity): `POST .../chat/completions` (streamed with
`"stream": true`, ending in `data: [DONE]`), `POST .../embeddings` and GooseAI's
`POST .../engines/{model}/completions`. A chat completion asking for structured outputs
(`response_format` of type `json_schema`) is answered JSON following its schema (`typed_reply`).
"""

from __future__ import annotations

import http
import itertools
import time
from functools import partial
from typing import Any

import msgspec

from css_core.testing.routes import RecordedRequest, Reject, Replies, Route, split_text
from css_core.testing.sse import Stream
from css_core.testing.typed import typed_reply

__all__ = ("openai_error", "openai_routes")

_IDS = itertools.count(1)
_ERRORS = {  # OpenAI's (message, type, code) for the statuses tests use most
    400: ("We could not parse the JSON body of your request.", "invalid_request_error", None),
    401: ("Incorrect API key provided", "invalid_request_error", "invalid_api_key"),
    404: ("The model does not exist", "invalid_request_error", "model_not_found"),
    429: ("Rate limit reached for requests", "requests", "rate_limit_exceeded"),
    500: ("The server had an error while processing your request.", "server_error", None),
    503: ("The engine is currently overloaded, please try again later.", "server_error", None),
}


def phrase(status: int) -> str:
    """The reason phrase of `status` ("Error" for a code HTTP does not name)."""
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def openai_error(status: int, message: str | None = None) -> dict[str, Any]:
    """OpenAI's error body: `{"error": {"message", "type", "code"}}`."""
    kind = "server_error" if status >= 500 else "invalid_request_error"
    default, kind, code = _ERRORS.get(status, (phrase(status), kind, None))
    return {"error": {"message": message or default, "type": kind, "code": code}}


def openai_routes(double: Replies) -> list[Route]:
    """Chat completions, embeddings and GooseAI's engine completions, answered by `double`."""
    return [
        Route("POST", r"/chat/completions", partial(_chat, double)),
        Route("POST", r"/embeddings", partial(_embeddings, double)),
        Route("POST", r"/engines/(?P<model>[^/]*)/completions", partial(_goose, double)),
    ]


def _object(request: RecordedRequest) -> dict[str, Any]:
    if not isinstance(request.json, dict):
        raise Reject(400)
    return request.json


def _base(model: Any) -> dict[str, Any]:
    return {"id": f"cmpl-{next(_IDS)}", "created": int(time.time()), "model": model}


def _chat(double: Replies, request: RecordedRequest) -> Any:
    body = _object(request)
    model, messages = body.get("model"), body.get("messages")
    if not isinstance(model, str) or not isinstance(messages, list) or not messages:
        raise Reject(400, "'model' and a non-empty 'messages' list are required")
    last = messages[-1].get("content") if isinstance(messages[-1], dict) else None
    last = last if isinstance(last, str) else msgspec.json.encode(last).decode()
    schema = _answer_schema(body)
    text = double.text_for(model, last) if schema is None else typed_reply(double, schema).decode()
    base = _base(model)
    base["id"] = f"chat{base['id']}"  # chatcmpl-N
    n_in = sum(len(str(m.get("content", "")).split()) for m in messages if isinstance(m, dict))
    n_out = len(text.split())
    usage = {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out}
    if body.get("stream") is True:
        chunk = {**base, "object": "chat.completion.chunk"}

        def event(delta: dict[str, str], finish: str | None = None) -> dict[str, Any]:
            return {**chunk, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

        pieces = (event({"content": piece}) for piece in split_text(text, double.stream_chunks))
        events = [event({"role": "assistant", "content": ""}), *pieces, event({}, "stop")]
        options = body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage") is True:
            events.append({**chunk, "choices": [], "usage": usage})  # OpenAI's last chunk: usage, no choices
        return Stream(events, done=True)
    choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
    return {**base, "object": "chat.completion", "choices": [choice], "usage": usage}


def _answer_schema(body: dict[str, Any]) -> Any:
    """The schema of structured outputs (`response_format` of type `json_schema`), None without."""
    asked = body.get("response_format")
    if not isinstance(asked, dict) or asked.get("type") != "json_schema":
        return None
    found = asked.get("json_schema")
    return found.get("schema") if isinstance(found, dict) else None


def _embeddings(double: Replies, request: RecordedRequest) -> Any:
    body = _object(request)
    texts = body.get("input")
    texts = [texts] if isinstance(texts, str) else texts
    if not texts or not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise Reject(400, "'input' must be a string or a list of strings")
    vectors = [double.embedding_for(text) for text in texts]
    data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
    tokens = sum(len(t.split()) for t in texts)
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return {"object": "list", "data": data, "model": body.get("model"), "usage": usage}


def _goose(double: Replies, request: RecordedRequest) -> Any:
    body = _object(request)
    model, prompt = request.params["model"], body.get("prompt")
    if not isinstance(prompt, str):
        raise Reject(400, "'prompt' must be a string")
    text = double.text_for(model, prompt)
    base = {**_base(model), "object": "text_completion"}

    def event(piece: str, finish: str | None = "stop") -> dict[str, Any]:
        return {**base, "choices": [{"text": piece, "index": 0, "finish_reason": finish}]}

    if body.get("stream") is True:
        *pieces, last = split_text(text, double.stream_chunks)
        return Stream([*(event(piece, None) for piece in pieces), event(last)], done=True)
    return event(text)
