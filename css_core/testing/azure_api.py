"""Azure OpenAI's API, as routes for a `ProviderDouble`::

    ProviderDouble(key, routes=azure_routes, auth_header="api-key", auth_scheme=None, error_body=azure_error)

`POST .../openai/deployments/{deployment}/chat/completions?api-version=V` and
`.../embeddings?api-version=V` answer as OpenAI's routes do (`openai_api`), for the
deployment named in the path, with what Azure adds: `prompt_filter_results` and each
choice's `content_filter_results`; a stream starts with a chunk that has no choices, only
the prompt's filter results. A call without `api-version` is answered 404, as Azure
answers a version it does not know. Errors are `{"error": {"code", "message"}}`; a prompt
the content filter refuses is a 400 with `"code": "content_filter"` (`azure_content_filter`).
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any

from css_core.testing.openai_api import _chat, _embeddings, phrase
from css_core.testing.routes import RecordedRequest, Reject, Replies, Route
from css_core.testing.sse import Stream

__all__ = ("azure_content_filter", "azure_error", "azure_routes")

_DEPLOYMENT = r"/openai/deployments/(?P<deployment>[^/]+)"
_MESSAGES = {  # Azure's own words for the statuses tests use most
    401: "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key "
         "for an active subscription and use a correct regional API endpoint for your resource.",
    404: "Resource not found",
    429: "Requests to the ChatCompletions_Create Operation under Azure OpenAI API version 2024-10-21 have "
         "exceeded token rate limit of your current OpenAI S0 pricing tier. Please retry after 1 second.",
}
_CATEGORIES = ("hate", "self_harm", "sexual", "violence")


def azure_error(status: int, message: str | None = None, *, code: str | None = None) -> dict[str, Any]:
    """Azure's error body: `{"error": {"code", "message"}}`, the code the status's digits
    unless `code` names one (e.g. `DeploymentNotFound`)."""
    return {"error": {"code": code or str(status), "message": message or _MESSAGES.get(status, phrase(status))}}


def _filter_results(filtered: tuple[str, ...] = ()) -> dict[str, Any]:
    return {name: {"filtered": name in filtered, "severity": "high" if name in filtered else "safe"}
            for name in _CATEGORIES}


def azure_content_filter(*categories: str) -> dict[str, Any]:
    """The 400 body of a prompt Azure's content filter refuses: `"code": "content_filter"`,
    with `categories` (by default `hate`) filtered at severity `high` in `innererror`."""
    flagged = categories or ("hate",)
    body = azure_error(400, "The response was filtered due to the prompt triggering Azure OpenAI's content "
                       "management policy. Please modify your prompt and retry.", code="content_filter")
    body["error"].update(param="prompt", status=400, innererror={
        "code": "ResponsibleAIPolicyViolation", "content_filter_result": _filter_results(flagged)})
    return body


def azure_routes(double: Replies) -> list[Route]:
    """Chat completions and embeddings of any deployment, answered by `double`."""
    return [
        Route("POST", _DEPLOYMENT + r"/chat/completions", partial(_answer, _chat, double)),
        Route("POST", _DEPLOYMENT + r"/embeddings", partial(_answer, _embeddings, double)),
    ]


def _answer(openai: Any, double: Replies, request: RecordedRequest) -> Any:
    if not request.query.get("api-version"):
        raise Reject(404)
    if not isinstance(request.json, dict):
        raise Reject(400, "We could not parse the JSON body of your request.")
    # the deployment decides the model, whatever the body's `model` says
    answer = openai(double, dataclasses.replace(request, json={**request.json, "model": request.params["deployment"]}))
    prompt = [{"prompt_index": 0, "content_filter_results": _filter_results()}]
    if isinstance(answer, Stream):
        first = {"id": "", "object": "", "created": 0, "model": "", "prompt_filter_results": prompt, "choices": []}
        for chunk in answer.events:
            for choice in chunk["choices"]:
                choice["content_filter_results"] = _filter_results()
        return dataclasses.replace(answer, events=[first, *answer.events])
    if "choices" in answer:
        answer["prompt_filter_results"] = prompt
        for choice in answer["choices"]:
            choice["content_filter_results"] = _filter_results()
    return answer
