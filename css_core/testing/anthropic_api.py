"""Anthropic's Messages API, for `ProviderDouble.anthropic()`.

`POST .../v1/messages` with `x-api-key: <key>` (no scheme) and `anthropic-version`;
`max_tokens` is required. The answer holds content blocks; with `"stream": true` it is
named events (`message_start`, `content_block_start`, `ping`, `content_block_delta` with
`{"type": "text_delta", "text": ...}`, `content_block_stop`, `message_delta`,
`message_stop`) and the stream ends by closing, with no `[DONE]`. A request forcing one of
its tools (`tool_choice: {"type": "tool", "name": ...}`) is answered a `tool_use` block whose
`input` follows the tool's `input_schema` (`typed_reply`), with `stop_reason: "tool_use"`.
Errors are `{"type": "error", "error": {"type", "message"}}`.
"""

from __future__ import annotations

import itertools
from functools import partial
from typing import Any

import msgspec

from css_core.testing.routes import RecordedRequest, Reject, Replies, Route, split_text
from css_core.testing.sse import Event, Stream
from css_core.testing.typed import typed_reply

__all__ = ("ANTHROPIC_VERSION", "anthropic_error", "anthropic_routes")

ANTHROPIC_VERSION = "2023-06-01"
_IDS = itertools.count(1)
_ERRORS = {  # Anthropic's (type, message) by status
    400: ("invalid_request_error", "Invalid request"),
    401: ("authentication_error", "invalid x-api-key"),
    403: ("permission_error", "Your API key does not have permission to use the specified resource."),
    404: ("not_found_error", "Not found"),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Number of requests has exceeded your rate limit"),
    500: ("api_error", "Internal server error"),
    529: ("overloaded_error", "Overloaded"),
}


def anthropic_error(status: int, message: str | None = None) -> dict[str, Any]:
    """Anthropic's error body: `{"type": "error", "error": {"type", "message"}}`."""
    default = ("api_error", "Internal server error") if status >= 500 else ("invalid_request_error", "Invalid request")
    kind, text = _ERRORS.get(status, default)
    return {"type": "error", "error": {"type": kind, "message": message or text}}


def anthropic_routes(double: Replies) -> list[Route]:
    """`POST .../messages`, answered by `double` (its `reply`, `stream_chunks`, ...)."""
    return [Route("POST", r"/messages", partial(_messages, double))]


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text")
    raise Reject(400, "messages: content must be a string or a list of content blocks")


def _forced_tool(body: dict[str, Any]) -> dict[str, Any] | None:
    """The tool `tool_choice` forces (`{"type": "tool", "name": ...}`), if `tools` has it."""
    choice, tools = body.get("tool_choice"), body.get("tools")
    if not isinstance(choice, dict) or choice.get("type") != "tool" or not isinstance(tools, list):
        return None
    return next((t for t in tools if isinstance(t, dict) and t.get("name") == choice.get("name")), None)


def _messages(double: Replies, request: RecordedRequest) -> Any:
    body = request.json
    if not isinstance(body, dict):
        raise Reject(400, "The request body is not valid JSON.")
    model, messages, max_tokens = body.get("model"), body.get("messages"), body.get("max_tokens")
    if not isinstance(model, str):
        raise Reject(400, "model: Field required")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise Reject(400, "max_tokens: Field required")
    if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict):
        raise Reject(400, "messages: at least one message is required")
    text = double.text_for(model, _text_of(messages[-1].get("content")))
    n_in = sum(len(_text_of(m.get("content")).split()) for m in messages if isinstance(m, dict))
    n_out = len(text.split())
    message = {
        "id": f"msg_{next(_IDS):024d}", "type": "message", "role": "assistant", "model": model,
        "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": None,
        "usage": {"input_tokens": n_in, "output_tokens": n_out},
    }
    if body.get("stream") is not True:
        if (tool := _forced_tool(body)) is not None:
            use = {"type": "tool_use", "id": f"toolu_{next(_IDS):024d}", "name": tool["name"],
                   "input": msgspec.json.decode(typed_reply(double, tool.get("input_schema")))}
            return {**message, "content": [use], "stop_reason": "tool_use"}
        return message
    start = {**message, "content": [], "stop_reason": None, "usage": {"input_tokens": n_in, "output_tokens": 1}}
    deltas = [
        Event({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}},
              "content_block_delta")
        for piece in split_text(text, double.stream_chunks)
    ]
    stop_reason = {"stop_reason": "end_turn", "stop_sequence": None}
    return Stream([
        Event({"type": "message_start", "message": start}, "message_start"),
        Event({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
              "content_block_start"),
        Event({"type": "ping"}, "ping"),
        *deltas,
        Event({"type": "content_block_stop", "index": 0}, "content_block_stop"),
        Event({"type": "message_delta", "delta": stop_reason, "usage": {"output_tokens": n_out}}, "message_delta"),
        Event({"type": "message_stop"}, "message_stop"),
    ])
