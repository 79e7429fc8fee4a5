"""The on-chain codec: byte-compatible with infernet-ml, round trips, and every malformed
input an `InvalidJob` (a 400), never a crash.

`css_core.jobs.codec` encodes and decodes with eth-abi, and refuses before decoding the data whose
strings claim more bytes than it holds. The differential tests at the end hold that guard to
eth-abi's own strict decoder on valid and mutated encodings: it refuses nothing else.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Callable

import pytest
from eth_abi.abi import decode, encode
from eth_abi.exceptions import DecodingError, EncodingError
from hypothesis import HealthCheck, event, example, given, note, settings
from hypothesis import strategies as st

from css_core.errors import InvalidJob
from css_core.jobs.codec import (
    OnchainRequest,
    decode_callback_output,
    decode_hex,
    decode_request,
    decode_result,
    encode_request,
    encode_result,
)
from css_core.types import Message

# infernet_ml.utils.codec.css.encode_css_completion_request(OPENAI, completions, "gpt-4", [user: "hi"])
GOLDEN = (
    "0000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000080"
    "00000000000000000000000000000000000000000000000000000000000000c0"
    "0000000000000000000000000000000000000000000000000000000000000005"
    "6770742d34000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000001"
    "0000000000000000000000000000000000000000000000000000000000000020"
    "0000000000000000000000000000000000000000000000000000000000000040"
    "0000000000000000000000000000000000000000000000000000000000000080"
    "0000000000000000000000000000000000000000000000000000000000000004"
    "7573657200000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000002"
    "6869000000000000000000000000000000000000000000000000000000000000"
)

messages = st.lists(st.builds(Message, role=st.text(max_size=20), content=st.text()), max_size=8).map(tuple)


def infernet_ml_encode(provider: int, endpoint: int, model: str, messages: tuple[Message, ...]) -> bytes:
    """What `infernet_ml.utils.codec.css.encode_css_completion_request` does (infernet-ml 2.0)."""
    return encode(
        ["uint8", "uint8", "string", "(string,string)[]"],
        [provider, endpoint, model, [(m.role, m.content) for m in messages]],
    )


def test_golden_request() -> None:
    raw = encode_request(0, 0, "gpt-4", (Message("user", "hi"),))
    assert raw.hex() == GOLDEN
    assert decode_request(bytes.fromhex(GOLDEN)) == OnchainRequest(0, 0, "gpt-4", (Message("user", "hi"),))


# endpoint 2 has a layout of its own (tests/test_typed_answers.py)
@given(provider=st.integers(0, 255), endpoint=st.integers(0, 255).filter(lambda e: e != 2), model=st.text(),
       messages=messages)
def test_byte_compatible_with_infernet_ml(
    provider: int, endpoint: int, model: str, messages: tuple[Message, ...]
) -> None:
    expected = infernet_ml_encode(provider, endpoint, model, messages)
    assert encode_request(provider, endpoint, model, messages) == expected


@given(provider=st.integers(0, 255), endpoint=st.integers(0, 1), model=st.text(), messages=messages)
def test_round_trip(provider: int, endpoint: int, model: str, messages: tuple[Message, ...]) -> None:
    decoded = decode_request(encode_request(provider, endpoint, model, messages))
    assert decoded == OnchainRequest(provider, endpoint, model, messages)


@pytest.mark.parametrize(
    "conversation",
    [
        (Message("user", "héllo wörld — ünïcödé 中文 العربية"),),
        (Message("user", "🎉🚀👩‍👩‍👧‍👦 emoji, with ZWJ sequences"),),
        (Message("user", ""),),
        (Message("", ""),),
        (),
        tuple(Message("user" if i % 2 else "assistant", f"turn {i} " * i) for i in range(200)),
        (Message("system", "x" * 100_000),),
    ],
    ids=["unicode", "emoji", "empty-content", "empty-role", "no-messages", "200-messages", "100k-content"],
)
def test_round_trip_examples(conversation: tuple[Message, ...]) -> None:
    decoded = decode_request(encode_request(0, 0, "gpt-4o", conversation))
    assert decoded.messages == conversation and decoded.model == "gpt-4o"


@pytest.mark.parametrize("prefix", ["", "0x", "0X"])
@pytest.mark.parametrize("case", [str.lower, str.upper])
def test_decode_hex_forms(prefix: str, case: Callable[[str], str]) -> None:
    assert decode_hex(prefix + case(GOLDEN)) == bytes.fromhex(GOLDEN)
    assert decode_hex(f"  {prefix}{GOLDEN}\n") == bytes.fromhex(GOLDEN)


@pytest.mark.parametrize("text", ["zz", "abc", "0x123", "0x0x00", "12 34 zz", "ÿÿ"])
def test_invalid_hex_is_invalid_job(text: str) -> None:
    with pytest.raises(InvalidJob, match="hex"):
        decode_hex(text)


def test_empty_hex_is_empty_bytes_and_not_a_request() -> None:
    assert decode_hex("") == b"" == decode_hex("0x")
    with pytest.raises(InvalidJob, match=r"abi\.encode"):
        decode_request(b"")


@pytest.mark.parametrize(
    "raw",
    [
        bytes(31),
        bytes(64),
        bytes.fromhex(GOLDEN)[:-32],  # truncated
        bytes.fromhex(GOLDEN[:-64] + "fffe".ljust(64, "0")),  # content not UTF-8
        bytes.fromhex("00" * 30 + "0101" + GOLDEN[64:]),  # provider id 257 in a uint8 slot
        bytes.fromhex(GOLDEN[: 64 * 2] + "00" * 28 + "ffffffff" + GOLDEN[64 * 3 :]),  # model offset past the end
        b"\xff" * 256,
    ],
    ids=["short", "zeros", "truncated", "not-utf8", "uint8-overflow", "bad-offset", "ones"],
)
def test_garbage_abi_is_invalid_job(raw: bytes) -> None:
    with pytest.raises(InvalidJob, match=r"abi\.encode|not what abi\.encode produces"):
        decode_request(raw)


@given(st.binary(max_size=600))
def test_arbitrary_bytes_never_crash(raw: bytes) -> None:
    try:
        decoded = decode_request(raw)
    except InvalidJob:
        return
    assert isinstance(decoded, OnchainRequest)


@given(st.data())
def test_corrupted_requests_never_crash(data: st.DataObject) -> None:
    raw = bytearray(bytes.fromhex(GOLDEN))
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    with contextlib.suppress(InvalidJob):
        decode_request(bytes(raw))


@given(st.text())
def test_encode_result_decodes_with_eth_abi(text: str) -> None:
    assert decode(["string"], encode_result(text)) == (text,)


@given(st.text(), st.binary(max_size=8))
def test_decode_result_reads_what_eth_abi_encodes(text: str, trailing: bytes) -> None:
    raw = encode(["string"], [text]) + trailing  # eth-abi ignores trailing bytes, and so do we
    assert decode_result(raw) == text == decode(["string"], raw)[0]


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        bytes(31),
        (64).to_bytes(32, "big") + bytes(32),
        (32).to_bytes(32, "big") + (5).to_bytes(32, "big") + b"hi",
        (32).to_bytes(32, "big") + (2).to_bytes(32, "big") + b"hi" + b"\x01" + bytes(29),
        (32).to_bytes(32, "big") + (1).to_bytes(32, "big") + b"\xff" + bytes(31),
    ],
    ids=["empty", "short", "offset-past-end", "length-past-end", "dirty-padding", "not-utf8"],
)
def test_decode_result_refuses_what_eth_abi_refuses(raw: bytes) -> None:
    with pytest.raises(ValueError, match=r"not abi\.encode"):
        decode_result(raw)
    with pytest.raises((DecodingError, UnicodeDecodeError)):
        decode(["string"], raw)


def test_encode_result_examples() -> None:
    assert encode_result("").hex() == "20".rjust(64, "0") + "0" * 64
    assert decode(["string"], encode_result("Hello 🎉")) == ("Hello 🎉",)


# -- differential: css_core.jobs.codec against eth-abi ------------------------------------------------------------

REQUEST_TYPES = ["uint8", "uint8", "string", "(string,string)[]"]
TYPED_REQUEST_TYPES = [*REQUEST_TYPES, "string"]  # endpoint 2's layout
DIFFERENTIAL = settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])

uint8 = st.integers(0, 255)
short_texts = st.text(max_size=70)  # up to 3 words of UTF-8: lengths around the 32-byte padding
long_texts = st.builds(str.__mul__, st.sampled_from("aé中🎉"), st.integers(0, 400))  # up to 1600 bytes
short_messages = st.lists(st.builds(Message, short_texts, short_texts | long_texts), max_size=4).map(tuple)


def eth_abi_encode(provider: int, endpoint: int, model: str, messages: tuple[Message, ...]) -> bytes:
    return encode(REQUEST_TYPES, [provider, endpoint, model, [(m.role, m.content) for m in messages]])


def eth_abi_decode(raw: bytes) -> OnchainRequest | None:
    """eth-abi's strict decode of `raw` as a request, or None where eth-abi refuses it.

    It refuses with a `DecodingError`, a `UnicodeDecodeError`, or an `OverflowError` (a string
    length too big for `BytesIO.read`); anything else escapes and fails the test. An endpoint
    word of 2 selects endpoint 2's layout, with the answer type.
    """
    typed = raw[32:64] == word(2)
    try:
        values = decode(TYPED_REQUEST_TYPES if typed else REQUEST_TYPES, raw)
    except (DecodingError, UnicodeDecodeError, OverflowError):
        return None
    provider, endpoint, model, pairs = values[:4]
    messages = tuple(Message(role, content) for role, content in pairs)
    return OnchainRequest(provider, endpoint, model, messages, values[4] if typed else None)


def string_bytes(request: OnchainRequest) -> int:
    """The UTF-8 bytes of all of a request's strings."""
    texts = [request.model, request.answer_type or ""]
    texts += [text for m in request.messages for text in (m.role, m.content)]
    return sum(len(text.encode()) for text in texts)


def assert_decodes_as_eth_abi(raw: bytes) -> None:
    """`decode_request` accepts `raw` exactly when eth-abi does, and then decodes the same values.

    The one intentional difference: eth-abi follows offsets that point at the same bytes again
    and again, so a few kB can decode to gigabytes; `decode_request` refuses data whose strings
    add up to more bytes than the data holds (which `abi.encode` never produces).
    """
    theirs = eth_abi_decode(raw)
    note(f"eth-abi: {theirs!r}")
    try:
        ours = decode_request(raw)
    except InvalidJob as exc:
        note(f"css_core: {exc.message}")
        if theirs is not None:  # only the size guard may refuse what eth-abi accepts
            event("eth-abi accepts, the size guard refuses")
            assert string_bytes(theirs) > len(raw), exc.message
            assert f"claim {string_bytes(theirs)} bytes of strings in {len(raw)} bytes" in exc.message
        else:
            event("both refuse")
        return
    event("both accept")
    assert ours == theirs


def word(value: int) -> bytes:
    return value.to_bytes(32, "big")


# A mutation of an encoding: (kind, position, value), applied to the bytes or 32-byte words.
WILD_WORDS = st.sampled_from([0, 1, 2, 31, 32, 33, 63, 64, 96, 127, 128, 160, 192, 224, 256, 2**63, 2**255, 2**256 - 1])
mutation = st.one_of(
    st.tuples(st.just("set byte"), st.integers(0, 10**4), st.integers(0, 255)),
    st.tuples(st.just("flip bit"), st.integers(0, 10**4), st.integers(0, 7)),
    st.tuples(st.just("truncate"), st.integers(0, 10**4), st.just(0)),
    st.tuples(st.just("append"), st.integers(1, 70), st.integers(0, 255)),
    st.tuples(st.just("set word"), st.integers(0, 10**4), WILD_WORDS | st.integers(0, 1000)),  # offsets, lengths
    st.tuples(st.just("add to word"), st.integers(0, 10**4), st.sampled_from([-64, -32, -1, 1, 32, 64])),
    st.tuples(st.just("copy word"), st.integers(0, 10**4), st.integers(0, 10**4)),  # aliased offsets
    st.tuples(st.just("alias a message"), st.integers(0, 3), st.integers(0, 3)),
)


def mutate(raw: bytes, mutations: list[tuple[str, int, int]]) -> bytes:
    data = bytearray(raw)
    for kind, position, value in mutations:
        words = max(len(data) // 32, 1)
        at = 32 * (position % words)
        if kind == "append":
            data += bytes([value]) * position
        elif not data:
            continue
        elif kind == "set byte":
            data[position % len(data)] = value
        elif kind == "flip bit":
            data[position % len(data)] ^= 1 << value
        elif kind == "truncate":
            del data[position % len(data) :]
        elif kind == "set word":
            data[at : at + 32] = word(value)
        elif kind == "add to word":
            data[at : at + 32] = word((int.from_bytes(data[at : at + 32], "big") + value) % 2**256)
        elif kind == "copy word":
            source = 32 * (value % words)
            data[at : at + 32] = data[source : source + 32]
        elif kind == "alias a message":  # message `value` made to point at message `position`'s pair
            items = int.from_bytes(data[96:128], "big") + 32  # as in a canonical head
            count = int.from_bytes(data[items - 32 : items], "big") if items <= len(data) else 0
            if 0 < count <= (len(data) - items) // 32:
                source, target = items + 32 * (position % count), items + 32 * (value % count)
                data[target : target + 32] = data[source : source + 32]
    return bytes(data)


def eth_abi_encode_typed(provider: int, model: str, messages: tuple[Message, ...], answer_type: str) -> bytes:
    return encode(TYPED_REQUEST_TYPES, [provider, 2, model, [(m.role, m.content) for m in messages], answer_type])


mutated_encodings = st.builds(
    mutate,
    st.builds(eth_abi_encode, uint8, uint8, short_texts, short_messages)
    | st.builds(eth_abi_encode_typed, uint8, short_texts, short_messages, short_texts),
    st.lists(mutation, min_size=1, max_size=4),
)


@DIFFERENTIAL
@given(mutated_encodings)
def test_mutated_encodings_decode_as_with_eth_abi(raw: bytes) -> None:
    assert_decodes_as_eth_abi(raw)


def soup(head: tuple[int, ...], words: list[int | bytes]) -> bytes:
    """Words as 32-byte words: numbers big-endian, text zero-padded on the right."""
    return b"".join(word(w) if isinstance(w, int) else w.ljust(32, b"\0") for w in (*head, *words))


# Random words of the kinds an encoding is made of (counts, lengths, offsets, text), after a
# head of two uint8s and two offsets past it: mostly refused, sometimes oddly valid.
word_soups = st.builds(
    soup,
    st.tuples(uint8, uint8, st.sampled_from(range(128, 384, 32)), st.sampled_from(range(128, 384, 32))),
    st.lists(
        st.integers(0, 3) | st.sampled_from(range(32, 320, 32)) | st.sampled_from([b"a", b"hi", b"\xc3\xa9", b"\xff"]),
        min_size=2,
        max_size=12,
    ),
)


@settings(DIFFERENTIAL, max_examples=500)
@given(st.binary(max_size=600) | word_soups)
def test_random_bytes_and_word_soups_decode_as_with_eth_abi(raw: bytes) -> None:
    assert_decodes_as_eth_abi(raw)


def golden_with(**words: int) -> bytes:
    """GOLDEN with some of its 32-byte words (w0, w1, ...) replaced."""
    data = bytearray.fromhex(GOLDEN)
    for name, value in words.items():
        at = 32 * int(name[1:])
        data[at : at + 32] = word(value)
    return bytes(data)


# The GOLDEN words: w0 provider, w1 endpoint, w2 model offset (128), w3 messages offset (192);
# w4 model length, w5 "gpt-4"; w6 count, w7 offset of pair 0 (from w7); pair 0 at w8: w8 role
# offset, w9 content offset (from w8); w10 role length, w11 "user", w12 content length, w13 "hi".
def swapped_tails() -> bytes:
    """The messages' tail first, then the model's: valid, not canonical."""
    messages = bytes.fromhex(GOLDEN)[192:]
    model = bytes.fromhex(GOLDEN)[128:192]
    return bytes.fromhex(GOLDEN)[:64] + word(128 + len(messages)) + word(128) + messages + model


def aliased_messages() -> bytes:
    """Three messages whose offsets all point at one (role, content) pair."""
    head = bytes.fromhex(GOLDEN)[:192]
    pair = bytes.fromhex(GOLDEN)[256:]
    return head + word(3) + word(96) * 3 + pair


def text_word(data: bytes) -> int:
    """A 32-byte word holding `data`, zero-padded on the right (a string's bytes)."""
    return int.from_bytes(data.ljust(32, b"\0"), "big")


HI = OnchainRequest(0, 0, "gpt-4", (Message("user", "hi"),))
# Valid but not what abi.encode produces: eth-abi follows offsets wherever they point, and
# ignores bytes it never reads.
NON_CANONICAL = {
    "one-trailing-byte": (bytes.fromhex(GOLDEN) + b"\x01", HI),
    "two-trailing-words": (bytes.fromhex(GOLDEN) + bytes(64), HI),
    "tails-swapped": (swapped_tails(), HI),
    "three-aliases-of-one-pair": (aliased_messages(), HI._replace(messages=HI.messages * 3)),
    "model-is-the-role's-bytes": (golden_with(w2=320), HI._replace(model="user")),
    "content-is-the-role's-bytes": (golden_with(w9=64), HI._replace(messages=(Message("user", "user"),))),
    "no-messages-then-unread-bytes": (golden_with(w6=0), HI._replace(messages=())),
}


@pytest.mark.parametrize(("raw", "expected"), NON_CANONICAL.values(), ids=NON_CANONICAL.keys())
def test_non_canonical_encodings_eth_abi_accepts(raw: bytes, expected: OnchainRequest) -> None:
    assert eth_abi_decode(raw) == expected
    assert decode_request(raw) == expected


# Refused by eth-abi, each for one reason; the fragment of our message that names it.
MALFORMED = {
    "too-short-for-the-head": (
        bytes.fromhex(GOLDEN)[:90],
        "it is 90 bytes long, too short for the 32-byte word at byte 64",
    ),
    "no-tail": (
        bytes.fromhex(GOLDEN)[:128],
        "the offset of the model (at byte 64) points to byte 128, past the end (128)",
    ),
    "one-byte-short": (bytes.fromhex(GOLDEN)[:-1], "a message's content claims 2 bytes at byte 416"),
    "provider-256": (golden_with(w0=256), "the provider id is 256"),
    "endpoint-2**255": (golden_with(w1=2**255), "the endpoint id is 5789"),
    "model-offset-into-the-head": (
        golden_with(w2=96),
        "the offset of the model (at byte 64) points to byte 96, inside the head it belongs to (bytes 0..128)",
    ),
    "messages-offset-at-the-end": (
        golden_with(w3=448),
        "the offset of the messages (at byte 96) points to byte 448, past",
    ),
    "messages-offset-2**256-1": (golden_with(w3=2**256 - 1), "the offset of the messages (at byte 96)"),
    "model-length-2**255": (golden_with(w4=2**255), "the model claims 5789"),
    "model-padding-past-the-end": (golden_with(w4=289), "the model claims 289 bytes at byte 160"),
    "model-text-in-its-padding": (golden_with(w4=4), "the padding after the model (bytes 164..192) is not zero"),
    "count-past-the-end": (golden_with(w6=8), "it claims 8 messages, but has room for only 7 offsets"),
    "count-2**64": (golden_with(w6=2**64), "it claims 18446744073709551616 messages"),
    "second-message-into-the-offsets": (golden_with(w6=2), "the offset of a message (at byte 224) points to byte 256"),
    "message-offset-0": (golden_with(w7=0), "the offset of a message (at byte 224) points to byte 224"),
    "role-offset-into-the-pair-head": (golden_with(w8=32), "the offset of a message's role (at byte 256)"),
    "content-offset-2**256-1": (golden_with(w9=2**256 - 1), "the offset of a message's content (at byte 288)"),
    "content-text-in-its-padding": (golden_with(w12=1), "the padding after a message's content"),
    "content-cut-mid-character": (golden_with(w13=text_word(b"h\xc3")), "bytes 416..418 is not UTF-8"),
    "role-a-surrogate": (golden_with(w10=3, w11=text_word(b"\xed\xa0\x80")), "bytes 352..355 is not UTF-8"),
}


@pytest.mark.parametrize("raw", [raw for raw, _why in MALFORMED.values()], ids=MALFORMED.keys())
def test_malformed_encodings_both_refuse(raw: bytes) -> None:
    assert eth_abi_decode(raw) is None
    with pytest.raises(InvalidJob, match=r"on-chain data is not abi\.encode\(uint8 provider"):
        decode_request(raw)


@example(copies=2, length=31)
@example(copies=100, length=4000)
@given(copies=st.integers(2, 100), length=st.integers(0, 5000))
@settings(max_examples=50)
def test_the_one_difference_strings_claiming_more_bytes_than_the_data(copies: int, length: int) -> None:
    """Messages aliasing one pair: eth-abi decodes each alias, however many bytes that adds up
    to; `decode_request` refuses exactly when the strings' total exceeds the data's length."""
    pair = word(64) + word(96) + word(0) + word(length) + b"a" * length + bytes(-length % 32)
    raw = bytes.fromhex(GOLDEN)[:192] + word(copies) + word(32 * copies) * copies + pair
    theirs = eth_abi_decode(raw)
    assert theirs == OnchainRequest(0, 0, "gpt-4", (Message("", "a" * length),) * copies)
    if 5 + copies * length > len(raw):
        with pytest.raises(InvalidJob, match=f"claim {5 + copies * length} bytes of strings in {len(raw)} bytes"):
            decode_request(raw)
    else:
        assert decode_request(raw) == theirs


@pytest.mark.parametrize("bad", [-1, 256, True])
def test_encode_request_refuses_what_is_not_a_uint8(bad: int) -> None:
    for ids in ((bad, 0), (0, bad)):
        with pytest.raises(EncodingError):
            encode_request(*ids, "m", ())


def test_encode_request_takes_int_enums_as_eth_abi_does() -> None:
    class Endpoint(enum.IntEnum):
        embeddings = 1

    raw = encode_request(7, Endpoint.embeddings, "m", ())
    assert raw == eth_abi_encode(7, Endpoint.embeddings, "m", ()) == encode_request(7, 1, "m", ())


@pytest.mark.parametrize(
    "encoder",
    [
        lambda text: encode_request(0, 0, text, ()),
        lambda text: encode_request(0, 0, "m", (Message("user", text),)),
        encode_result,
        lambda text: eth_abi_encode(0, 0, text, ()),
        lambda text: encode(["string"], [text]),
    ],
    ids=["model", "content", "result", "eth-abi-request", "eth-abi-result"],
)
def test_lone_surrogates_cannot_be_encoded_by_either(encoder: Callable[[str], bytes]) -> None:
    """UTF-8 cannot carry them: a UnicodeEncodeError from both codecs."""
    with pytest.raises(UnicodeEncodeError):
        encoder("\ud800")


def test_a_contract_reads_the_completion_from_the_nodes_output_in_two_steps() -> None:
    """The node delivers `output = abi.encode(bytes raw_output, bytes processed_output)`."""
    output = encode(["bytes", "bytes"], [encode_result("héllo"), b""])
    assert decode_callback_output(output) == "héllo"
    # a single `abi.decode(output, (string))` reads the inner encoding's padding, not the text
    assert decode(["string"], output)[0] != "héllo"
