"""Decoding a `POST /service_output` body into one `CSSRequest`, validated once, here."""

from __future__ import annotations

import msgspec

from css_core.config import Settings
from css_core.errors import InvalidJob, ProofsNotSupported
from css_core.jobs import codec
from css_core.jobs.answer_type import AnswerType
from css_core.jobs.messages import JobInput, JobLocation, OffchainRequest
from css_core.operations.record import JobRecord
from css_core.providers.registry import Registry
from css_core.types import CSSRequest

__all__ = ("Job", "decode_job")

_job_decoder = msgspec.json.Decoder(JobInput)
_request_decoder = msgspec.json.Decoder(OffchainRequest)
_hex_decoder = msgspec.json.Decoder(str)
# what msgspec raises for bodies that are not JSON, deeply nested, or not UTF-8
_UNDECODABLE = (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, RecursionError)


class Job:
    """One job on its way through the pipeline: what it asks, where its answer goes, its
    deadline and its record (what operations see of it). `answer_type` is the type of a typed
    answer (`None`: the answer is the completion's text or the embedding)."""

    __slots__ = ("answer_type", "deadline_at", "destination", "raw_input", "record", "request")

    def __init__(self, request: CSSRequest, destination: JobLocation, raw_input: str, record: JobRecord,
                 answer_type: AnswerType | None = None) -> None:
        self.request = request
        self.destination = destination
        self.raw_input = raw_input  # the on-chain input as bare hex, "" for an off-chain source
        self.record = record
        self.answer_type = answer_type
        self.deadline_at = 0.0  # the event loop's time when the job's deadline passes (set when it starts)


def _location(value: int, field: str, allowed: tuple[JobLocation, ...]) -> JobLocation:
    if value not in allowed:
        choices = ", ".join(f"{loc.value} ({loc.name.lower()})" for loc in allowed)
        raise InvalidJob(f"`{field}` must be one of {choices}, got {value}")
    return JobLocation(value)


def _invalid(where: str, exc: Exception) -> InvalidJob:
    return InvalidJob(f"{where}: {exc}")


def decode_job(body: bytes, registry: Registry, settings: Settings, record: JobRecord) -> Job:
    """Validate a job body; every problem is an `InvalidJob` that says what is wrong."""
    try:
        job = _job_decoder.decode(body)
    except _UNDECODABLE as exc:
        raise _invalid("invalid job body (expected {source, destination, data, requires_proof})", exc) from None
    if job.requires_proof:
        raise ProofsNotSupported()
    source = _location(job.source, "source", (JobLocation.ONCHAIN, JobLocation.OFFCHAIN))
    destination = _location(job.destination, "destination", tuple(JobLocation))
    stream = destination is JobLocation.STREAM

    if source is JobLocation.OFFCHAIN:
        try:
            data = _request_decoder.decode(job.data)
        except _UNDECODABLE as exc:
            raise _invalid("invalid off-chain request in `data`", exc) from None
        params = data.params
        answer_text = params.answer_type
        request = CSSRequest(
            provider=data.provider or settings.default_provider,
            endpoint=data.endpoint or params.endpoint or settings.default_endpoint,
            model=data.model,
            messages=tuple(params.messages or ()),
            input=params.input,
            stream=stream,
            extra_args=data.extra_args or {},
        )
        raw_input = ""
    else:
        try:
            hex_data = _hex_decoder.decode(job.data)
        except _UNDECODABLE:
            raise InvalidJob("on-chain `data` must be a hex string") from None
        raw = codec.decode_hex(hex_data)
        onchain = codec.decode_request(raw)
        endpoint = codec.ENDPOINT_IDS.get(onchain.endpoint_id)
        if endpoint is None:
            raise InvalidJob(f"unknown on-chain endpoint id {onchain.endpoint_id} "
                             "(0: completions, 1: embeddings, 2: completions with a typed answer)")
        answer_text = onchain.answer_type
        request = CSSRequest(
            provider=registry.by_onchain_id(onchain.provider_id).spec.name,
            endpoint=endpoint,
            model=onchain.model,
            messages=onchain.messages,
            stream=stream,
        )
        raw_input = raw.hex()

    _check(request, source, destination, settings)
    if answer_text is None:
        return Job(request, destination, raw_input, record)
    answer_type = _typed(request, answer_text)
    request = msgspec.structs.replace(request, answer_schema=answer_type.json_schema())
    return Job(request, destination, raw_input, record, answer_type)


def _typed(request: CSSRequest, text: str) -> AnswerType:
    """The answer type of a typed job, which must be a completion that is not streamed."""
    if request.endpoint != "completions":
        raise InvalidJob(f"only completions can have a typed answer (`answer_type`), not {request.endpoint!r}")
    if request.stream:
        raise InvalidJob("a typed answer cannot be streamed: send it with destination 0 (on-chain) or 1 (off-chain)")
    return AnswerType.parse(text)


def _check(request: CSSRequest, source: JobLocation, destination: JobLocation, settings: Settings) -> None:
    if not request.model.strip():
        raise InvalidJob("`model` must not be empty")
    if len(request.messages) > settings.max_messages:
        count, most = len(request.messages), settings.max_messages
        raise InvalidJob(f"too many messages: {count} (this service takes at most {most}, CSS_MAX_MESSAGES)")
    # a NUL character is never meaningful in a prompt and some providers fail on it
    if "\x00" in request.model or any("\x00" in m.role or "\x00" in m.content for m in request.messages):
        raise InvalidJob("NUL characters are not allowed in the model name or the messages")
    if request.endpoint == "embeddings":
        if source is JobLocation.ONCHAIN or destination is not JobLocation.OFFCHAIN:
            raise InvalidJob(
                "embeddings can only be requested off-chain and delivered off-chain "
                "(an embedding is not a string a contract callback or a text stream can carry)"
            )
        if request.input is None:
            raise InvalidJob('embeddings need `params.input`, e.g. {"input": "text to embed"}')
    elif request.endpoint == "completions" and not request.messages:
        example = '[{"role": "user", "content": "hi"}]'
        raise InvalidJob(f"completions need at least one message in `params.messages`, e.g. {example}")
