"""Provider credentials, integrations and the rotation of encrypted secrets."""

from __future__ import annotations

import re
from datetime import datetime

from accounts.errors import MalformedProviderKey, NotAllowed
from accounts.models import Integration, ProviderCredential, User
from config.crypto import secret_encrypt, secret_mask, secret_rotate
from config.db import rls
from config.errors import ApplicationError
from config.outbound import base_url_refusal

PROVIDER_KEY_RULES = {
    ProviderCredential.Provider.ANTHROPIC: (re.compile(r"^sk-ant-[A-Za-z0-9_\-]{20,}$"), "Anthropic keys start with 'sk-ant-'."),
    ProviderCredential.Provider.GEMINI: (
        re.compile(r"^AIza[A-Za-z0-9_\-]{35}$"),
        "Gemini keys start with 'AIza' and are 39 characters long.",
    ),
    ProviderCredential.Provider.OPENAI: (re.compile(r"^sk-[A-Za-z0-9_\-]{20,}$"), "OpenAI keys start with 'sk-'."),
}


def provider_key_validate(*, provider: str, api_key: str, base_url: str = "") -> str:
    """The key, stripped; MalformedProviderKey with a sentence saying what is wrong."""
    key = (api_key or "").strip()
    if not key:
        raise MalformedProviderKey("Paste the API key from your provider's dashboard.")
    if any(c.isspace() for c in key) or not key.isascii() or not key.isprintable():
        raise MalformedProviderKey("The key contains spaces or characters that API keys never have; check the copy.")
    if len(key) > 400:
        raise MalformedProviderKey("The key is longer than any provider issues (400 characters at most).")
    rule = PROVIDER_KEY_RULES.get(provider)
    # A self-hosted OpenAI-compatible server (base_url) may use any token.
    if rule and not (provider == ProviderCredential.Provider.OPENAI and base_url) and not rule[0].match(key):
        raise MalformedProviderKey(f"That does not look like a {ProviderCredential.Provider(provider).label} key: {rule[1]}")
    return key


def provider_credential_set(
    *, user: User, provider: str, api_key: str = "", access_type: str = ProviderCredential.AccessType.USER_API_KEY, base_url: str = ""
) -> ProviderCredential:
    """Add or replace the user's credential for a provider; the key is encrypted and masked. A
    base URL's host is looked up first, before the transaction: callers hold none across it
    (rls.own_transactions), as a slow nameserver would keep a pooled connection waiting."""
    if provider not in ProviderCredential.Provider.values:
        raise MalformedProviderKey(f"Unknown provider '{provider}'.")
    if access_type not in ProviderCredential.AccessType.values:
        raise MalformedProviderKey(f"Unknown access type '{access_type}'.")
    refusal = base_url_refusal(base_url) if base_url else None
    if refusal:
        raise ApplicationError(refusal, {"field": "base_url", "code": "base_url_refused"})
    ciphertext = mask = ""
    if access_type == ProviderCredential.AccessType.USER_API_KEY:
        key = provider_key_validate(provider=provider, api_key=api_key, base_url=base_url)
        ciphertext, mask = secret_encrypt(key), secret_mask(key)
    with rls.atomic_as(user.pk):
        credential, _ = ProviderCredential.objects.update_or_create(
            user=user,
            provider=provider,
            defaults={
                "access_type": access_type,
                "api_key_encrypted": ciphertext,
                "api_key_mask": mask,
                "base_url": base_url,
                "is_active": True,
            },
        )
    return credential


def provider_credential_delete(*, user: User, credential: ProviderCredential) -> None:
    if credential.user_id != user.pk:
        raise NotAllowed("That credential is not yours.")
    with rls.atomic():
        credential.delete()


def integration_connect(
    *, user: User, service: str, access_token: str, refresh_token: str = "", expires_at: datetime | None = None
) -> Integration:
    service = (service or "").strip().lower()
    if not service or not access_token:
        raise MalformedProviderKey("An integration needs a service name and an access token.")
    with rls.atomic():
        integration, _ = Integration.objects.update_or_create(
            user=user,
            service=service,
            defaults={
                "access_token_encrypted": secret_encrypt(access_token),
                "refresh_token_encrypted": secret_encrypt(refresh_token) if refresh_token else "",
                "access_token_mask": secret_mask(access_token),
                "expires_at": expires_at,
                "is_connected": True,
            },
        )
    return integration


def secrets_rotate() -> int:
    """Re-encrypt every stored secret under the newest key. Safe to rerun; returns values rewritten."""
    rewritten = 0
    with rls.privileged(reason="rotate encryption keys"):
        for credential in ProviderCredential.objects.exclude(api_key_encrypted="").select_for_update():
            credential.api_key_encrypted = secret_rotate(credential.api_key_encrypted)
            credential.save(update_fields=["api_key_encrypted"])
            rewritten += 1
        for integration in Integration.objects.select_for_update():
            fields = []
            for name in ("access_token_encrypted", "refresh_token_encrypted"):
                if getattr(integration, name):
                    setattr(integration, name, secret_rotate(getattr(integration, name)))
                    fields.append(name)
                    rewritten += 1
            if fields:
                integration.save(update_fields=fields)
    return rewritten
