"""The exception tree of goodrepo, with the HTTP mapping in one place.

Every error a client can see is a :class:`GoodrepoError` subclass with a stable ``code``
(see the API reference) and an HTTP ``status``. The core app renders them all through one
function; anything else is logged with its traceback and answered as ``INTERNAL_ERROR``.
"""

from __future__ import annotations

from typing import Any


class GoodrepoError(Exception):
    """Raised for any failure that has a stable, client-visible error code."""

    status = 500
    code = "INTERNAL_ERROR"
    default_message = "internal error"

    def __init__(
        self,
        message: str | None = None,
        *,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.message = message or self.default_message
        self.details = details
        self.headers = headers or {}
        super().__init__(self.message)

    def to_dict(self) -> dict[str, Any]:
        """The ``error`` object of the JSON error shape (without the request id)."""
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            body["details"] = self.details
        return body


class InvalidRequest(GoodrepoError):
    """Raised when a request is malformed (bad JSON, bad query parameter)."""

    status = 400
    code = "INVALID_REQUEST"
    default_message = "invalid request"


class ValidationError(GoodrepoError):
    """Raised when an identifier or a document fails the schema's validation rules."""

    status = 400
    code = "VALIDATION_ERROR"
    default_message = "validation failed"


class DigestMismatch(GoodrepoError):
    """Raised when uploaded bytes do not match the digest the client announced."""

    status = 400
    code = "DIGEST_MISMATCH"
    default_message = "the uploaded bytes do not match the announced digest"


class Unauthorized(GoodrepoError):
    """Raised when a request carries no valid credentials."""

    status = 401
    code = "UNAUTHORIZED"
    default_message = "authentication required"

    def __init__(self, message: str | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.headers.setdefault("WWW-Authenticate", "Bearer")


class Forbidden(GoodrepoError):
    """Raised when valid credentials lack the scope an operation needs."""

    status = 403
    code = "FORBIDDEN"
    default_message = "insufficient scope"


class NotFound(GoodrepoError):
    """Raised when the requested resource does not exist."""

    status = 404
    code = "NOT_FOUND"
    default_message = "not found"


class MethodNotAllowed(GoodrepoError):
    """Raised when a path exists but not for the request's method."""

    status = 405
    code = "METHOD_NOT_ALLOWED"
    default_message = "method not allowed"


class Conflict(GoodrepoError):
    """Raised when a write conflicts with the stored state."""

    status = 409
    code = "CONFLICT"
    default_message = "conflict"


class AlreadyExists(Conflict):
    """Raised when publishing coordinates that already exist."""

    code = "ALREADY_EXISTS"
    default_message = "already exists"


class PreconditionFailed(GoodrepoError):
    """Raised when an ``If-Match``/``If-None-Match`` precondition does not hold."""

    status = 412
    code = "PRECONDITION_FAILED"
    default_message = "precondition failed"


class LengthRequired(GoodrepoError):
    """Raised when an upload has neither a Content-Length nor a terminated body stream."""

    status = 411
    code = "LENGTH_REQUIRED"
    default_message = "uploads need a Content-Length header or chunked transfer encoding"


class PayloadTooLarge(GoodrepoError):
    """Raised when a request body exceeds a configured limit."""

    status = 413
    code = "PAYLOAD_TOO_LARGE"
    default_message = "request body too large"


class BlobTooLarge(PayloadTooLarge):
    """Raised when an uploaded blob exceeds the blob store's ``max_blob_bytes``."""

    code = "BLOB_TOO_LARGE"
    default_message = "blob exceeds the store's size limit"


class RangeNotSatisfiable(GoodrepoError):
    """Raised when a ``Range`` lies wholly past the end of a blob."""

    status = 416
    code = "RANGE_NOT_SATISFIABLE"
    default_message = "range not satisfiable"


class InvalidConfig(GoodrepoError):
    """Raised when a schema fails load-time validation; ``problems`` lists every problem."""

    status = 422
    code = "INVALID_CONFIG"
    default_message = "invalid configuration"

    def __init__(self, problems: list[dict[str, str]], message: str | None = None) -> None:
        self.problems = problems
        text = message or f"schema rejected with {len(problems)} problem(s)"
        super().__init__(text, details={"problems": problems})

    def __str__(self) -> str:
        lines = [self.message]
        lines += [f"  {p['path']}: {p['message']}" for p in self.problems]
        return "\n".join(lines)


class StoreError(GoodrepoError):
    """Raised when the KV store or the blob store fails underneath an operation."""

    status = 500
    code = "STORE_ERROR"
    default_message = "storage failure"


class ConfigurationError(ValueError):
    """Raised at start-up when a setting is unknown, malformed or contradictory."""


class InvalidCredentials(Unauthorized):
    """Raised when a login fails: unknown user, wrong password or disabled account alike."""

    code = "INVALID_CREDENTIALS"
    default_message = "invalid username or password"


class PasswordPolicyError(ValidationError):
    """Raised when a new password breaks the password policy; ``reasons`` lists every one."""

    code = "PASSWORD_POLICY"
    default_message = "password rejected by the password policy"

    def __init__(self, reasons: list[str], message: str | None = None) -> None:
        self.reasons = list(reasons)
        text = message or "password rejected: " + "; ".join(self.reasons)
        super().__init__(text, details={"reasons": self.reasons})


class UserExists(Conflict):
    """Raised when creating a user whose (normalised) name is already taken."""

    code = "USER_EXISTS"
    default_message = "a user with this name already exists"


class RateLimited(GoodrepoError):
    """Raised when a client exceeds a rate limit; ``retry_after`` is in whole seconds."""

    status = 429
    code = "RATE_LIMITED"
    default_message = "too many requests"

    def __init__(self, retry_after: float, message: str | None = None) -> None:
        self.retry_after = max(1, int(-(-retry_after // 1)))  # whole seconds, rounded up
        super().__init__(
            message,
            details={"retry_after": self.retry_after},
            headers={"Retry-After": str(self.retry_after)},
        )


def _simple_classes() -> dict[tuple[str, int], type[GoodrepoError]]:
    """Error classes constructed as ``cls(message, details=...)``, by (code, status)."""
    found: dict[tuple[str, int], type[GoodrepoError]] = {}
    stack: list[type[GoodrepoError]] = [GoodrepoError]
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        if cls.__init__ in (GoodrepoError.__init__, Unauthorized.__init__):
            found.setdefault((cls.code, cls.status), cls)
    return found


def error_for(code: str, status: int, message: str, details: dict | None = None) -> GoodrepoError:
    """Build the error a schema's ``respond.error`` declares: the class of that code and
    status when there is one (so ``except NotFound`` works), else a generic error."""
    cls = _simple_classes().get((code, status))
    if cls is not None:
        return cls(message, details=details)
    err = GoodrepoError(message, details=details)
    err.code = code
    err.status = status
    return err
