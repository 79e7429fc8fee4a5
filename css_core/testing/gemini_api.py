"""Google's Gemini API (Generative Language), for `ProviderDouble.gemini()`.

`POST .../v1beta/models/{model}:generateContent` with `x-goog-api-key: <key>` (no scheme);
`:streamGenerateContent?alt=sse` streams, each event's `data` a whole response chunk
`{"candidates": [{"content": {"parts": [{"text": ...}], "role": "model"}}], ...}`, the last
with `"finishReason": "STOP"`, and ends by closing (without `alt=sse` the chunks come as one
JSON array); `:embedContent` answers `{"embedding": {"values": [...]}}`. A request with a
`generationConfig.responseSchema` is answered JSON following it (`typed_reply`). Errors are
`{"error": {"code", "message", "status"}}`; a wrong key is a 400 `API_KEY_INVALID`.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from css_core.testing.routes import RecordedRequest, Reject, Replies, Route, split_text
from css_core.testing.sse import Stream
from css_core.testing.typed import typed_reply

__all__ = ("gemini_error", "gemini_key_invalid", "gemini_routes")

_STATUSES = {
    400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
    409: "ABORTED", 429: "RESOURCE_EXHAUSTED", 499: "CANCELLED", 500: "INTERNAL", 501: "NOT_IMPLEMENTED",
    503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED",
}
_MODEL = r"/models/(?P<model>[^/:]+)"


def gemini_error(status: int, message: str | None = None, *, reason: str | None = None) -> dict[str, Any]:
    """Google's error body: `{"error": {"code", "message", "status"}}`, with an `ErrorInfo`
    detail naming `reason` (e.g. `API_KEY_INVALID`) if given."""
    error: dict[str, Any] = {
        "code": status,
        "message": message or _STATUSES.get(status, "UNKNOWN").replace("_", " ").capitalize(),
        "status": _STATUSES.get(status, "INTERNAL" if status >= 500 else "FAILED_PRECONDITION"),
    }
    if reason is not None:
        error["details"] = [{
            "@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": reason, "domain": "googleapis.com",
            "metadata": {"service": "generativelanguage.googleapis.com"},
        }]
    return {"error": error}


def gemini_key_invalid() -> tuple[int, dict[str, Any]]:
    """What Gemini answers a missing or wrong key with: 400, `API_KEY_INVALID`."""
    return 400, gemini_error(400, "API key not valid. Please pass a valid API key.", reason="API_KEY_INVALID")


def gemini_routes(double: Replies) -> list[Route]:
    """`:generateContent`, `:streamGenerateContent` (`?alt=sse` or a JSON array) and
    `:embedContent`, answered by `double`."""
    bad_key = gemini_key_invalid()
    return [
        Route("POST", _MODEL + ":generateContent", partial(_generate, double, "json"), unauthorized=bad_key),
        Route("POST", _MODEL + ":streamGenerateContent", partial(_generate, double, "sse"), query={"alt": "sse"},
              unauthorized=bad_key),
        Route("POST", _MODEL + ":streamGenerateContent", partial(_generate, double, "array"), unauthorized=bad_key),
        Route("POST", _MODEL + ":embedContent", partial(_embed, double), unauthorized=bad_key),
    ]


def _texts(content: Any) -> str:
    parts = content.get("parts") if isinstance(content, dict) else None
    if not isinstance(parts, list):
        raise Reject(400, "* GenerateContentRequest.contents[].parts: parts is not specified")
    return "".join(p["text"] for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str))


def _generate(double: Replies, mode: str, request: RecordedRequest) -> Any:
    body = request.json
    if not isinstance(body, dict):
        raise Reject(400, "Invalid JSON payload received.")
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        raise Reject(400, "* GenerateContentRequest.contents: contents is not specified")
    model = request.params["model"]
    config = body.get("generationConfig")
    schema = config.get("responseSchema") if isinstance(config, dict) else None
    text = double.text_for(model, _texts(contents[-1])) if schema is None else typed_reply(double, schema).decode()
    n_in = sum(len(_texts(c).split()) for c in contents)

    def chunk(piece: str, n_out: int, finish: bool) -> dict[str, Any]:
        candidate: dict[str, Any] = {"content": {"parts": [{"text": piece}], "role": "model"}, "index": 0}
        if finish:
            candidate["finishReason"] = "STOP"
        usage = {"promptTokenCount": n_in, "candidatesTokenCount": n_out, "totalTokenCount": n_in + n_out}
        return {"candidates": [candidate], "usageMetadata": usage, "modelVersion": model}

    if mode == "json":
        return chunk(text, len(text.split()), True)
    pieces = split_text(text, double.stream_chunks)
    # each chunk's usage is the running total so far, as Gemini reports it
    totals = [len("".join(pieces[:i + 1]).split()) for i in range(len(pieces))]
    chunks = [chunk(piece, totals[i], i == len(pieces) - 1) for i, piece in enumerate(pieces)]
    return Stream(chunks) if mode == "sse" else chunks


def _embed(double: Replies, request: RecordedRequest) -> Any:
    body = request.json
    if not isinstance(body, dict):
        raise Reject(400, "Invalid JSON payload received.")
    return {"embedding": {"values": double.embedding_for(_texts(body.get("content")))}}
