"""Attack review: staff admin (privilege escalation, odd search and filter input, JSON the
database cannot store), the management commands with hostile arguments, and settings read
from the environment with malformed values."""

import json
import os
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client
from django.urls import reverse

from accounts.models import User
from accounts.tests.factories import make_user
from chat.models import ModelPrice

pytestmark = pytest.mark.django_db(transaction=True)

BASE_DIR = Path(settings.BASE_DIR)


def _url(name, *args):
    return reverse(f"admin:{name}", args=args)


def _privileged(model):
    return model.objects.using("privileged")


@pytest.fixture
def superuser():
    return make_user(email="root@example.com", role="staff", is_superuser=True)


@pytest.fixture
def super_client(superuser):
    client = Client()
    client.force_login(superuser)
    return client


def _user_form(user: User, **overrides) -> dict:
    data = {
        "email": user.email,
        "display_name": user.display_name,
        "first_name": "",
        "last_name": "",
        "avatar_url": "",
        "timezone": "UTC",
        "locale": "en",
        "role": user.role,
        "is_active": "on",
        "metadata": "{}",
    }
    if user.is_superuser:
        data["is_superuser"] = "on"
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


# Privilege escalation: accounts/backends.py gives every active staff member every permission
# ("finer permissions are not used"), so is_superuser adds nothing a staff member lacks; a staff
# member making a member staff, or setting another staff member's password, is within that design.


def test_held_a_member_flagged_superuser_still_cannot_reach_admin():
    member = make_user(email="flagged@example.com", is_superuser=True)
    client = Client()
    client.force_login(member)
    response = client.get(_url("accounts_user_changelist"))
    assert response.status_code == 302 and response["Location"].startswith(_url("login"))


# --- JSON the database cannot store ---------------------------------------------------------


@pytest.mark.parametrize("metadata", ['{"x": NaN}', '{"x": Infinity}', '{"x": "a\\u0000b"}'], ids=["nan", "infinity", "nul"])
def test_user_metadata_the_database_cannot_store_is_a_form_error_not_a_500(super_client, metadata):
    member = make_user(email="meta@example.com")
    super_client.raise_request_exception = False
    response = super_client.post(_url("accounts_user_change", member.pk), _user_form(member, metadata=metadata))
    assert response.status_code == 200, response.status_code  # the form again, with its error
    assert _privileged(User).get(pk=member.pk).metadata == {}


@pytest.mark.parametrize("extra", ['{"x": NaN}', '{"x": "a\\u0000b"}'], ids=["nan", "nul"])
def test_preferences_extra_the_database_cannot_store_is_a_form_error(extra):
    """The same check on every admin form with a JSON field (config.admin.StorableJSONForm)."""
    from django.forms import modelform_factory

    from accounts.admin import PreferencesAdmin
    from accounts.models import Preferences

    form = modelform_factory(Preferences, form=PreferencesAdmin.form, fields=["extra"])({"extra": extra})
    assert not form.is_valid() and "database can store" in str(form.errors["extra"]), form.errors


# --- Search and filters with odd input --------------------------------------------------------

ODD_QUERIES = [
    ("accounts_user_changelist", {"q": "a\x00b"}),
    ("accounts_organization_changelist", {"q": "\x00"}),
    ("accounts_apikey_changelist", {"q": "x\x00"}),
    ("chat_conversation_changelist", {"q": "\x00"}),
    ("chat_persona_changelist", {"q": "\x00"}),
    ("chat_modelprice_changelist", {"q": "\x00"}),
    ("billing_plan_changelist", {"q": "\x00"}),
    ("billing_subscription_changelist", {"q": "\x00"}),
    ("billing_stripeevent_changelist", {"q": "\x00"}),
    ("analytics_apilog_changelist", {"q": "/v1\x00"}),
    ("analytics_event_changelist", {"q": "\x00"}),
    ("analytics_auditlog_changelist", {"q": "\x00"}),
]


@pytest.mark.parametrize("name,params", ODD_QUERIES, ids=[f"{n}-nul" for n, _ in ODD_QUERIES])
def test_admin_search_with_a_nul_character_is_not_a_500(super_client, name, params):
    super_client.raise_request_exception = False
    response = super_client.get(_url(name), params)
    assert response.status_code in (200, 302), response.status_code


@pytest.mark.parametrize(
    "name,params",
    [
        ("chat_conversation_changelist", {"q": "not-a-uuid .* [a-z]+ %_ \\"}),
        ("chat_message_changelist", {"q": "not-a-uuid"}),
        ("chat_sharelink_changelist", {"q": "'; DROP TABLE x; --"}),
        ("analytics_auditlog_changelist", {"q": "x" * 100_000}),
        ("accounts_user_changelist", {"created_at__year": "99999"}),
        ("accounts_user_changelist", {"created_at__year": "2024", "created_at__month": "13"}),
        ("accounts_user_changelist", {"created_at__year": "-1"}),
        ("accounts_user_changelist", {"is_superuser__exact": "maybe"}),
        ("analytics_apilog_changelist", {"status_class": "9"}),
        ("analytics_tokenusage_changelist", {"o": "99"}),
    ],
    ids=lambda v: v if isinstance(v, str) else "-".join(f"{k}" for k in v),
)
def test_admin_changelists_with_odd_input_held(super_client, name, params):
    super_client.raise_request_exception = False
    response = super_client.get(_url(name), params)
    assert response.status_code in (200, 302), response.status_code


def test_admin_change_page_with_an_id_that_is_not_a_uuid_held(super_client):
    super_client.raise_request_exception = False
    response = super_client.get("/admin/accounts/user/not-a-uuid/change/")
    assert response.status_code in (302, 404)


# --- Management commands: hostile arguments -----------------------------------------------------


def _call(*args, **options):
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO(), **options)
    return out.getvalue()


@pytest.mark.parametrize("value", ["NaN", "Infinity", "1e999999"])
def test_prices_import_with_a_price_that_is_not_finite_is_a_sentence_not_a_traceback(tmp_path, catalog, value):
    versions = _privileged(ModelPrice).count()
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"gpt-4o": {"litellm_provider": "openai", "mode": "chat", "input_cost_per_token": value}}))
    with pytest.raises(CommandError):
        _call("prices_import", str(path))
    assert _privileged(ModelPrice).count() == versions


@pytest.mark.parametrize(
    "entry", [{"litellm_provider": ["openai"]}, {"litellm_provider": "openai", "mode": ["chat"]}], ids=["provider-list", "mode-list"]
)
def test_prices_import_with_an_unhashable_provider_or_mode_is_a_sentence_not_a_traceback(catalog, tmp_path, entry):
    """Was TypeError (unhashable type: 'list'); such an entry is not a chat model of ours, so it is skipped."""
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"gpt-4o": entry}))
    versions = _privileged(ModelPrice).count()
    _call("prices_import", str(path))  # no traceback
    assert _privileged(ModelPrice).count() == versions


def test_import_conversations_with_a_nul_in_the_email_is_a_sentence_not_a_traceback(tmp_path):
    path = tmp_path / "conversations.json"
    path.write_text("[]")
    with pytest.raises(CommandError):
        _call("import_conversations", str(path), user="a\x00@example.com")


def test_import_conversations_with_a_path_the_system_refuses_is_a_sentence_not_a_traceback(tmp_path):
    """Was OSError (File name too long) out of Path.is_file, which swallows only a missing file."""
    with pytest.raises(CommandError, match="cannot be read: File name too long"):
        _call("import_conversations", str(tmp_path / ("x" * 5000)), user="alice@example.com")


@pytest.mark.parametrize(
    "action,today", [("ensure", "9999-12-15"), ("prune", "0001-01-15")], ids=["ensure-last-month", "prune-first-month"]
)
def test_partitions_with_a_day_at_the_calendars_edge_is_a_sentence_not_a_traceback(action, today):
    with pytest.raises(CommandError):
        _call("partitions", action, "--table", "analytics_apilog", "--today", today)


def test_partitions_with_a_huge_months_ahead_is_a_sentence_not_a_traceback():
    with pytest.raises(CommandError):
        _call("partitions", "ensure", "--table", "analytics_apilog", "--months-ahead", "200000")


# --- Settings from the environment ---------------------------------------------------------------

from config.tests.test_production import PRODUCTION_ENV  # noqa: E402


def _check(**overrides) -> subprocess.CompletedProcess:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "REDIS_", "CELERY_", "DJANGO_", "CONFAB_"))}
    env = {**inherited, **PRODUCTION_ENV, **overrides}
    return subprocess.run([sys.executable, "manage.py", "check"], cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=120)


BAD_ENVIRONMENT = {
    "DATABASE_URL": "not a url",
    "DATABASE_APP_URL": "",
    "DATABASE_WORKER_URL": "mysql://x@y/z",
    "DATABASE_POOL_MIN_SIZE": "abc",
    "DATABASE_POOL_MAX_SIZE": "-3",
    "DATABASE_POOL_TIMEOUT": "soon",
    "REDIS_SOCKET_TIMEOUT": "x",
    "DJANGO_SECRET_KEY": "",
    "LOG_LEVEL": "LOUD",
    "THROTTLE_API_PER_MINUTE": "-5",
    "CHAT_IMPORT_MAX_BYTES": "-1",
    "SESSION_COOKIE_AGE": "-1",
    "USAGE_RECONCILE_TOLERANCE": "abc",
}


@pytest.mark.parametrize("variable", BAD_ENVIRONMENT)
def test_a_malformed_setting_stops_startup_with_a_sentence_naming_it(variable):
    result = _check(**{variable: BAD_ENVIRONMENT[variable]})
    output = result.stdout + result.stderr
    assert result.returncode != 0, f"{variable}={BAD_ENVIRONMENT[variable]!r} was accepted: {output[-500:]}"
    assert variable in output, output[-1500:]
    assert "Traceback" not in output or "ImproperlyConfigured" in output, output[-1500:]


@pytest.mark.parametrize(
    "url", ["postgres://confab:s3cret-pw@[::1/confab", "postgres://confab:s3cret-pw@db:port/confab", "postgres://confab:s3cret-pw@db:5432/"]
)
def test_a_malformed_database_url_stops_startup_with_a_sentence_that_does_not_quote_its_password(url):
    """Was a ValueError traceback for an unclosed IPv6 bracket, and a sentence quoting the whole
    URL, password included, into the terminal and the logs."""
    result = _check(DATABASE_URL=url)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "DATABASE_URL must be a PostgreSQL URL" in output, output[-1500:]
    assert "s3cret-pw" not in output, output[-1500:]


# --- Probed and held ---------------------------------------------------------------------------------


def test_held_action_not_offered_is_refused_with_a_crafted_post(super_client):
    member = make_user(email="keep@example.com")
    super_client.raise_request_exception = False
    response = super_client.post(_url("accounts_user_changelist"), {"action": "delete_selected", "_selected_action": [str(member.pk)]})
    assert response.status_code in (200, 302)
    assert _privileged(User).filter(pk=member.pk).exists()


def test_held_prices_import_of_a_directory_or_non_utf8_file_is_a_sentence(tmp_path):
    with pytest.raises(CommandError):
        _call("prices_import", str(tmp_path))
    bad = tmp_path / "latin1.json"
    bad.write_bytes(b'{"caf\xe9": {}}')
    with pytest.raises(CommandError):
        _call("prices_import", str(bad))
    with pytest.raises(CommandError):
        _call("prices_import", str(tmp_path / "missing.json"))


def test_held_import_conversations_of_a_directory_or_unknown_user_is_a_sentence(tmp_path):
    with pytest.raises(CommandError):
        _call("import_conversations", str(tmp_path), user="nobody@example.com")
    path = tmp_path / "c.json"
    path.write_text("[]")
    with pytest.raises(CommandError):
        _call("import_conversations", str(path), user="nobody@example.com")


def test_held_usage_reconcile_with_bad_arguments_is_a_sentence(tmp_path):
    bad = tmp_path / "r.json"
    bad.write_bytes(b"\xff\xfe not json")
    for kwargs in (
        {"provider": "nope", "start": "2025-01-01", "end": "2025-01-02"},
        {"provider": "openai", "start": "yesterday", "end": "2025-01-02"},
        {"provider": "openai", "start": "2025-01-01", "end": "2025-01-02", "file": str(tmp_path)},
        {"provider": "openai", "start": "2025-01-01", "end": "2025-01-02", "file": str(bad)},
    ):
        with pytest.raises(CommandError):
            _call("usage_reconcile", **kwargs)
