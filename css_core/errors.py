"""The service's errors, each mapped to one HTTP status in one place (`service_output.error_response`).

Every error carries a message the caller can act on; none ever contains an API key.

    CSSError (500)
    ├── BadRequest (400): the job itself is wrong
    │   ├── ProofsNotSupported
    │   ├── InvalidJob: malformed envelope, data or request object
    │   ├── ProviderNotAvailable: no plugin for it, or its key is not set
    │   └── ProviderRejected: the provider refused the request (its 4xx, not retried)
    ├── Unauthorized (401): missing or wrong bearer token
    ├── PayloadTooLarge (413)
    ├── ServiceBusy (503): too many calls in flight to one provider
    └── ProviderFailed (502): the provider failed after every attempt
        └── ProviderTimeout (504): the job deadline passed

    ConfigError: the environment or the installed plugins are wrong; stops start-up.

Inside one provider attempt, plugins and the core's own call raise `ProviderHTTPError`
(non-2xx answer), `ProviderBadResponse` (an answer that cannot be read) or
`ProviderUnreachable` (no connection, a dropped one, a read timeout); the workflow decides
from them whether to retry, and turns what is left into the errors above.
"""

from __future__ import annotations

__all__ = (
    "BadRequest",
    "CSSError",
    "ConfigError",
    "InvalidJob",
    "PayloadTooLarge",
    "ProofsNotSupported",
    "ProviderBadResponse",
    "ProviderFailed",
    "ProviderHTTPError",
    "ProviderNotAvailable",
    "ProviderRejected",
    "ProviderTimeout",
    "ProviderUnreachable",
    "ServiceBusy",
    "Unauthorized",
)


class CSSError(Exception):
    """Base of every error a job can end with; `status` is its HTTP status."""

    status: int = 500
    headers: dict[str, str] | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(CSSError):
    status = 400


class ProofsNotSupported(BadRequest):
    def __init__(self) -> None:
        super().__init__("Proofs are not supported for CSS Inference")


class InvalidJob(BadRequest):
    pass


class ProviderNotAvailable(BadRequest):
    pass


class ProviderRejected(BadRequest):
    pass


class Unauthorized(CSSError):
    status = 401


class PayloadTooLarge(CSSError):
    status = 413


class ServiceBusy(CSSError):
    status = 503

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.headers = {"Retry-After": str(retry_after)}


class ProviderFailed(CSSError):
    status = 502


class ProviderTimeout(ProviderFailed):
    status = 504


class ConfigError(Exception):
    """A variable or an installed plugin is wrong; the message names which and why."""


class ProviderHTTPError(Exception):
    """The provider answered one attempt with a non-2xx status.

    Raised by `css_call` / `css_call_stream` implementations. `retry_after` is the
    provider's `Retry-After` in seconds, when it sent one.
    """

    def __init__(self, status: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message
        self.retry_after = retry_after


class ProviderBadResponse(Exception):
    """The provider's answer could not be read (not JSON, or not the expected shape)."""


class ProviderUnreachable(Exception):
    """One attempt got no answer: no connection, a dropped one, or a read timeout.

    Raised by the core's own call; an `httpx.TransportError` from a plugin's call becomes
    one. The message names the cause, and never holds a key.
    """
