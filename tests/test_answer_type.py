"""Typed answers' types (`css_core.jobs.answer_type`): parsing and refusing the Solidity tuple
type, its JSON Schema, reading a provider's JSON answer against it, and its two encodings.

Unit tests, no provider: the pipeline's use of the type is tested with the jobs that carry one.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from eth_abi.abi import decode
from eth_utils.address import to_checksum_address
from hypothesis import given
from hypothesis import strategies as st

from css_core.errors import InvalidJob, ProviderBadResponse
from css_core.jobs.answer_type import MAX_COMPONENTS, MAX_DEPTH, MAX_FIXED_LENGTH, AnswerType

VERDICT = "(bool approved, uint8 confidence, string reason)"
NESTED = "(bool ok, (string label, uint16[] scores)[2] parts)"
# EIP-55's own example, and the same address in the wrong case mix (one letter flipped).
CHECKSUMMED = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"
MISCASED = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeD"


@pytest.mark.parametrize(("text", "names", "abi_types"), [
    (VERDICT, ("approved", "confidence", "reason"), ("bool", "uint8", "string")),
    (NESTED, ("ok", "parts"), ("bool", "(string,uint16[])[2]")),
    ("  (\n\taddress   who )  ", ("who",), ("address",)),
    ("(uint a, int b, uint256 c, int8 d)", ("a", "b", "c", "d"), ("uint256", "int256", "uint256", "int8")),
    ("(bytes32 h, uint8 [2] [3] grid, string[] tags)", ("h", "grid", "tags"), ("bytes32", "uint8[2][3]", "string[]")),
    ("(bool _x, bool $y, bool a1)", ("_x", "$y", "a1"), ("bool", "bool", "bool")),
    ("((bool a) x, (bool a) y)", ("x", "y"), ("(bool)", "(bool)")),  # a name is unique within its own tuple
    (f"(bool[{MAX_FIXED_LENGTH}] many)", ("many",), (f"bool[{MAX_FIXED_LENGTH}]",)),
    ("(bool" + "[]" * (MAX_DEPTH - 1) + " deep)", ("deep",), ("bool" + "[]" * (MAX_DEPTH - 1),)),
    ("(" * MAX_DEPTH + "bool a" + ") a" * (MAX_DEPTH - 1) + ")", ("a",),
     ("(" * (MAX_DEPTH - 1) + "bool" + ")" * (MAX_DEPTH - 1),)),
    ("(" + ", ".join(f"bool a{i}" for i in range(MAX_COMPONENTS)) + ")", tuple(f"a{i}" for i in range(MAX_COMPONENTS)),
     ("bool",) * MAX_COMPONENTS),
])
def test_parse_accepts(text: str, names: tuple[str, ...], abi_types: tuple[str, ...]) -> None:
    answer_type = AnswerType.parse(text)
    assert answer_type.text == text.strip()
    assert answer_type.names == names
    assert answer_type.abi_types == abi_types


TOO_MANY = "(" + ", ".join(f"bool a{i}" for i in range(MAX_COMPONENTS + 1)) + ")"


@pytest.mark.parametrize(("text", "expected"), [
    ("(uint7 confidence)",
     "`uint7` is not a Solidity type: uintN takes N from 8 to 256 in steps of 8 (at `uint7 confidence`)"),
    ("(uint264 n)", "`uint264` is not a Solidity type"),
    ("(int4 n)", "`int4` is not a Solidity type: intN"),
    ("(uint08 n)", "`uint08` is not a Solidity type"),
    ("(bytes33 b)", "`bytes33` is not a Solidity type"),
    ("(bytes b)", "`bytes` is not supported: of the byte types, typed answers take only bytes32 (at `bytes b`)"),
    ("(bytes16 b)", "`bytes16` is not supported"),
    ("(fixed f)", "`fixed` is not supported"),
    ("(ufixed128x18 f)", "`ufixed128x18` is not supported"),
    ("(function f)", "`function` is not supported"),
    ("(mapping(uint => bool) m)", "`mapping` is not supported"),
    ("(Bool b)", "`Bool` is not a Solidity type"),
    ("(bool ok, (string label, uint7 score) part)", "uintN takes N from 8 to 256 in steps of 8 (at `uint7 score`)"),
    ("(bool ok, uint8)", "the component `uint8` has no name (at `uint8`)"),
    ("(bool ok, (string label) )", "the component `(string label)` has no name"),
    ("(bool 1a)", "expected the component's name, found `1a` (at `bool 1a`)"),
    ("(bool bool)", "`bool` is a Solidity keyword, not a name (at `bool bool`)"),
    ("(address payable who)", "`payable` is a Solidity keyword, not a name"),
    ("(bool a, uint8 a)", "`a` names two components of one tuple (at `uint8 a`)"),
    ("(bool ok, (bool a, bool a) t)", "`a` names two components of one tuple (at `bool a`)"),
    ("()", "an empty tuple `()` has nothing to answer (at `()`)"),
    ("(bool ok, () e)", "an empty tuple `()` has nothing to answer (at `() e`)"),
    ("(bool ok, string reason", "a `(` is never closed (at `(bool ok, string reason`)"),
    ("(bool ok, (string label part)", "expected `,` or `)` after `string label`, found `part`"),
    ("(bool ok))", "unexpected `)` after the tuple's closing `)`"),
    ("(bool ok) extra", "unexpected `extra` after the tuple's closing `)`"),
    ("(bool ok)[2]", "unexpected `[2]` after the tuple's closing `)`"),
    ("(bool ok,)", "expected a type, found `)` (after `(bool ok,`)"),
    ("(bool a b)", "expected `,` or `)` after `bool a`, found `b` (at `bool a b`)"),
    ("bool approved", "`bool approved` is not a tuple of named components"),
    ("uint8", "`uint8` is not a tuple of named components"),
    ("", "answer_type: empty; give a tuple of named components"),
    ("(uint8[0] n)", "`[0]`: a fixed array holds from 1 to 1024 items (at `uint8[0] n`)"),
    (f"(uint8[{MAX_FIXED_LENGTH + 1}] n)", f"`[{MAX_FIXED_LENGTH + 1}]`: a fixed array holds from 1 to"),
    ("(uint8[x] n)", "`[x]` is not an array size (at `uint8[x] n`)"),
    ("(uint8[-1] n)", "`[-1]` is not an array size"),
    ("(uint8[\u00b2] n)", "`[\u00b2]` is not an array size"),  # a digit to str.isdigit, not to int()
    ("(uint8[\u0663] n)", "`[\u0663]` is not an array size"),  # a digit to int(), not to Solidity
    ("(uint8[2 n)", "is not an array size (at `uint8[2 n`)"),
    ("(bool" + "[]" * MAX_DEPTH + " deep)", f"the type nests more than {MAX_DEPTH} levels"),
    ("(" * (MAX_DEPTH + 1) + "bool a" + ") a" * MAX_DEPTH + ")", f"the type nests more than {MAX_DEPTH} levels"),
    ("(" * 100, f"the type nests more than {MAX_DEPTH} levels"),
    (TOO_MANY, f"the type has more than {MAX_COMPONENTS} components (at `bool a{MAX_COMPONENTS}`)"),
    ("(" + "bool a," * 2000 + ")", "longer than 4096 characters"),
])
def test_parse_refuses_naming_the_part(text: str, expected: str) -> None:
    with pytest.raises(InvalidJob) as caught:
        AnswerType.parse(text)
    assert caught.value.status == 400
    assert caught.value.message.startswith("answer_type: ")
    assert expected in caught.value.message


def _schema_fits_openai_strict(schema: dict[str, Any]) -> None:
    """OpenAI's strict structured outputs: every object lists all its properties as required and
    forbids others; only the keywords it supports."""
    supported = {"type", "properties", "required", "additionalProperties", "items", "minItems", "maxItems",
                 "minimum", "maximum", "pattern", "description", "enum", "anyOf"}
    assert set(schema) <= supported, set(schema) - supported
    if schema["type"] == "object":
        assert schema["required"] == list(schema["properties"])
        assert schema["additionalProperties"] is False
        for sub in schema["properties"].values():
            _schema_fits_openai_strict(sub)
    elif schema["type"] == "array":
        _schema_fits_openai_strict(schema["items"])


def _object(properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}


@pytest.mark.parametrize(("text", "schema"), [
    (VERDICT, _object({"approved": {"type": "boolean"}, "confidence": {"type": "integer", "minimum": 0, "maximum": 255},
                       "reason": {"type": "string"}})),
    (NESTED, _object({"ok": {"type": "boolean"}, "parts": {
        "type": "array", "minItems": 2, "maxItems": 2,
        "items": _object({
            "label": {"type": "string"},
            "scores": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 65535}}})}})),
    ("(address who)", _object({"who": {"type": "string", "pattern": "^0x[0-9a-fA-F]{40}$"}})),
    ("(bytes32 h)", _object({"h": {"type": "string", "pattern": "^0x[0-9a-fA-F]{64}$"}})),
    ("(uint256 big)", _object({"big": {"type": "string", "pattern": "^-?[0-9]+$",
                                       "description": f"a whole number from 0 to {2**256 - 1}, in decimal"}})),
    ("(int64 i)", _object({"i": {"type": "string", "pattern": "^-?[0-9]+$",
                                 "description": f"a whole number from {-(2**63)} to {2**63 - 1}, in decimal"}})),
    ("(int8 t)", _object({"t": {"type": "integer", "minimum": -128, "maximum": 127}})),
    ("(uint48 u, int48 i)", _object({"u": {"type": "integer", "minimum": 0, "maximum": 2**48 - 1},
                                     "i": {"type": "integer", "minimum": -(2**47), "maximum": 2**47 - 1}})),
])
def test_json_schema(text: str, schema: dict[str, Any]) -> None:
    answer_type = AnswerType.parse(text)
    assert answer_type.json_schema() == schema
    _schema_fits_openai_strict(answer_type.json_schema())
    # a caller may change its copy (a plugin wrapping it) without changing the type's
    answer_type.json_schema()["properties"].clear()
    assert answer_type.json_schema() == schema


@pytest.mark.parametrize(("text", "answer", "values"), [
    (VERDICT, '{"approved": true, "confidence": 87, "reason": "fine"}', (True, 87, "fine")),
    (VERDICT, b'{"reason": "any order", "confidence": "87", "approved": false}', (False, 87, "any order")),
    (VERDICT, '{"approved": true, "confidence": 87.0, "reason": ""}', (True, 87, "")),
    (VERDICT, ' \n{"approved": true, "confidence": 0, "reason": "\\u00e9"}\n', (True, 0, "é")),
    (NESTED, '{"ok": true, "parts": [{"label": "a", "scores": [1, 2]}, {"label": "b", "scores": []}]}',
     (True, [("a", [1, 2]), ("b", [])])),
    ("(int8 lo, int8 hi, uint8 top)", '{"lo": -128, "hi": 127, "top": 255}', (-128, 127, 255)),
    ("(uint256 big, int256 neg)", f'{{"big": "{2**256 - 1}", "neg": "{-(2**255)}"}}', (2**256 - 1, -(2**255))),
    ("(uint256 big)", f'{{"big": {2**200}}}', (2**200,)),
    ("(address who)", f'{{"who": "{CHECKSUMMED}"}}', (CHECKSUMMED,)),
    ("(address who)", f'{{"who": "{CHECKSUMMED.lower()}"}}', (CHECKSUMMED,)),
    ("(address who)", f'{{"who": "0x{CHECKSUMMED[2:].upper()}"}}', (CHECKSUMMED,)),
    ("(bytes32 h)", '{"h": "0x' + "aB" * 32 + '"}', (bytes.fromhex("ab" * 32),)),
])
def test_read_accepts(text: str, answer: str | bytes, values: tuple[Any, ...]) -> None:
    assert AnswerType.parse(text).read(answer) == values


@pytest.mark.parametrize(("text", "answer", "expected"), [
    (VERDICT, '{"approved": true, "confidence": 300, "reason": ""}',
     "the typed answer's `confidence` is 300, out of range for uint8"),
    ("(int8 t)", '{"t": 200}', "the typed answer's `t` is 200, out of range for int8"),
    ("(int8 t)", '{"t": -129}', "`t` is -129, out of range for int8"),
    ("(uint8 c)", '{"c": -1}', "the typed answer's `c` is -1, out of range for uint8"),
    ("(uint8 c)", '{"c": "-1"}', "`c` is -1, out of range for uint8"),
    ("(uint256 big)", f'{{"big": "{2**256}"}}', "`big` is a 78-digit number, out of range for uint256"),
    ("(uint8 c)", '{"c": true}', "`c` is true, not a whole number"),
    ("(uint8 c)", '{"c": 8.5}', "`c` is 8.5, not a whole number"),
    ("(uint8 c)", '{"c": "0x10"}', "`c` is \"0x10\", not a whole number"),
    ("(uint8 c)", '{"c": " 1"}', "not a whole number"),
    ("(uint256 big)", '{"big": 1e60}', "`big` is 1e60, not a whole number"),
    ("(uint8 c)", '{"c": null}', "`c` is null, not a whole number"),
    (VERDICT, '{"approved": "yes", "confidence": 1, "reason": ""}', "`approved` is \"yes\", not true or false"),
    (VERDICT, '{"approved": 1, "confidence": 1, "reason": ""}', "`approved` is 1, not true or false"),
    (VERDICT, '{"approved": true, "confidence": 1, "reason": 5}', "`reason` is 5, not a string"),
    (VERDICT, '{"approved": true, "confidence": 1}', "the typed answer has no `reason`"),
    (VERDICT, '{"approved": true, "confidence": 1, "reason": "", "why": ""}',
     "the typed answer has `why`, which answer_type does not name"),
    (VERDICT, '{"approved": true, "confidence": 1, "reason": "", "' + "w" * 500 + '": ""}',
     "the typed answer has `" + "w" * 39 + "…`, which answer_type does not name"),
    (NESTED, '{"ok": true, "parts": [{"label": "a", "scores": []}]}', "the typed answer's `parts` has 1 items, not 2"),
    (NESTED, '{"ok": true, "parts": {"label": "a"}}', "the typed answer's `parts` is {\"label\":\"a\"}, not a list"),
    (NESTED, '{"ok": true, "parts": [{"label": "a", "scores": []}, {"label": "b"}]}',
     "the typed answer's `parts[1]` has no `scores`"),
    (NESTED, '{"ok": true, "parts": [{"label": "a", "scores": [], "x": 1}, {"label": "b", "scores": []}]}',
     "the typed answer's `parts[0]` has `x`, which answer_type does not name"),
    (NESTED, '{"ok": true, "parts": [{"label": "a", "scores": [1]}, {"label": "b", "scores": [3, 70000]}]}',
     "the typed answer's `parts[1].scores[1]` is 70000, out of range for uint16"),
    (NESTED, '{"ok": true, "parts": [1, 2]}', "the typed answer's `parts[0]` is 1, not a JSON object"),
    ("(address who)", '{"who": "0x1234"}', "`who` is \"0x1234\", not 0x and 40 hex digits"),
    ("(address who)", f'{{"who": "{CHECKSUMMED[2:]}"}}', "not 0x and 40 hex digits"),
    ("(address who)", f'{{"who": "{MISCASED}"}}', f"whose EIP-55 checksum is wrong (mixed case must be {CHECKSUMMED})"),
    ("(bytes32 h)", '{"h": "0x' + "ab" * 31 + '"}', "`h` is \"0x" + "ab" * 28 + "…, not 0x and 64 hex digits"),
    ("(bytes32 h)", '{"h": "0x' + "zz" * 32 + '"}', "not 0x and 64 hex digits"),
    (VERDICT, "the answer is yes", "the typed answer is not JSON"),
    (VERDICT, '{"approved": true', "the typed answer is not JSON"),
    (VERDICT, "", "the typed answer is not JSON"),
    (VERDICT, '[true, 87, "fine"]', 'the typed answer is [true,87,"fine"], not a JSON object'),
    (VERDICT, '"' + "x" * 500 + '"', "the typed answer is \"" + "x" * 58 + "…, not a JSON object"),
])
def test_read_refuses_naming_the_field(text: str, answer: str, expected: str) -> None:
    with pytest.raises(ProviderBadResponse) as caught:
        AnswerType.parse(text).read(answer)
    assert caught.value.retryable
    assert expected in str(caught.value)


def test_encode_is_the_values_abi_encoding() -> None:
    answer_type = AnswerType.parse("(bool ok, (string label, uint16[] scores)[2] parts, address who, bytes32 h, "
                                   "int256 neg, string reason)")
    values = answer_type.read(msgspec.json.encode({
        "ok": True, "parts": [{"label": "a", "scores": [1, 2]}, {"label": "b", "scores": []}],
        "who": CHECKSUMMED.lower(), "h": "0x" + "01" * 32, "neg": str(-(2**200)), "reason": "ünïcode"}))
    raw = answer_type.encode(values)
    assert decode(["bool", "(string,uint16[])[2]", "address", "bytes32", "int256", "string"], raw) == (
        True, (("a", (1, 2)), ("b", ())), CHECKSUMMED.lower(), b"\x01" * 32, -(2**200), "ünïcode")
    # the example, as a contract reads it: abi.decode(raw, (bool, uint8, string))
    verdict = AnswerType.parse(VERDICT)
    raw = verdict.encode(verdict.read('{"approved": true, "confidence": 87, "reason": "fine"}'))
    assert decode(["bool", "uint8", "string"], raw) == (True, 87, "fine")


def test_to_json() -> None:
    answer_type = AnswerType.parse("(uint256 small, uint256 edge, uint256 big, int256 neg, address who, bytes32 h, "
                                   "(bool a, int8[] b)[] nested)")
    values = (5, 2**53, 2**53 + 1, -(2**53) - 1, CHECKSUMMED.lower(), bytes.fromhex("AB" * 32),
              [(True, [-1, 2])])
    assert answer_type.to_json(values) == {
        "small": 5, "edge": 2**53, "big": str(2**53 + 1), "neg": str(-(2**53) - 1), "who": CHECKSUMMED,
        "h": "0x" + "ab" * 32, "nested": [{"a": True, "b": [-1, 2]}]}
    verdict = AnswerType.parse(VERDICT)
    assert verdict.to_json(verdict.read('{"approved": true, "confidence": "87", "reason": "fine"}')) == {
        "approved": True, "confidence": 87, "reason": "fine"}


_ELEMENTARY: dict[str, st.SearchStrategy[Any]] = {
    "bool": st.booleans(),
    "string": st.text(max_size=20),
    "address": st.binary(min_size=20, max_size=20).map(to_checksum_address),
    "bytes32": st.binary(min_size=32, max_size=32),
    **{f"uint{bits}": st.integers(0, 2**bits - 1) for bits in (8, 48, 56, 256)},
    **{f"int{bits}": st.integers(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) for bits in (8, 48, 56, 256)},
}


@st.composite
def _component(draw: st.DrawFn, level: int) -> tuple[str, st.SearchStrategy[Any]]:
    """A component's type (as text) and a strategy for its values."""
    shape = draw(st.sampled_from(["elementary", "elementary", "array", "tuple"] if level < 3 else ["elementary"]))
    if shape == "elementary":
        name = draw(st.sampled_from(sorted(_ELEMENTARY)))
        return name, _ELEMENTARY[name]
    if shape == "array":
        item, items = draw(_component(level + 1))
        length = draw(st.none() | st.integers(1, 3))
        return (f"{item}[{length or ''}]",
                st.lists(items, min_size=length or 0, max_size=length or 3))
    return _tuple(draw, level + 1)


def _tuple(draw: st.DrawFn, level: int) -> tuple[str, st.SearchStrategy[Any]]:
    components = draw(st.lists(_component(level), min_size=1, max_size=4))
    names = draw(st.permutations(["zeta", "alpha", "_mid", "$b"]))
    text = "(" + ", ".join(f"{item} {name}" for name, (item, _) in zip(names, components, strict=False)) + ")"
    return text, st.tuples(*(values for _, values in components))


@given(st.data())
def test_round_trips(data: st.DataObject) -> None:
    """For any type and values of it: the off-chain JSON reads back as the same values (so a provider
    answering in that form is read right), the schema fits OpenAI's strict mode, and the ABI
    encoding decodes to the same values."""
    text, values_of = _tuple(data.draw, 0)
    answer_type = AnswerType.parse(text)
    values = data.draw(values_of)
    _schema_fits_openai_strict(answer_type.json_schema())
    output = answer_type.to_json(values)
    assert answer_type.read(msgspec.json.encode(output)) == _as_read(values)
    decoded = decode(list(answer_type.abi_types), answer_type.encode(values))
    assert answer_type.to_json(decoded) == output


def _as_read(value: Any) -> Any:
    """`values` as read() gives them: arrays as lists, tuples as tuples."""
    if isinstance(value, tuple):
        return tuple(_as_read(item) for item in value)
    if isinstance(value, list):
        return [_as_read(item) for item in value]
    return value


@given(st.text(alphabet=st.sampled_from("()[], \t0123456789xbyteintuaddressgolbf$_\u00b2\u0663\u00a0"), max_size=60)
       | st.text(max_size=30))
def test_parse_refuses_only_with_invalid_job(text: str) -> None:
    """Any text is an answer type or a 400 naming why, never another error (a 500)."""
    try:
        AnswerType.parse(text)
    except InvalidJob as exc:
        assert exc.message.startswith("answer_type: ")


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=10)
_NEAR_PARTS = st.lists(st.fixed_dictionaries({"label": _JSON | st.text(), "scores": _JSON | st.lists(_JSON)}))


@given(st.fixed_dictionaries({"ok": _JSON, "parts": _JSON | _NEAR_PARTS, "n": _JSON | st.from_regex("-?[0-9]+"),
                              "who": _JSON | st.from_regex("0x[0-9a-fA-F]{40}", fullmatch=True)})
       | st.dictionaries(st.sampled_from(["ok", "parts", "who", "n", "x"]), _JSON, max_size=5))
def test_read_refuses_only_with_bad_response(answer: dict[str, Any]) -> None:
    """Any JSON object, near the type's shape or not, is the type's values or an unreadable
    answer (retried), never another error."""
    answer_type = AnswerType.parse("(bool ok, (string label, uint16[] scores)[] parts, address who, int64 n)")
    try:
        answer_type.read(msgspec.json.encode(answer))
    except ProviderBadResponse as exc:
        assert str(exc).startswith("the typed answer")
