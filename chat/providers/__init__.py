"""Chat providers: one small interface (see `base`), one module per provider.

`provider_for(name)` returns the module for a provider name; each module offers
`stream(request)` (Delta, Counted and one Done) and `complete(request)` (text, usage and the
provider's finish reason, None when it gave none). The SDKs load only when their provider is used.
"""

from importlib import import_module
from types import ModuleType

from .base import ChatMessage, ChatRequest, Counted, Delta, Done, ProviderError, Usage

__all__ = [
    "DEFAULT_PROVIDER",
    "PROVIDERS",
    "ChatMessage",
    "ChatRequest",
    "Counted",
    "Delta",
    "Done",
    "ProviderError",
    "Usage",
    "provider_for",
]

PROVIDERS = {"echo": "echo", "openai": "openai_api", "anthropic": "anthropic_api", "gemini": "gemini_api"}
DEFAULT_PROVIDER = "echo"


def provider_for(name: str) -> ModuleType:
    """The adapter module for `name`; an unknown name is a bad request, not a crash."""
    if name not in PROVIDERS:
        raise ProviderError("bad_request", f"Unknown provider {name!r}. Choose one of: {', '.join(PROVIDERS)}.")
    return import_module(f"{__name__}.{PROVIDERS[name]}")
