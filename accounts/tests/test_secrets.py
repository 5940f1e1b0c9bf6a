"""Secrets at rest: encrypted, masked, rotatable; wrong or missing keys fail loudly."""

import pytest
from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connections

from accounts import services
from accounts.checks import encryption_keys_open_stored_secrets
from accounts.errors import MalformedProviderKey
from accounts.models import Integration, ProviderCredential
from accounts.tests.factories import make_user
from config.crypto import keys_load, secret_decrypt, secret_mask
from config.db import rls

pytestmark = pytest.mark.django_db(transaction=True)
OPENAI_KEY = "sk-proj-" + "Q" * 30 + "f3a9"


def _stored(table, column):
    with connections["owner"].cursor() as cur:
        cur.execute(f"SELECT {column} FROM {table}")
        return [r[0] for r in cur.fetchall()]


@pytest.fixture
def stored_secrets():
    user = make_user()
    with rls.privileged(reason="test"):
        credential = services.provider_credential_set(user=user, provider="openai", api_key=OPENAI_KEY)
        integration = services.integration_connect(
            user=user, service="calendar", access_token="access-123456789", refresh_token="refresh-987654321"
        )
    return credential, integration


def test_secrets_are_not_stored_in_plaintext(stored_secrets):
    credential, _ = stored_secrets
    (ciphertext,) = _stored("accounts_providercredential", "api_key_encrypted")
    assert OPENAI_KEY not in ciphertext and "f3a9" not in ciphertext
    assert secret_decrypt(ciphertext) == OPENAI_KEY
    assert credential.api_key_mask == "sk-…f3a9"
    for column, plain in (("access_token_encrypted", "access-123456789"), ("refresh_token_encrypted", "refresh-987654321")):
        (value,) = _stored("accounts_integration", column)
        assert plain not in value and secret_decrypt(value) == plain


def test_same_secret_encrypts_differently_each_time(stored_secrets):
    user = make_user()
    with rls.privileged(reason="test"):
        services.provider_credential_set(user=user, provider="openai", api_key=OPENAI_KEY)
    first, second = _stored("accounts_providercredential", "api_key_encrypted")
    assert first != second  # a random IV per value


def test_rotation_moves_every_secret_to_the_newest_key_and_is_rerunnable(stored_secrets, settings):
    old_key, new_key = settings.FIELD_ENCRYPTION_KEYS[0], Fernet.generate_key().decode()
    settings.FIELD_ENCRYPTION_KEYS = [new_key, old_key]
    call_command("rotate_encryption_keys")
    call_command("rotate_encryption_keys")  # again: still fine
    settings.FIELD_ENCRYPTION_KEYS = [new_key]  # the old key is gone; everything still opens
    assert secret_decrypt(_stored("accounts_providercredential", "api_key_encrypted")[0]) == OPENAI_KEY
    with rls.privileged(reason="test"):
        integration = Integration.objects.get()
    assert secret_decrypt(integration.access_token_encrypted) == "access-123456789"
    assert secret_decrypt(integration.refresh_token_encrypted) == "refresh-987654321"


def test_rotation_without_the_old_key_fails_and_changes_nothing(stored_secrets, settings):
    before = _stored("accounts_providercredential", "api_key_encrypted")
    settings.FIELD_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]
    with pytest.raises(CommandError, match="put the old key back"):
        call_command("rotate_encryption_keys")
    assert _stored("accounts_providercredential", "api_key_encrypted") == before


def test_wrong_key_is_reported_at_start(stored_secrets, settings):
    assert encryption_keys_open_stored_secrets(None, databases=["owner"]) == []
    settings.FIELD_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]
    (error,) = encryption_keys_open_stored_secrets(None, databases=["owner"])
    assert error.id == "accounts.E001"


def test_missing_or_malformed_keys_fail_loudly():
    with pytest.raises(ImproperlyConfigured, match="FIELD_ENCRYPTION_KEYS is empty"):
        keys_load([])
    with pytest.raises(ImproperlyConfigured, match="key #2 is not a valid Fernet key"):
        keys_load([Fernet.generate_key().decode(), "not-a-key"])


def test_mask_shows_only_head_and_tail():
    assert secret_mask("sk-abcdefghijklmnopf3a9") == "sk-…f3a9"
    assert "abcdefgh" not in secret_mask("sk-abcdefghijklmnopf3a9")


@pytest.mark.parametrize(
    "provider,key,fragment",
    [
        ("openai", "", "Paste the API key"),
        ("openai", "sk-has space in it-aaaaaaaaaaaa", "spaces"),
        ("openai", "pk-" + "a" * 40, "OpenAI keys start with 'sk-'"),
        ("anthropic", "sk-" + "a" * 40, "Anthropic keys start with 'sk-ant-'"),
        ("gemini", "AIza123", "Gemini keys start with 'AIza'"),
    ],
)
def test_malformed_provider_keys_are_refused_with_a_reason(provider, key, fragment):
    user = make_user()
    with rls.privileged(reason="test"), pytest.raises(MalformedProviderKey, match=fragment):
        services.provider_credential_set(user=user, provider=provider, api_key=key)
    assert not ProviderCredential.objects.using("privileged").filter(user=user).exists()


def test_self_hosted_openai_compatible_server_accepts_any_token():
    user = make_user()
    with rls.privileged(reason="test"):
        credential = services.provider_credential_set(
            user=user, provider="openai", api_key="ollama-local-token", base_url="http://127.0.0.1:11434/v1"
        )
    assert credential.api_key_mask == "oll…oken"
