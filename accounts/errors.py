"""Account failures, each with a sentence a user understands."""

from config.errors import ApplicationError, ForbiddenError, NotFoundError


class EmailTaken(ApplicationError):
    def __init__(self):
        super().__init__("An account with this email already exists. Log in or reset your password.", {"field": "email"})


class _Throttled(ApplicationError):
    status_code = 429
    code = sentence = ""

    def __init__(self, retry_after: int):
        minutes = max(1, round(retry_after / 60))
        super().__init__(
            f"{self.sentence} Try again in {minutes} minute{'s' if minutes != 1 else ''}.",
            {"code": self.code, "retry_after": retry_after},
            retry_after=retry_after,
        )


class LoginThrottled(_Throttled):
    code, sentence = "login_throttled", "Too many failed sign-in attempts."


class PasswordResetThrottled(_Throttled):
    code, sentence = "password_reset_throttled", "Too many password reset requests."


class MailThrottled(_Throttled):
    """Mails the product sends on someone's asking (a confirmation again, an invitation): counted,
    so no one can make it mail a stranger without end, under its own sending name."""

    code, sentence = "mail_throttled", "Too many emails sent for this."


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
