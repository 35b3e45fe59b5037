"""The error hierarchy shared by every layer.

Each class carries a stable ``error_type`` label (also the metrics label of
``request_failure_total``) and the one HTTP status the server answers with.
``param`` names the offending request field when there is one.
"""

from __future__ import annotations


class ServeWiseError(Exception):
    """Base class: anything ServeWise raises on purpose."""

    error_type: str = "internal_error"
    http_status: int = 500
    # OpenAI's top-level `type` in the error body.
    openai_type: str = "internal_server_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


class InvalidRequestError(ServeWiseError):
    """A request parameter is missing, malformed or out of bounds."""

    error_type = "invalid_request"
    http_status = 400
    openai_type = "invalid_request_error"


class ContextLengthError(InvalidRequestError):
    """The prompt (plus max_tokens) does not fit the model's context."""

    error_type = "context_length_exceeded"


class ModelNotFoundError(ServeWiseError):
    error_type = "model_not_found"
    http_status = 404
    openai_type = "invalid_request_error"


class PayloadTooLargeError(ServeWiseError):
    error_type = "payload_too_large"
    http_status = 413
    openai_type = "invalid_request_error"


class AuthenticationError(ServeWiseError):
    error_type = "authentication_error"
    http_status = 401
    openai_type = "authentication_error"


class PermissionDeniedError(ServeWiseError):
    error_type = "permission_denied"
    http_status = 403
    openai_type = "permission_error"


class RateLimitError(ServeWiseError):
    """A tenant exceeded one of its limits; ``retry_after_s`` says when to come back."""

    error_type = "rate_limited"
    http_status = 429
    openai_type = "rate_limit_error"

    def __init__(self, message: str, *, retry_after_s: float, limit: str, **kw: str | None) -> None:
        super().__init__(message, **kw)
        self.retry_after_s = retry_after_s
        self.limit = limit


class OverloadedError(ServeWiseError):
    """Admission control shed the request: its SLO would not be met."""

    error_type = "overloaded"
    http_status = 429
    openai_type = "overloaded_error"

    def __init__(self, message: str, *, retry_after_s: float, reason: str, **kw: str | None) -> None:
        super().__init__(message, **kw)
        self.retry_after_s = retry_after_s
        self.reason = reason


class ServiceUnavailableError(ServeWiseError):
    """The server is starting, draining or its engine is dead."""

    error_type = "service_unavailable"
    http_status = 503
    openai_type = "service_unavailable"

    def __init__(self, message: str, *, retry_after_s: float | None = None, **kw: str | None) -> None:
        super().__init__(message, **kw)
        self.retry_after_s = retry_after_s


class EngineError(ServeWiseError):
    """A failure inside the engine while serving one request."""

    error_type = "engine_error"
    http_status = 500
    openai_type = "internal_server_error"


class ModelLoadError(ServeWiseError):
    """A model file or directory cannot be loaded; the message names the file and the problem."""

    error_type = "model_load_error"
    http_status = 500

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"cannot load model from {path}: {problem}")
        self.path = path
        self.problem = problem


class ReplicaLostError(ServiceUnavailableError):
    """A fleet's engine replica died or became unreachable while serving the request."""

    error_type = "replica_lost"
