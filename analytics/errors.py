from config.errors import ApplicationError


class UsageInvalid(ApplicationError):
    """A usage record with impossible values (negative tokens or prices, missing ids)."""


class UsageQueryInvalid(ApplicationError):
    """A usage query the dashboards cannot answer (unknown period or grouping, a bad date range)."""


class UsageAccessDenied(ApplicationError):
    """Usage the user may not see (by member, for an organization they do not administer)."""

    status_code = 403


class ReconciliationFailed(ApplicationError):
    """The provider's usage report could not be read (bad arguments, no admin key, an HTTP error, a malformed page)."""
