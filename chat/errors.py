"""Chat failures, each with a sentence a user understands."""

from config.errors import ApplicationError


class ModelUnavailable(ApplicationError):
    """An unknown provider or model, or one with no price in force: refused, never metered at $0."""

    code = "model_unavailable"


class ProviderKeyMissing(ApplicationError):
    """No key to call the provider with: not the user's, not the platform's for this plan."""

    code = "provider_key_missing"


class PriceVersionRefused(ApplicationError):
    """A price version that would rewrite the past: it must start after the version it replaces."""

    code = "price_version_refused"


class SearchQueryInvalid(ApplicationError):
    """A search that cannot be run: empty, too long, or with control characters."""

    code = "search_query_invalid"
