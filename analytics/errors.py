from config.errors import ApplicationError


class UsageInvalid(ApplicationError):
    """A usage record with impossible values (negative tokens or prices, missing ids)."""
