"""`Acme`: an OpenAI-compatible provider at the double, as a third party writes one, for the
plugin API's tests (`ACME_BASE_URL={double}/acme`), and the fixture that serves it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy
import pytest

from css_core.providers import openai_format
from css_core.providers.hookspecs import hookimpl
from css_core.providers.registry import PluginInfo
from css_core.testing import ProviderDouble
from css_core.types import CSSRequest, ProviderCall, ProviderSpec, Result
from tests.conftest import KEY, chat, job, service_env

__all__ = ("Acme", "acme_env", "acme_job", "serve_acme")


class Acme:
    """An OpenAI-compatible provider at the double, as a third party writes one."""

    def __init__(self, name: str = "ACME", onchain_id: int = 70, **fields: Any) -> None:
        self.spec = ProviderSpec(name=name, onchain_id=onchain_id, api_key_env=f"{name}_API_KEY",
                                 default_base_url=f"http://{name.lower()}.invalid", **fields)

    @hookimpl
    def css_provider(self) -> ProviderSpec:
        return self.spec

    @hookimpl
    def css_encode_params(self, request: CSSRequest) -> ProviderCall | None:
        return openai_format.chat_call(request)

    @hookimpl
    def css_postprocess(self, body: bytes) -> Result | None:
        return openai_format.chat_result(body)


def acme_env(double: ProviderDouble, **overrides: str | None) -> dict[str, str]:
    return {"ACME_API_KEY": KEY, "ACME_BASE_URL": f"{double.url}/acme", **service_env(double, **overrides)}


@pytest.fixture
def serve_acme(double: ProviderDouble, serve: Callable[..., str], pm: pluggy.PluginManager) -> Callable[..., str]:
    """`serve_acme(infos=None, **env_overrides) -> url`: the plugins registered on `pm` now, served
    with ACME's key and base URL at the double."""

    def start(infos: dict[str, PluginInfo] | None = None, **overrides: str | None) -> str:
        return serve(acme_env(double, **overrides), plugins=(pm, infos or {}, []))

    return start


def acme_job(content: str = "hi", **fields: Any) -> dict[str, Any]:
    return job(chat(content, provider="ACME", **fields))
