"""The management commands and the staff admin with bad input (review of 2026-12-02): a usage
report or price file with values no column holds ended in a traceback, not a sentence; a
provider credential's base URL was not checked in admin (a 500, or stored unchecked); staff could
set a webmail auto-join domain. Each test here failed before its fix."""

import json
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client
from django.urls import reverse

from accounts import services as account_services
from accounts.models import ProviderCredential
from accounts.tests.factories import make_user
from analytics.models import ReconciliationReport
from chat.models import ModelPrice
from config.db import rls

pytestmark = pytest.mark.django_db(transaction=True)

OPENAI_KEY = "sk-" + "a" * 40


def _call(*args, **options):
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO(), **options)
    return out.getvalue()


def _privileged(model):
    return model.objects.using("privileged")


def _reports() -> int:
    with rls.privileged(reason="test: count the reports"):
        return ReconciliationReport.objects.count()


@pytest.fixture
def staff():
    client = Client(raise_request_exception=False)
    client.force_login(make_user(email="staff@example.com", role="staff", is_superuser=True))
    return client


# --- usage_reconcile --file: a malformed report ----------------------------------------------------


def _reconcile(provider, path):
    return _call("usage_reconcile", "--provider", provider, "--from", "2026-11-20", "--to", "2026-11-20", "--file", str(path))


def test_usage_reconcile_anthropic_bucket_whose_start_is_a_number_is_a_sentence_not_a_traceback(tmp_path):
    """An operator reconciles Anthropic from a saved report whose bucket has "starting_at": 1795132800
    (a number, as OpenAI's start_time is). analytics/reconcile.py _bucket_day calls .replace on it and
    the AttributeError (not among the errors it catches) escapes as a traceback. Correct: CommandError
    "The usage report has a bucket without a readable start time.", nothing stored."""
    path = tmp_path / "report.json"
    path.write_text(json.dumps({"data": [{"starting_at": 1795132800, "results": []}]}))
    with pytest.raises(CommandError, match="start time"):
        _reconcile("anthropic", path)
    assert _reports() == 0


def test_usage_reconcile_anthropic_cache_creation_that_is_not_an_object_is_a_sentence_not_a_traceback(tmp_path):
    """An Anthropic report whose result has "cache_creation": [5] (or a number): _result_classes calls
    .get on it and AttributeError escapes as a traceback. Correct: CommandError with a sentence."""
    path = tmp_path / "report.json"
    bucket = {"starting_at": "2026-11-20T00:00:00Z", "results": [{"model": "claude-sonnet", "cache_creation": [5]}]}
    path.write_text(json.dumps({"data": [bucket]}))
    with pytest.raises(CommandError):
        _reconcile("anthropic", path)
    assert _reports() == 0


@pytest.mark.parametrize(
    "result",
    [{"model": "gpt-4o", "input_tokens": 10**20}, {"model": "m" * 150, "input_tokens": 5}, {"model": "gpt\x00-4o", "input_tokens": 5}],
    ids=["token-count-beyond-bigint", "model-name-longer-than-the-column", "nul-in-model-name"],
)
def test_usage_reconcile_report_values_the_database_cannot_store_are_a_sentence_not_a_traceback(tmp_path, result):
    """A report (OpenAI, --file) with a token count past what a bigint holds, a model name longer than
    ReconciliationLine.model's 100 characters, or a NUL in the model name: it is parsed, then the
    report's save fails in PostgreSQL (DataError / psycopg's ValueError) and escapes as a traceback.
    Correct: CommandError saying what in the file is wrong; nothing stored."""
    path = tmp_path / "report.json"
    path.write_text(json.dumps({"data": [{"start_time": 1795132800, "results": [result]}]}))  # 2026-11-20
    with pytest.raises(CommandError):
        _reconcile("openai", path)
    assert _reports() == 0


# --- prices_import: numbers the catalog cannot hold --------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [
        {"max_input_tokens": 10**10},
        {"input_cost_per_token_above_9000000k_tokens": 5e-06, "output_cost_per_token_above_9000000k_tokens": 1e-05},
    ],
    ids=["context-window-beyond-integer", "tier-threshold-beyond-integer"],
)
def test_prices_import_with_a_token_count_out_of_range_is_a_sentence_not_a_traceback(catalog, tmp_path, extra):
    """An operator imports a price map whose gpt-4o entry has max_input_tokens 10000000000 (or a
    long-context key `_above_9000000k_tokens`, a threshold of 9e9). chat/management/commands/
    prices_import.py _fields takes any positive int for context_window / long_context_threshold, both
    PositiveIntegerFields: the insert fails with NumericValueOutOfRange, a traceback. Correct:
    CommandError naming the entry and key; no new version."""
    entry = {"litellm_provider": "openai", "mode": "chat", "input_cost_per_token": 3e-06, "output_cost_per_token": 1.2e-05, **extra}
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"gpt-4o": entry}))
    versions = _privileged(ModelPrice).count()
    with pytest.raises(CommandError):
        _call("prices_import", str(path))
    assert _privileged(ModelPrice).count() == versions


# --- Admin: provider credentials' base URL --------------------------------------------------------

REFUSED_BASE_URL = "http://10.1.2.3/v1"  # a private address: base_url_refusal refuses it


def test_adding_a_credential_with_a_refused_base_url_is_a_form_error_not_a_500(staff):
    """Staff add an OpenAI-compatible credential for Bob with base URL http://10.1.2.3/v1 and a key.
    ProviderCredentialAdminForm.clean never checks the base URL; save_model calls
    provider_credential_set, whose ApplicationError ("not reachable from Confab") escapes: a 500.
    Correct: the form again with that sentence on base_url; nothing stored."""
    bob = make_user(email="bob@example.com")
    data = {
        "user": str(bob.pk),
        "provider": "openai",
        "access_type": "user_api_key",
        "base_url": REFUSED_BASE_URL,
        "is_active": "on",
        "replace_key": OPENAI_KEY,
    }
    response = staff.post(reverse("admin:accounts_providercredential_add"), data)
    assert response.status_code == 200, response.status_code
    assert not _privileged(ProviderCredential).filter(user=bob).exists()


def test_changing_only_the_base_url_to_a_refused_host_is_a_form_error_not_stored(staff):
    """Staff edit Alice's credential and change only its base URL to http://10.1.2.3/v1 (no new key).
    save_model takes the plain super().save_model path, so the address the service refuses on every
    other path (base_url_refusal, "said when it is saved") is stored unchecked. Correct: a form error;
    the base URL unchanged."""
    alice = make_user(email="alice@example.com")
    with rls.privileged(reason="test fixture"):
        credential = account_services.provider_credential_set(user=alice, provider="openai", api_key=OPENAI_KEY)
    data = {"access_type": "user_api_key", "base_url": REFUSED_BASE_URL, "is_active": "on", "replace_key": ""}
    response = staff.post(reverse("admin:accounts_providercredential_change", args=[credential.pk]), data)
    assert response.status_code == 200, response.status_code
    assert _privileged(ProviderCredential).get(pk=credential.pk).base_url == ""


# --- Admin: an organization's auto-join domain ------------------------------------------------------


def _organization_form(organization, **overrides) -> dict:
    from accounts.models import Membership

    memberships = list(_privileged(Membership).filter(organization=organization).order_by("created_at", "pk"))
    data = {
        "name": organization.name,
        "slug": organization.slug,
        "auto_join_domain": organization.auto_join_domain,
        "created_by": str(organization.created_by_id),
        "memberships-TOTAL_FORMS": str(len(memberships)),
        "memberships-INITIAL_FORMS": str(len(memberships)),
        "memberships-MIN_NUM_FORMS": "0",
        "memberships-MAX_NUM_FORMS": "1000",
    }
    if organization.is_personal:
        data["is_personal"] = "on"
    for i, membership in enumerate(memberships):
        data.update(
            {
                f"memberships-{i}-id": str(membership.pk),
                f"memberships-{i}-organization": str(organization.pk),
                f"memberships-{i}-user": str(membership.user_id),
                f"memberships-{i}-role": membership.role,
            }
        )
    data.update(overrides)
    return data


def test_staff_setting_a_webmail_auto_join_domain_is_a_form_error(staff):
    """Staff set the Acme organization's auto-join domain in admin to gmail.com. OrganizationAdmin's
    form stores any text, so every verified Gmail user (accounts 0008's ADMITS) joins Acme as a member
    (with what members see), which organization_update refuses on every other path
    (_auto_join_domain_check: "gmail.com is a public or disposable email domain"). Correct: a form
    error with that sentence; the domain unchanged."""
    from accounts.models import Organization

    alice = make_user(email="alice@acme.com", email_verified=True)
    with rls.privileged(reason="test fixture"):
        organization = account_services.organization_create(user=alice, name="Acme")
    url = reverse("admin:accounts_organization_change", args=[organization.pk])
    response = staff.post(url, _organization_form(organization, auto_join_domain="gmail.com"))
    assert response.status_code == 200, response.status_code  # the form again, with its error
    assert _privileged(Organization).get(pk=organization.pk).auto_join_domain == ""
