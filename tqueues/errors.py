"""The one exception tree of tqueues.

Every error tqueues raises on purpose derives from :class:`TQueuesError`. Each class's
docstring is its default message; ``status`` is the HTTP status the dispatcher answers with
and ``code`` the stable machine-readable name in ``{"error": {"code", "message"}}``.
"""

from __future__ import annotations

from typing import Any


class TQueuesError(Exception):
    """tqueues failed."""

    status: int = 500
    code: str = "internal"

    def __init__(self, message: str | None = None, **details: Any) -> None:
        self.message = message or (self.__doc__ or "").strip()
        self.details = details
        super().__init__(self.message)

    def to_json(self) -> dict[str, Any]:
        """The error as the dispatcher's JSON error body."""
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            body.update(self.details)
        return {"error": body}


class InvalidRequest(TQueuesError):
    """The request is malformed."""

    status = 400
    code = "invalid_request"


class NotFound(TQueuesError):
    """No such object."""

    status = 404
    code = "not_found"


class JobNotFound(NotFound):
    """No job has this id."""

    code = "job_not_found"


class NoJobAvailable(NotFound):
    """No job is available in this queue right now; retry later."""

    code = "no_job_available"


class MethodNotRegistered(TQueuesError):
    """This queue is strict: no worker serving it has registered that method."""

    status = 422
    code = "method_not_registered"


class Unauthorized(TQueuesError):
    """Authentication required: send a valid token as 'Authorization: Bearer <token>'."""

    status = 401
    code = "unauthorized"


class Forbidden(TQueuesError):
    """This token does not allow that."""

    status = 403
    code = "forbidden"


class RateLimited(TQueuesError):
    """Too many requests; slow down."""

    status = 429
    code = "rate_limited"

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"too many requests; retry in {retry_after:.2f} s")
        self.retry_after = retry_after


class Conflict(TQueuesError):
    """The object changed in the meantime; nothing was modified."""

    status = 409
    code = "conflict"


class LeaseConflict(Conflict):
    """The lease is stale: the job was re-leased, aborted or already completed. Nothing changed."""

    code = "stale_lease"


class StoreUnavailable(TQueuesError):
    """The database is unreachable; retry later."""

    status = 503
    code = "store_unavailable"


class ConfigurationError(TQueuesError):
    """tqueues is not configured correctly."""

    code = "configuration"


class BackendNotAvailable(ConfigurationError):
    """This store backend is not available in this version of tqueues."""

    code = "backend_not_available"


class NotRegistered(TQueuesError):
    """The method is not registered with this worker, so nothing was run."""

    code = "not_registered"


class JobTimeout(TQueuesError):
    """The job ran past its timeout and was stopped."""

    code = "timeout"


class JobAborted(TQueuesError):
    """The job was aborted."""

    code = "aborted"


class WorkerLost(TQueuesError):
    """The worker running the job stopped answering and its lease expired."""

    code = "worker_lost"


class JobFailed(TQueuesError):
    """The job failed."""

    code = "job_failed"


class ClientError(TQueuesError):
    """The dispatcher answered with an error."""

    code = "client_error"

    def __init__(self, message: str | None = None, *, status: int = 0, code: str = "client_error", **details: Any) -> None:
        super().__init__(message, **details)
        self.status = status
        self.code = code


def error_from(status: int, decoded: Any, what: str) -> ClientError:
    """The ClientError for a dispatcher's error answer (its JSON error body, when it has one)."""
    error = decoded.get("error") if isinstance(decoded, dict) else None
    if isinstance(error, dict):
        return ClientError(str(error.get("message")), status=status, code=str(error.get("code")),
                           **{k: v for k, v in error.items() if k not in ("message", "code")})
    return ClientError(f"{what}: HTTP {status}", status=status, code="http_error")
