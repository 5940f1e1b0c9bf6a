"""A provider base URL that points at this machine, the private network or the metadata
service is refused when it is saved (a 400 naming the field), in any spelling; a host that
does not resolve yet is saved and checked again at every connection (config/outbound.py)."""

import pytest

from accounts.models import ProviderCredential
from accounts.services import provider_credential_set
from accounts.tests.factories import make_user
from accounts.tests.test_api import key_client
from config.db import rls
from config.errors import ApplicationError

pytestmark = pytest.mark.django_db(transaction=True)
KEY = "sk-user-own-key-1234567890"


@pytest.fixture
def nothing_allowed(settings):
    settings.OUTBOUND_ALLOWED_HOSTS = []


@pytest.mark.parametrize(
    "base_url",
    [
        "http://127.0.0.1:11434/v1",
        "http://localhost:8000/v1",
        "http://2130706433/v1",  # 127.0.0.1 as one number
        "http://[::ffff:10.0.0.5]/v1",
        "http://169.254.169.254/latest/meta-data",
        "http://192.168.1.20:8080/v1",
    ],
)
def test_a_base_url_to_a_non_public_address_is_refused_on_save(nothing_allowed, base_url):
    user = make_user()
    with pytest.raises(ApplicationError) as refused:
        with rls.atomic_as(user.pk):
            provider_credential_set(user=user, provider="openai", api_key=KEY, base_url=base_url)
    assert refused.value.extra["field"] == "base_url" and "not reachable from Confab" in refused.value.message
    with rls.privileged(reason="test"):
        assert not ProviderCredential.objects.filter(user=user).exists()


def test_the_api_answers_400_naming_the_field(nothing_allowed):
    client = key_client(make_user(), scopes=["account:read", "account:write"])
    response = client.post(
        "/api/v1/provider-credentials", {"provider": "openai", "api_key": KEY, "base_url": "http://169.254.169.254/v1"}, format="json"
    )
    assert response.status_code == 400 and "not reachable from Confab" in response.json()["message"], response.json()


def test_a_host_staff_allowed_or_one_not_resolving_yet_is_saved(settings):
    settings.OUTBOUND_ALLOWED_HOSTS = ["127.0.0.1"]
    user = make_user()
    with rls.atomic_as(user.pk):
        provider_credential_set(user=user, provider="openai", api_key=KEY, base_url="http://127.0.0.1:11434/v1")
        provider_credential_set(user=user, provider="openai", api_key=KEY, base_url="https://llm.invalid/v1")
    with rls.privileged(reason="test"):
        assert ProviderCredential.objects.get(user=user).base_url == "https://llm.invalid/v1"
