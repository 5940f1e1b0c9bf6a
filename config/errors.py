"""The one base class for domain failures; the API turns each into {"message", "extra"}."""

import re

from django.http import Http404


class ApplicationError(Exception):
    """A failure a user can understand: `message` is a sentence, `extra` structured detail."""

    status_code = 400
    # Machine-readable, sent as extra.code; a subclass without its own is named after itself (EmailTaken: email_taken).
    code = "invalid"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "code" not in cls.__dict__:
            cls.code = re.sub(r"(?<!^)(?=[A-Z])", "_", cls.__name__).lower()

    def __init__(self, message: str, extra: dict | None = None, *, status_code: int | None = None, retry_after: int | None = None):
        super().__init__(message)
        self.message = message
        self.extra = extra or {}
        if status_code is not None:
            self.status_code = status_code
        self.retry_after = retry_after


class NotFoundError(ApplicationError, Http404):
    """Also Django's Http404: a page whose service finds its row gone (deleted by another tab
    after the view read it) answers 404, as the API does, not 500."""

    status_code = 404
    code = "not_found"


class ForbiddenError(ApplicationError):
    status_code = 403
    code = "permission_denied"


class QuotaExceeded(ApplicationError):
    """A plan's monthly or total limit is reached (billing)."""

    status_code = 402
    code = "quota_exceeded"


class RateLimited(ApplicationError):
    """Too many requests this minute; `retry_after` says when to try again (billing)."""

    status_code = 429
    code = "rate_limited"


class PlanRefused(ApplicationError):
    """The plan does not include this provider, model or action (billing)."""

    status_code = 403
    code = "plan_refused"
