"""The service's errors, each mapped to one HTTP status in one place (`app.py`'s exception handlers).

Every error carries a message the caller can act on; none ever contains an API key.

    CSSError (500)
    ├── BadRequest (400): the job itself is wrong
    │   ├── ProofsNotSupported
    │   ├── InvalidJob: malformed envelope, data or request object
    │   ├── ProviderNotAvailable: no plugin for it, or its key is not set
    │   └── ProviderRejected: the provider refused the request (its 4xx, not retried)
    ├── Unauthorized (401): missing or wrong bearer token
    ├── PayloadTooLarge (413)
    ├── UnsupportedMediaType (415): the body is not sent as `application/json`
    ├── PluginFailed (500): a plugin's own code raised (a bug in the plugin, not retried)
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
    "PluginFailed",
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
    "UnsupportedMediaType",
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


class UnsupportedMediaType(CSSError):
    status = 415


class PluginFailed(CSSError):
    status = 500


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

    `message` is the provider's own words; `retry_after` its retry hint in seconds. The
    provider's plugin may decide (`css_read_error`) whether the status is `retryable` and
    whether it means the service's key was refused (`key_refused`); `None` leaves it to the
    provider's `retryable_statuses` and to 401/403.
    """

    def __init__(
        self,
        status: int,
        message: str,
        retry_after: float | None = None,
        *,
        retryable: bool | None = None,
        key_refused: bool | None = None,
    ) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message
        self.retry_after = retry_after
        self.retryable = retryable
        self.key_refused = key_refused


class ProviderBadResponse(Exception):
    """The provider's answer could not be read (not JSON, not the expected shape, an error
    event in a stream): the attempt is retried."""


class ProviderUnreachable(Exception):
    """One attempt got no answer: no connection, a dropped one, or a read timeout.

    The message names the cause, and never holds a key.
    """
