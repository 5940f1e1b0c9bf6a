"""The tasks and commands attacked: staff saving a secret's row while rotate_encryption_keys runs,
usage reports that cannot be parsed, and price maps or file names that are not what they should
be. Each test's docstring: what is done, what happened ("Was:"), what should."""

from __future__ import annotations

import json
import os
import threading
from contextlib import suppress
from datetime import UTC, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import StringIO

import pytest
from cryptography.fernet import Fernet
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connections
from django.test import Client
from django.utils import timezone

from accounts import admin as accounts_admin
from accounts import services as accounts_services
from accounts.tests.factories import make_user
from analytics import tasks as analytics_tasks
from analytics.models import ReconciliationReport
from analytics.tests.test_reconcile import _anthropic_bucket, report_server  # noqa: F401  (a fixture)
from chat.models import ModelPrice
from config.crypto import secret_decrypt
from config.db import rls

pytestmark = pytest.mark.django_db(transaction=True)

OPENAI_KEY = "sk-proj-" + "R" * 30 + "b7c1"


def _call(*args, **options):
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO(), **options)
    return out.getvalue()


def _stored(table: str, column: str) -> list[str]:
    with connections["owner"].cursor() as cur:
        cur.execute(f"SELECT {column} FROM {table}")
        return [r[0] for r in cur.fetchall()]


# --- rotate_encryption_keys while staff save a credential ---------------------------------------


def test_a_credential_saved_in_admin_while_keys_rotate_is_not_left_under_the_old_key(settings, monkeypatch):
    """The operator adds a new key in front (FIELD_ENCRYPTION_KEYS = [new, old]) and runs
    `manage.py rotate_encryption_keys`; meanwhile a staff member saves a provider credential in
    admin (ticks is_active, changes nothing of the key). The admin read the row (old-key
    ciphertext) before the rotation committed; the rotation then rewrites it under the new key; the
    admin's save (ModelAdmin.save_model -> obj.save(), every column) writes the old ciphertext
    back. The command said every secret is under the newest key, so the operator removes the old
    one: the user's key can no longer be decrypted, lost for good.
    Was: the stored ciphertext opens only with the old key (InvalidToken once it is removed).
    Should: a save that does not replace the key never writes the ciphertext column (save with the
    changed fields only, or lock the row as the form reads it), so the rotation's value stays."""
    staff = make_user(email="staff@example.com", role="staff", is_superuser=True)
    owner = make_user(email="owner@example.com")
    with rls.privileged(reason="test"):
        credential = accounts_services.provider_credential_set(user=owner, provider="openai", api_key=OPENAI_KEY)
    old_key, new_key = settings.FIELD_ENCRYPTION_KEYS[0], Fernet.generate_key().decode()
    settings.FIELD_ENCRYPTION_KEYS = [new_key, old_key]

    clean = accounts_admin.ProviderCredentialAdminForm.clean

    def rotation_commits_meanwhile(form):
        # The admin has read the row; the rotation (another process) runs and commits now.
        _rotate_on_another_connection()
        return clean(form)

    monkeypatch.setattr(accounts_admin.ProviderCredentialAdminForm, "clean", rotation_commits_meanwhile)
    client = Client()
    client.force_login(staff)
    response = client.post(
        f"/admin/accounts/providercredential/{credential.pk}/change/",
        {"access_type": credential.access_type, "replace_key": "", "base_url": "", "is_active": "on"},
    )
    assert response.status_code == 302, response.content[:500]

    settings.FIELD_ENCRYPTION_KEYS = [new_key]  # rotated: the old key is retired
    (ciphertext,) = _stored("accounts_providercredential", "api_key_encrypted")
    assert secret_decrypt(ciphertext) == OPENAI_KEY


def test_an_integration_saved_in_admin_while_keys_rotate_is_not_left_under_the_old_key(settings, monkeypatch):
    """The same race for an integration's tokens: staff save an integration in admin (untick
    is_connected) while `rotate_encryption_keys` runs. IntegrationAdmin has no save_model of its
    own: Django's obj.save() writes every column, the access and refresh tokens read before the
    rotation committed among them. Was: after the old key is retired, the tokens cannot be
    decrypted. Should: the admin's save writes only the fields it changed."""
    staff = make_user(email="staff@example.com", role="staff", is_superuser=True)
    owner = make_user(email="owner@example.com")
    with rls.privileged(reason="test"):
        integration = accounts_services.integration_connect(
            user=owner, service="calendar", access_token="access-123456789", refresh_token="refresh-987654321"
        )
    old_key, new_key = settings.FIELD_ENCRYPTION_KEYS[0], Fernet.generate_key().decode()
    settings.FIELD_ENCRYPTION_KEYS = [new_key, old_key]
    save_model = accounts_admin.IntegrationAdmin.save_model

    def rotation_commits_meanwhile(self, request, obj, form, change):
        _rotate_on_another_connection()
        return save_model(self, request, obj, form, change)

    monkeypatch.setattr(accounts_admin.IntegrationAdmin, "save_model", rotation_commits_meanwhile)
    client = Client()
    client.force_login(staff)
    response = client.post(f"/admin/accounts/integration/{integration.pk}/change/", {"expires_at_0": "", "expires_at_1": ""})
    assert response.status_code == 302, response.content[:500]

    settings.FIELD_ENCRYPTION_KEYS = [new_key]
    (access,) = _stored("accounts_integration", "access_token_encrypted")
    assert secret_decrypt(access) == "access-123456789"


def _rotate_on_another_connection() -> None:
    """`manage.py rotate_encryption_keys` as another process would run it: its own connection, committed."""
    errors = []

    def rotate():
        try:
            _call("rotate_encryption_keys")
        except Exception as exc:  # reported below
            errors.append(exc)
        finally:
            for connection in connections.all():
                connection.close()

    thread = threading.Thread(target=rotate)
    thread.start()
    thread.join(60)
    assert not thread.is_alive() and errors == [], errors


# --- usage_reconcile: a report the provider answers that nests too deeply ------------------------


class _RawServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, body: bytes):
        super().__init__(("127.0.0.1", 0), _RawHandler)
        self.body = body
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _RawHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):
        pass

    def do_GET(self):
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(self.server.body)))
        self.end_headers()
        self.wfile.write(self.server.body)


@pytest.fixture
def deep_server():
    server = _RawServer(b"[" * 100_000 + b"]" * 100_000)
    yield server
    server.shutdown()
    server.server_close()


def test_usage_reconcile_fetching_a_report_that_nests_too_deeply_is_a_sentence_not_a_traceback(settings, deep_server):
    """`manage.py usage_reconcile --provider openai --from D --to D` (no --file) against a usage API
    answering JSON nested 100,000 deep (a broken proxy, a misconfigured OPENAI_ADMIN_BASE_URL).
    analytics/reconcile.py usage_report_fetch catches only ValueError around response.json():
    Was: RecursionError escapes as a traceback (the --file path of the same command catches it).
    Should: CommandError with a sentence ("... answered with something that is not JSON ..."),
    nothing stored."""
    settings.OPENAI_ADMIN_KEY, settings.OPENAI_ADMIN_BASE_URL = "sk-admin-test", deep_server.url
    day = (timezone.now() - timedelta(days=1)).date().isoformat()
    with pytest.raises(CommandError):
        _call("usage_reconcile", "--provider", "openai", "--from", day, "--to", day)
    with rls.privileged(reason="test: nothing stored"):
        assert ReconciliationReport.objects.count() == 0


# --- prices_import: a value of the wrong type taken silently ------------------------------------


def test_prices_import_does_not_take_true_as_a_context_window_of_one_token(catalog, tmp_path):
    """A price map whose gpt-4o entry says `"max_input_tokens": true` (a damaged or hand-edited
    file) next to a new input price. chat/management/commands/prices_import.py _fields checks
    `isinstance(value, int) and value > 0`, and True is an int equal to 1: the new version is stored
    with a context window of 1 token, published by /v1/models and the catalog API, and the command
    says nothing (a price written as true is refused by _per_million, so the intent is plain).
    Was: exit 0, gpt-4o's context window is 1.
    Should: the value is refused (non-zero exit naming the key, nothing written), or ignored."""
    before = catalog["gpt-4o"]
    path = tmp_path / "prices.json"
    path.write_text(
        json.dumps({"gpt-4o": {"litellm_provider": "openai", "mode": "chat", "input_cost_per_token": "0.000009", "max_input_tokens": True}})
    )
    with suppress(CommandError):
        _call("prices_import", str(path))
    with rls.privileged(reason="test"):
        windows = set(ModelPrice.objects.filter(provider="openai", model="gpt-4o").values_list("context_window", flat=True))
    assert windows == {before.context_window}, f"context windows stored: {windows}"


# --- usage_reconcile: a report file whose name is not UTF-8 -------------------------------------


def test_usage_reconcile_with_a_report_file_whose_name_is_not_utf8_is_a_sentence_not_a_traceback(tmp_path):
    r"""`manage.py usage_reconcile --provider openai --from 2026-01-01 --to 2026-01-02 --file r\xe9port.json`
    where the file's name is Latin-1 bytes (a file copied from another system): Python hands the
    name over with a lone surrogate (\udce9), open() reads the file fine, and
    analytics/reconcile.py usage_reconcile_run stores `source = f"file {file}"` on the report.
    Was: UnicodeEncodeError ('surrogates not allowed') from psycopg as the report is saved, a
    traceback. Should: the report is stored with the name shown readably (escaped), or the
    command exits non-zero with a sentence; never a traceback."""
    path = tmp_path / os.fsdecode(b"r\xe9port.json")
    path.write_text(json.dumps({"data": []}))
    try:
        _call("usage_reconcile", "--provider", "openai", "--from", "2026-01-01", "--to", "2026-01-02", "--file", str(path))
    except CommandError:
        pass
    with rls.privileged(reason="test: the report stored"):
        (source,) = ReconciliationReport.objects.values_list("source", flat=True)
    assert source == f"file {tmp_path}/r\\udce9port.json"


def test_the_daily_reconciliation_goes_on_to_the_next_provider_whatever_one_raised(settings, report_server, monkeypatch):  # noqa: F811
    """As above, with an error that is not a ReconciliationFailed (a bug, a database error while
    storing OpenAI's report): logged, recorded as failed, and Anthropic is still reconciled."""
    from analytics import reconcile

    yesterday = timezone.now().astimezone(UTC).date() - timedelta(days=1)
    working = report_server({None: {"data": [_anthropic_bucket(yesterday)], "has_more": False}})
    settings.OPENAI_ADMIN_KEY, settings.ANTHROPIC_ADMIN_KEY = "sk-admin-test", "sk-ant-admin-test"
    settings.ANTHROPIC_ADMIN_BASE_URL = working.url
    real = reconcile.usage_reconcile_run

    def openai_breaks(*, arguments, file=None):
        if arguments.provider == "openai":
            raise RuntimeError("something no one foresaw")
        return real(arguments=arguments, file=file)

    monkeypatch.setattr(reconcile, "usage_reconcile_run", openai_breaks)
    done = analytics_tasks.usage_reconcile_task()
    assert done["openai"] == {"failed": "RuntimeError: something no one foresaw"}
    assert done["anthropic"]["report"]
