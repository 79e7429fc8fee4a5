"""`CSS_INF_WORKFLOW_KW_ARGS`: the operator's body defaults, scoped to a provider and to an endpoint.

A field outside any endpoint's object is a completions default: a chat option such as
`temperature` never reaches an embeddings endpoint, which refuses fields it does not know.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from css_core.config import load_settings
from css_core.errors import ConfigError
from css_core.testing import ProviderDouble
from tests.conftest import chat, job, post_job
from tests.helpers import requires_plugin

pytestmark = requires_plugin("css_openai")

EMBED = {"provider": "OPENAI", "endpoint": "embeddings", "model": "text-embedding-3-small",
         "params": {"endpoint": "embeddings", "input": "a sentence"}}


def _bodies(double: ProviderDouble, path: str) -> list[Any]:
    return [request.json for request in double.requests if request.path.split("?")[0].endswith(path)]


def test_the_readme_defaults_reach_completions_but_not_embeddings(
    double: ProviderDouble, service: Callable[..., str], http: httpx.Client
) -> None:
    url = service(CSS_INF_WORKFLOW_KW_ARGS=json.dumps({"temperature": 0.2, "ANTHROPIC": {"max_tokens": 512}}))
    assert post_job(http, url, job(chat())).status_code == 200
    embedded = post_job(http, url, job(EMBED))
    assert embedded.status_code == 200, embedded.text
    (completion,) = _bodies(double, "/chat/completions")
    (embedding,) = _bodies(double, "/embeddings")
    assert completion["temperature"] == 0.2
    assert embedding == {"model": "text-embedding-3-small", "input": "a sentence"}


def test_defaults_scoped_to_an_endpoint_and_to_a_provider_endpoint(
    double: ProviderDouble, service: Callable[..., str], http: httpx.Client
) -> None:
    defaults = {"temperature": 0.2, "embeddings": {"encoding_format": "float"},
                "OPENAI": {"embeddings": {"dimensions": 256}, "completions": {"max_tokens": 9}}}
    url = service(CSS_INF_WORKFLOW_KW_ARGS=json.dumps(defaults))
    assert post_job(http, url, job(chat())).status_code == 200
    assert post_job(http, url, job(EMBED)).status_code == 200
    (completion,) = _bodies(double, "/chat/completions")
    (embedding,) = _bodies(double, "/embeddings")
    assert (completion["temperature"], completion["max_tokens"]) == (0.2, 9)
    assert "encoding_format" not in completion and "dimensions" not in completion
    assert embedding == {"model": "text-embedding-3-small", "input": "a sentence", "encoding_format": "float",
                         "dimensions": 256}


def test_the_provider_scope_wins_and_the_job_wins_over_both() -> None:
    settings = load_settings({"CSS_INF_WORKFLOW_KW_ARGS": json.dumps(
        {"temperature": 0.2, "top_p": 1, "OPENAI": {"temperature": 0.7}})}, dotenv=None)
    assert settings.defaults_for("OPENAI") == {"temperature": 0.7, "top_p": 1}
    assert settings.defaults_for("openai", "embeddings") == {}
    assert settings.defaults_for("GEMINI") == {"temperature": 0.2, "top_p": 1}


@pytest.mark.parametrize("value", ['{"embeddings": 3}', '{"OPENAI": {"completions": [1]}}', '{"OPENAI": 1}'])
def test_a_scope_that_is_not_an_object_stops_start_up(value: str) -> None:
    with pytest.raises(ConfigError, match="CSS_INF_WORKFLOW_KW_ARGS"):
        load_settings({"CSS_INF_WORKFLOW_KW_ARGS": value}, dotenv=None)
