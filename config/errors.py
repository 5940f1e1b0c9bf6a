"""The one base class for domain failures; the API turns each into {"message", "extra"}."""


class ApplicationError(Exception):
    """A failure a user can understand: `message` is a sentence, `extra` structured detail."""

    status_code = 400

    def __init__(self, message: str, extra: dict | None = None, *, status_code: int | None = None, retry_after: int | None = None):
        super().__init__(message)
        self.message = message
        self.extra = extra or {}
        if status_code is not None:
            self.status_code = status_code
        self.retry_after = retry_after


class NotFoundError(ApplicationError):
    status_code = 404


class ForbiddenError(ApplicationError):
    status_code = 403


class QuotaExceeded(ApplicationError):
    """A plan's monthly or total limit is reached (billing)."""

    status_code = 402


class RateLimited(ApplicationError):
    """Too many requests this minute; `retry_after` says when to try again (billing)."""

    status_code = 429


class PlanRefused(ApplicationError):
    """The plan does not include this provider, model or action (billing)."""

    status_code = 403
