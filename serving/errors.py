"""Serving errors. Each carries an HTTP status and an OpenAI-shaped body.

OpenAI's error body: {"error": {"message", "type", "param", "code"}}.
"""

from __future__ import annotations


class ServingError(Exception):
    status = 500
    type = "server_error"

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class ConfigError(ServingError):
    """Bad serving config (raised at start, printed as one line)."""


class BadRequest(ServingError):
    status = 400
    type = "invalid_request_error"


class Unauthorized(ServingError):
    status = 401
    type = "authentication_error"


class Forbidden(ServingError):
    status = 403
    type = "permission_error"


class NotFound(ServingError):
    status = 404
    type = "invalid_request_error"


class RateLimited(ServingError):
    status = 429
    type = "rate_limit_error"

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message, code="rate_limit_exceeded")
        self.retry_after_s = retry_after_s


class BudgetExceeded(RateLimited):
    """A key's daily token budget is spent (serving/gateway/budgets.py): 429 until the next UTC
    midnight. `headers` go out with the error (X-Should-Retry: the OpenAI SDK then does not retry)."""

    headers = {"X-Should-Retry": "false"}

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message, retry_after_s)
        self.code = "budget_exceeded"


class EngineUnavailable(ServingError):
    status = 503
    type = "server_error"


class AdapterRejected(ServingError):
    """A registry adapter that cannot be served (broken files, wrong base, rank too high)."""

    status = 422
    type = "invalid_request_error"


class Conflict(ServingError):
    """The change clashes with what exists (a name taken, a second rollout on one adapter)."""

    status = 409
    type = "invalid_request_error"


class StoreUnavailable(ServingError):
    """The control-plane database cannot be reached (its URL named without the password)."""

    status = 503
    type = "server_error"


class PayloadTooLarge(ServingError):
    status = 413
    type = "invalid_request_error"


class Overloaded(ServingError):
    """The gateway cannot take the request now (no upstream connection free in time): retry."""

    status = 503
    type = "server_error"

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message, code="overloaded")
        self.retry_after_s = retry_after_s
