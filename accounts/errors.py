"""Account failures, each with a sentence a user understands."""

from config.errors import ApplicationError, ForbiddenError, NotFoundError


class EmailTaken(ApplicationError):
    def __init__(self):
        super().__init__("An account with this email already exists. Log in or reset your password.", {"field": "email"})


class LoginThrottled(ApplicationError):
    status_code = 429

    def __init__(self, retry_after: int):
        minutes = max(1, round(retry_after / 60))
        super().__init__(
            f"Too many failed sign-in attempts. Try again in {minutes} minute{'s' if minutes != 1 else ''}.",
            {"code": "login_throttled", "retry_after": retry_after},
            retry_after=retry_after,
        )


class PasswordResetThrottled(ApplicationError):
    status_code = 429

    def __init__(self, retry_after: int):
        minutes = max(1, round(retry_after / 60))
        super().__init__(
            f"Too many password reset requests. Try again in {minutes} minute{'s' if minutes != 1 else ''}.",
            {"code": "password_reset_throttled", "retry_after": retry_after},
            retry_after=retry_after,
        )


class MalformedProviderKey(ApplicationError):
    def __init__(self, reason: str):
        super().__init__(reason, {"field": "api_key"})


class InvalidScopes(ApplicationError):
    def __init__(self, unknown: list[str]):
        super().__init__(f"Unknown scope(s): {', '.join(unknown)}.", {"field": "scopes", "unknown": unknown})


class InvitationInvalid(ApplicationError):
    pass


class OrganizationRuleBroken(ApplicationError):
    """A change the organization's rules forbid (e.g. leaving it without an owner)."""


class NotAllowed(ForbiddenError):
    pass


class NotFound(NotFoundError):
    pass
