"""The models a user may prefer: (provider, model, display name) from chat's catalog, which chat
registers when it loads (accounts, below chat, cannot import it). Without one (chat not
installed, or its catalog not seeded yet) preferences take any text."""

from __future__ import annotations

from collections.abc import Callable

_model_catalog: Callable[[], list[tuple[str, str, str]]] | None = None


def model_catalog_register(catalog: Callable[[], list[tuple[str, str, str]]]) -> None:
    global _model_catalog
    _model_catalog = catalog


def model_catalog() -> list[tuple[str, str, str]] | None:
    return (_model_catalog() if _model_catalog else None) or None


def preferred_model_problem(catalog: list[tuple[str, str, str]] | None, provider: str, model: str) -> dict[str, str] | None:
    """{field: sentence} when the preferred provider and model are not a pair of the catalog
    (either may be empty: the default); None when they are, or there is no catalog. The same
    rule for the settings page and the API."""
    if catalog is None:
        return None
    providers = {p for p, _, _ in catalog}
    if provider and provider not in providers:
        return {"preferred_provider": f"Unknown provider '{provider[:50]}': choose one of {', '.join(sorted(providers))}."}
    if model and (provider, model) not in {(p, m) for p, m, _ in catalog}:
        return {"preferred_model": f"{model[:100]} is not a model of {provider or 'the default provider'}: choose one of its models."}
    return None
