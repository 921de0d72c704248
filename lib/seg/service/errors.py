"""The one error envelope of the service: ``{code, message, hint, retryable}`` for every refusal."""

from __future__ import annotations

from labpipe.errors import LabpipeError


class ServiceError(Exception):
    """A refusal with its HTTP status; ``envelope()`` is what the client reads."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        hint: str = "",
        *,
        retryable: bool = False,
        headers: dict[str, str] | None = None,
        **extra,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.hint = status, code, message, hint
        self.retryable, self.headers, self.extra = retryable, headers or {}, extra

    def envelope(self) -> dict:
        return {"code": self.code, "message": self.message, "hint": self.hint, "retryable": self.retryable} | self.extra


def not_found(what: str) -> ServiceError:
    """The same answer for "does not exist" and "belongs to someone else": ids are not probed."""
    return ServiceError(404, "not_found", f"no {what}", "check the id; you see only your own uploads and jobs")


def invalid(field: str, problem: str, hint: str = "") -> ServiceError:
    return ServiceError(400, "invalid_request", f"{field}: {problem}", hint)


def from_labpipe(error: LabpipeError, status: int, code: str, subject: str | None = None) -> ServiceError:
    """A labpipe error as an envelope; ``subject`` replaces a server path the client must not see."""
    return ServiceError(status, code, f"{subject or error.subject}: {error.problem}", error.hint)
