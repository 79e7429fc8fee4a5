"""css-inference-service: an Infernet container serving closed-source LLM providers.

What a provider plugin needs is exported here: the `hookimpl` marker, the types its hooks
take and return, and the errors it may raise.
"""

from __future__ import annotations

__version__ = "0.1.0"

from css_core import openai_format
from css_core.config import Settings
from css_core.errors import ConfigError, InvalidJob, ProviderBadResponse, ProviderHTTPError, ProviderUnreachable
from css_core.hookspecs import hookimpl
from css_core.types import (
    JOB_FIELDS,
    RETRYABLE_STATUSES,
    CSSRequest,
    Message,
    PreparedCall,
    ProviderCall,
    ProviderSpec,
    Result,
    Usage,
)

__all__ = (
    "JOB_FIELDS",
    "RETRYABLE_STATUSES",
    "CSSRequest",
    "ConfigError",
    "InvalidJob",
    "Message",
    "PreparedCall",
    "ProviderBadResponse",
    "ProviderCall",
    "ProviderHTTPError",
    "ProviderSpec",
    "ProviderUnreachable",
    "Result",
    "Settings",
    "Usage",
    "__version__",
    "hookimpl",
    "openai_format",
)
