"""What the built-in routes answer a request for a typed answer: a value following its schema.

A request asks for JSON following a schema through the provider's structured outputs (OpenAI's
`response_format`, Anthropic's forced tool, Gemini's `responseSchema`). While the double's
`reply` is `None`, its routes answer `example_answer(schema)`, a value the service reads as a
valid typed answer; with `reply` set, they answer it (its text, or for Anthropic's tool, its
JSON) instead, so that a test picks the answer.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from css_core.testing.routes import Replies

__all__ = ("example_answer", "typed_reply")

# the string patterns a typed answer's schema uses: hex of a fixed length (address, bytes32),
# and a whole number in decimal (integers too wide for a JSON number)
_HEX = re.compile(r"\^0x\[0-9a-fA-F\]\{([0-9]+)\}\$")
_DECIMAL = "^-?[0-9]+$"


def example_answer(schema: Any) -> Any:
    """A value following `schema`, a JSON Schema (or Gemini's form of one, types in capitals):
    an object holds each of its properties, an array `minItems` items (one without it), a
    boolean is `true`, a number `1` moved into `minimum`..`maximum`, a string `"0x11…"` for a
    hex pattern, `"1"` for a decimal one, else `"an answer"`."""
    if not isinstance(schema, dict):
        return None
    kind = str(schema.get("type", "")).lower()
    if kind == "object":
        properties = schema.get("properties")
        return {name: example_answer(sub) for name, sub in (properties or {}).items()}
    if kind == "array":
        count = schema.get("minItems", 1)
        return [example_answer(schema.get("items")) for _ in range(int(count))]
    if kind == "boolean":
        return True
    if kind in ("integer", "number"):
        low, high = schema.get("minimum"), schema.get("maximum")
        value = 1 if low is None else max(low, 1)
        return value if high is None else min(value, high)
    if kind == "string":
        pattern = str(schema.get("pattern", ""))
        if found := _HEX.fullmatch(pattern):
            return "0x" + "1" * int(found[1])
        return "1" if pattern == _DECIMAL else "an answer"
    return None


def typed_reply(double: Replies, schema: Any) -> bytes:
    """The JSON a route answers a typed request with: the double's `reply`, else `example_answer(schema)`."""
    return double.reply.encode() if double.reply is not None else msgspec.json.encode(example_answer(schema))
