"""Typed answers: a Solidity tuple type with named components, the JSON Schema a provider is
asked to follow, the check of its JSON answer, and the answer's ABI and off-chain encodings.

The type's grammar (whitespace is allowed between any two tokens):

    answer_type := tuple                          the whole text, nothing after it
    tuple       := "(" component ("," component)* ")"
    component   := type NAME                      NAME: a Solidity identifier, unique in its tuple
    type        := base ("[" k "]" | "[" "]")*    k >= 1: a fixed array; "[]": a dynamic one
    base        := elementary | tuple
    elementary  := bool | uintN | intN | address | bytes32 | string    N: 8 to 256 in steps of 8

`uint` and `int` are accepted as Solidity's aliases of `uint256` and `int256`, and canonicalised
to them for eth-abi (`abi_types`). Other byte types (`bytes`, `bytes1`..`bytes31`), fixed-point
numbers, functions and mappings are refused. The type nests at most `MAX_DEPTH` levels (the
top-level tuple, each nested tuple and each array dimension is one) and holds at most
`MAX_COMPONENTS` components in all, so that every provider's structured output can take it.

Reading an answer: an integer may be a JSON integer, a decimal string (which the schema asks
for beyond 53 bits, where JSON numbers lose precision in most parsers), or a float with a whole
value that is exact (`87.0`: some models write numbers that way); a boolean is never a number.
An address in mixed case must carry its EIP-55 checksum (a wrong one is how that encoding shows
a mistyped address); in one case it is accepted as it is, and delivered checksummed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, NoReturn

import msgspec
from eth_abi.abi import encode as abi_encode
from eth_utils.address import to_checksum_address

from css_core.errors import InvalidJob, ProviderBadResponse

__all__ = ("MAX_COMPONENTS", "MAX_DEPTH", "MAX_FIXED_LENGTH", "AnswerType")

MAX_DEPTH = 8
MAX_COMPONENTS = 64
MAX_FIXED_LENGTH = 1024
_MAX_TEXT = 4096
# Beyond this, JavaScript and many JSON parsers round integers: wider ones travel as decimal strings.
_JSON_SAFE = 2**53

_WORD = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]*")
_TOKEN = re.compile(r"[^\s,()\[\]]+|\S")
_INT = re.compile(r"(u?)int([0-9]*)")
_BYTES = re.compile(r"bytes([0-9]*)")
_FIXED = re.compile(r"u?fixed([0-9]+x[0-9]+)?")
_DECIMAL = re.compile(r"-?[0-9]{1,100}")
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_BYTES32 = re.compile(r"0x[0-9a-fA-F]{64}")
_SUPPORTED = ("typed answers take bool, uint8..uint256, int8..int256 (in steps of 8), address, bytes32, "
              "string, arrays and tuples")
_KEYWORDS = frozenset({"bool", "address", "string", "bytes", "mapping", "function", "payable", "memory",
                       "storage", "calldata", "returns", "true", "false", "tuple"})


@dataclass(frozen=True, slots=True)
class _Elem:
    kind: str  # bool, uint, int, address, bytes32, string
    bits: int = 0


@dataclass(frozen=True, slots=True)
class _Array:
    item: _Node
    length: int | None  # None: dynamic


@dataclass(frozen=True, slots=True)
class _Tuple:
    names: tuple[str, ...]
    items: tuple[_Node, ...]


_Node = _Elem | _Array | _Tuple


def _abi(node: _Node) -> str:
    if isinstance(node, _Tuple):
        return "(" + ",".join(_abi(item) for item in node.items) + ")"
    if isinstance(node, _Array):
        return f"{_abi(node.item)}[{'' if node.length is None else node.length}]"
    return f"{node.kind}{node.bits}" if node.bits else node.kind


def _depth(node: _Node) -> int:
    if isinstance(node, _Tuple):
        return 1 + max(_depth(item) for item in node.items)
    if isinstance(node, _Array):
        return 1 + _depth(node.item)
    return 0


def _elementary(word: str) -> _Elem | str:
    """The elementary type `word` names, or why it is refused."""
    if word in ("bool", "address", "string", "bytes32"):
        return _Elem(word)
    if m := _INT.fullmatch(word):
        bits = int(m[2]) if m[2] else 256
        if m[2][:1] != "0" and 8 <= bits <= 256 and bits % 8 == 0:
            return _Elem(word[: len(m[1]) + 3], bits)
        return f"`{word}` is not a Solidity type: {m[1]}intN takes N from 8 to 256 in steps of 8"
    if (m := _BYTES.fullmatch(word)) and (not m[1] or (m[1][0] != "0" and 1 <= int(m[1]) <= 32)):
        return f"`{word}` is not supported: of the byte types, typed answers take only bytes32"
    if _FIXED.fullmatch(word) or word in ("function", "mapping"):
        return f"`{word}` is not supported: {_SUPPORTED}"
    return f"`{word}` is not a Solidity type: {_SUPPORTED}"


class _Parser:
    def __init__(self, text: str) -> None:
        self.s = text
        self.i = 0
        self.count = 0

    def fail(self, what: str, at: int | None = None) -> NoReturn:
        where = ""
        if at is not None:
            part = self.part(at)
            where = f" (at `{part}`)" if part else f" (after `{self.s[max(0, at - 40):at].strip()}`)"
        raise InvalidJob(f"answer_type: {what}{where}")

    def part(self, start: int) -> str:
        """The text of the component starting at `start`: up to its `,` or `)`, or the end."""
        depth, j = 0, start
        while j < len(self.s):
            c = self.s[j]
            if c == "(":
                depth += 1
            elif c in ",)" and depth == 0:
                break
            elif c == ")":
                depth -= 1
            j += 1
        text = self.s[start:j].strip()
        return text if len(text) <= 80 else text[:79] + "…"

    def peek(self) -> str:
        while self.i < len(self.s) and self.s[self.i].isspace():
            self.i += 1
        return self.s[self.i] if self.i < len(self.s) else ""

    def found(self) -> str:
        self.peek()
        m = _TOKEN.match(self.s, self.i)
        return f"`{m[0]}`" if m else "the end"

    def tuple_(self, level: int) -> _Tuple:
        opened = self.i
        self.i += 1
        if level > MAX_DEPTH:
            self.fail(f"the type nests more than {MAX_DEPTH} levels (each tuple and each array is one)", opened)
        if self.peek() == ")":
            self.fail("an empty tuple `()` has nothing to answer", opened)
        names: list[str] = []
        items: list[_Node] = []
        while True:
            self.peek()
            start = self.i
            node = self.type_(level, start)
            name = self.name(start)
            if name in names:
                self.fail(f"`{name}` names two components of one tuple", start)
            self.count += 1
            if self.count > MAX_COMPONENTS:
                self.fail(f"the type has more than {MAX_COMPONENTS} components", start)
            names.append(name)
            items.append(node)
            c = self.peek()
            if c == ")":
                self.i += 1
                return _Tuple(tuple(names), tuple(items))
            if c == "":
                self.fail("a `(` is never closed", opened)
            if c != ",":
                self.fail(f"expected `,` or `)` after `{self.s[start:self.i].strip()}`, found {self.found()}", start)
            self.i += 1

    def type_(self, level: int, start: int) -> _Node:
        c = self.peek()
        node: _Node
        if c == "(":
            node = self.tuple_(level + 1)
        elif m := _WORD.match(self.s, self.i):
            self.i = m.end()
            elem = _elementary(m[0])
            if isinstance(elem, str):
                self.fail(elem, start)
            node = elem
        else:
            self.fail(f"expected a type, found {self.found()}", start)
        depth = _depth(node)
        while self.peek() == "[":
            close = self.s.find("]", self.i)
            size = self.s[self.i + 1: close].strip() if close >= 0 else None
            if size is None or (size and not (size.isascii() and size.isdigit())):
                self.fail(f"`{self.s[self.i: close + 1 if close >= 0 else None]}` is not an array size", start)
            self.i = close + 1
            length = int(size) if size else None
            if length is not None and not 1 <= length <= MAX_FIXED_LENGTH:
                self.fail(f"`[{size}]`: a fixed array holds from 1 to {MAX_FIXED_LENGTH} items", start)
            node, depth = _Array(node, length), depth + 1
            if level + depth > MAX_DEPTH:
                self.fail(f"the type nests more than {MAX_DEPTH} levels (each tuple and each array is one)", start)
        return node

    def name(self, start: int) -> str:
        if self.peek() in ("", ",", ")"):
            self.fail(f"the component `{self.s[start:self.i].strip()}` has no name", start)
        m = _WORD.match(self.s, self.i)
        if not m:
            self.fail(f"expected the component's name, found {self.found()}", start)
        word = m[0]
        if word in _KEYWORDS or isinstance(_elementary(word), _Elem):
            self.fail(f"`{word}` is a Solidity keyword, not a name", start)
        self.i = m.end()
        return word


def _bounds(node: _Elem) -> tuple[int, int]:
    if node.kind == "uint":
        return 0, 2**node.bits - 1
    return -(2 ** (node.bits - 1)), 2 ** (node.bits - 1) - 1


def _show(value: Any) -> str:
    text = msgspec.json.encode(value).decode()
    return text if len(text) <= 60 else text[:59] + "…"


def _bad(path: str, what: str) -> NoReturn:
    raise ProviderBadResponse(f"the typed answer's `{path}` {what}" if path else f"the typed answer {what}")


def _read(node: _Node, value: Any, path: str) -> Any:
    if isinstance(node, _Tuple):
        if not isinstance(value, dict):
            _bad(path, f"is {_show(value)}, not a JSON object")
        missing = [name for name in node.names if name not in value]
        if missing:
            _bad(path, f"has no `{missing[0]}`")
        extra = [key for key in value if key not in node.names]
        if extra:
            _bad(path, f"has `{extra[0] if len(extra[0]) <= 40 else extra[0][:39] + '…'}`, "
                       "which answer_type does not name")
        return tuple(_read(item, value[name], f"{path}.{name}" if path else name)
                     for name, item in zip(node.names, node.items, strict=True))
    if isinstance(node, _Array):
        if not isinstance(value, list):
            _bad(path, f"is {_show(value)}, not a list")
        if node.length is not None and len(value) != node.length:
            _bad(path, f"has {len(value)} items, not {node.length}")
        return [_read(node.item, item, f"{path}[{i}]") for i, item in enumerate(value)]
    kind = node.kind
    if kind == "bool":
        if not isinstance(value, bool):
            _bad(path, f"is {_show(value)}, not true or false")
        return value
    if kind == "string":
        if not isinstance(value, str):
            _bad(path, f"is {_show(value)}, not a string")
        return value
    if kind in ("uint", "int"):
        return _read_int(node, value, path)
    if not isinstance(value, str) or not (_ADDRESS if kind == "address" else _BYTES32).fullmatch(value):
        _bad(path, f"is {_show(value)}, not 0x and {40 if kind == 'address' else 64} hex digits")
    if kind == "bytes32":
        return bytes.fromhex(value[2:])
    checksummed = to_checksum_address(value)
    digits = value[2:]
    if digits != digits.lower() and digits != digits.upper() and value != checksummed:
        _bad(path, f"is {_show(value)}, whose EIP-55 checksum is wrong (mixed case must be {checksummed})")
    return checksummed


def _read_int(node: _Elem, value: Any, path: str) -> int:
    n: int
    if isinstance(value, int) and not isinstance(value, bool):
        n = value
    elif (isinstance(value, float) and value.is_integer() and abs(value) <= _JSON_SAFE) or (
            isinstance(value, str) and _DECIMAL.fullmatch(value)):
        n = int(value)
    else:
        _bad(path, f"is {_show(value)}, not a whole number (a JSON integer or a decimal string)")
    lo, hi = _bounds(node)
    if not lo <= n <= hi:
        shown = str(n) if len(str(n)) <= 40 else f"a {len(str(abs(n)))}-digit number"
        _bad(path, f"is {shown}, out of range for {_abi(node)}")
    return n


def _schema(node: _Node) -> dict[str, Any]:
    if isinstance(node, _Tuple):
        return {"type": "object", "properties": {name: _schema(item) for name, item in zip(node.names, node.items,
                                                                                             strict=True)},
                "required": list(node.names), "additionalProperties": False}
    if isinstance(node, _Array):
        array: dict[str, Any] = {"type": "array", "items": _schema(node.item)}
        if node.length is not None:
            array.update(minItems=node.length, maxItems=node.length)
        return array
    if node.kind in ("uint", "int"):
        lo, hi = _bounds(node)
        if hi <= _JSON_SAFE:
            return {"type": "integer", "minimum": lo, "maximum": hi}
        return {"type": "string", "pattern": "^-?[0-9]+$",
                "description": f"a whole number from {lo} to {hi}, in decimal"}
    if node.kind == "address":
        return {"type": "string", "pattern": "^0x[0-9a-fA-F]{40}$"}
    if node.kind == "bytes32":
        return {"type": "string", "pattern": "^0x[0-9a-fA-F]{64}$"}
    return {"type": "boolean" if node.kind == "bool" else "string"}


def _json(node: _Node, value: Any) -> Any:
    if isinstance(node, _Tuple):
        return {name: _json(item, v) for name, item, v in zip(node.names, node.items, value, strict=True)}
    if isinstance(node, _Array):
        return [_json(node.item, v) for v in value]
    if node.kind in ("uint", "int"):
        return value if abs(value) <= _JSON_SAFE else str(value)
    if node.kind == "address":
        return to_checksum_address(value)
    if node.kind == "bytes32":
        return "0x" + bytes(value).hex()
    return value


@dataclass(frozen=True, slots=True)
class AnswerType:
    """A job's answer type; `parse` is how one is made."""

    text: str
    names: tuple[str, ...]
    abi_types: tuple[str, ...]
    _root: _Tuple = field(repr=False, compare=False)

    @classmethod
    def parse(cls, text: str) -> AnswerType:
        """The answer type `text` spells; `InvalidJob` (400) naming the offending part if it is not one."""
        text = text.strip()
        if not text:
            raise InvalidJob("answer_type: empty; give a tuple of named components, "
                             "like `(bool approved, uint8 confidence, string reason)`")
        if len(text) > _MAX_TEXT:
            raise InvalidJob(f"answer_type: longer than {_MAX_TEXT} characters")
        if text[0] != "(":
            shown = text if len(text) <= 80 else text[:79] + "…"
            raise InvalidJob(f"answer_type: `{shown}` is not a tuple of named components, "
                             "like `(bool approved, uint8 confidence, string reason)`")
        parser = _Parser(text)
        root = parser.tuple_(1)
        if parser.peek():
            rest = text[parser.i:]
            raise InvalidJob(f"answer_type: unexpected `{rest if len(rest) <= 80 else rest[:79] + '…'}` "
                             "after the tuple's closing `)`")
        return cls(text, root.names, tuple(_abi(item) for item in root.items), root)

    def json_schema(self) -> dict[str, Any]:
        """The JSON Schema a provider's answer is asked to follow (a new dict on each call)."""
        return _schema(self._root)

    def read(self, answer: str | bytes) -> tuple[Any, ...]:
        """The values of the provider's JSON answer, ready for `encode`; `ProviderBadResponse`
        (retried) naming the field that does not fit the type."""
        try:
            value = msgspec.json.decode(answer)
        except msgspec.DecodeError as exc:
            raise ProviderBadResponse(f"the typed answer is not JSON ({exc})") from None
        if not isinstance(value, dict):
            raise ProviderBadResponse(f"the typed answer is {_show(value)}, not a JSON object")
        values: tuple[Any, ...] = _read(self._root, value, "")
        return values

    def encode(self, values: tuple[Any, ...]) -> bytes:
        """The values' ABI encoding, as `abi.encode` of the top-level components in order."""
        return abi_encode(list(self.abi_types), list(values))

    def to_json(self, values: tuple[Any, ...]) -> dict[str, Any]:
        """The off-chain answer's `output` object, keyed by the component names."""
        out: dict[str, Any] = _json(self._root, values)
        return out
