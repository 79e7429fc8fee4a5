"""The service's errors, each mapped to one HTTP status in one place (`app.py`'s exception handlers).

Every error carries a message the caller can act on; none ever contains an API key.

    CSSError (500)
    ├── BadRequest (400): the job itself is wrong
    │   ├── ProofsNotSupported
    │   ├── InvalidJob: malformed envelope, data or request object
    │   ├── ProviderNotAvailable: no plugin for it, or it is not served here
    │   │   └── ProviderNotServed: its plugin is installed, its key is not set
    │   └── ProviderRejected: the provider refused the request (its 4xx, not retried)
    ├── Unauthorized (401): missing or wrong bearer token
    ├── PayloadTooLarge (413)
    ├── UnsupportedMediaType (415): the body is not sent as `application/json`
    ├── OverBudget (429): a budget covering the job is spent for this window (`Retry-After`)
    ├── PluginFailed (500): a plugin's own code raised (a bug in the plugin, not retried)
    ├── ServiceBusy (503): too many calls in flight to one provider (`Retry-After`)
    ├── StoreUnavailable (503): the budget store cannot be reached (`Retry-After`)
    ├── NotReady (503): this worker should not be sent jobs now (`GET /ready`)
    └── ProviderFailed (502): the provider failed after every attempt
        └── ProviderTimeout (504): the job deadline passed

    ConfigError: the environment or the installed plugins are wrong; stops start-up.

Inside one provider attempt, plugins and the core's own call raise these; the job pipeline
decides from them whether to retry, and turns what is left into the errors above:

    ProviderHTTPError: a non-2xx answer (`retryable`, `key_refused`, `retry_after`)
    ProviderBadResponse: an unreadable answer, or one without a result (`retryable`)
    ProviderUnreachable: no connection, a dropped one, a read timeout

Inside the relay of a stream whose answer has started, a signal, never an answer:

    StreamCut: the provider's stream ended early; the relay raises it so that the server
        aborts the response (the node sees a failed stream, not a short success)
"""

from __future__ import annotations

__all__ = (
    "BadRequest",
    "CSSError",
    "ConfigError",
    "InvalidJob",
    "NotReady",
    "OverBudget",
    "PayloadTooLarge",
    "PluginFailed",
    "ProofsNotSupported",
    "ProviderBadResponse",
    "ProviderFailed",
    "ProviderHTTPError",
    "ProviderNotAvailable",
    "ProviderNotServed",
    "ProviderRejected",
    "ProviderTimeout",
    "ProviderUnreachable",
    "ServiceBusy",
    "StoreUnavailable",
    "StreamCut",
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


class ProviderNotServed(ProviderNotAvailable):
    pass


class ProviderRejected(BadRequest):
    pass


class Unauthorized(CSSError):
    status = 401


class PayloadTooLarge(CSSError):
    status = 413


class UnsupportedMediaType(CSSError):
    status = 415


class OverBudget(CSSError):
    status = 429

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.headers = {"Retry-After": str(retry_after)}


class PluginFailed(CSSError):
    status = 500


class ServiceBusy(CSSError):
    status = 503

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.headers = {"Retry-After": str(retry_after)}


class StoreUnavailable(ServiceBusy):
    def __init__(self, store: str, reason: str) -> None:
        super().__init__(f"{store} cannot be reached ({reason}); jobs under a budget (CSS_BUDGETS) are refused "
                         "until it answers", retry_after=5)


class NotReady(CSSError):
    status = 503


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
    event in a stream), or holds no deliverable result (no choices, no text).

    The attempt is retried, unless `retryable` is false: an answer that another try would
    not change (a refusal, a content filter, a length stop, a tool call) is not retried, so
    it does not cost more billable calls. The message names the provider's reason.
    """

    def __init__(self, message: str = "", *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class ProviderUnreachable(Exception):
    """One attempt got no answer: no connection, a dropped one, or a read timeout.

    The message names the cause, and never holds a key.
    """


class StreamCut(Exception):
    """A stream was cut after its answer started (a dropped connection, an unreadable event, the
    deadline). The relay raises it, from the cause, for the server to abort the response; the
    cut is logged once where it is seen, so the server's own report of it is left out
    (`css_core.operations.logs`)."""
