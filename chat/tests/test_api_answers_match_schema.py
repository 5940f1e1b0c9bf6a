"""Answers that once differed from the published schema (found by schemathesis against `make run`):
a null expiry or revocation on share links, a blank base URL on provider credentials, and the
409 of a second export or import started while one runs. Each is checked against /api/schema/."""

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from accounts.tests.test_api import key_client
from chat import services
from chat.porting import exporter, jobs
from chat.tests.porting_files import CLAUDE_SINGLE
from config.tests.api_schema import assert_documented

pytestmark = pytest.mark.django_db(transaction=True)
API = "/api/v1"


@pytest.fixture(autouse=True)
def job_dirs(settings, tmp_path):
    settings.CHAT_EXPORT_DIR, settings.CHAT_IMPORT_DIR = tmp_path / "exports", tmp_path / "imports"


def test_share_links_without_an_expiry_or_a_revocation_match_the_schema(alice):
    api = key_client(alice, scopes=["chat:read", "chat:write"])
    conversation = services.conversation_create(user=alice, title="Tides")
    created = api.post(f"{API}/conversations/{conversation.pk}/shares", {}, format="json")
    assert created.json()["expires_at"] is None and created.json()["revoked_at"] is None
    assert_documented(created, path="/api/v1/conversations/{conversation_id}/shares", method="POST")
    assert_documented(api.get(f"{API}/shares"), path="/api/v1/shares", method="GET")


def test_a_provider_credential_without_a_base_url_matches_the_schema(alice):
    api = key_client(alice, scopes=["account:read", "account:write"])
    created = api.post(f"{API}/provider-credentials", {"provider": "openai", "access_type": "free_tier"}, format="json")
    assert created.status_code == 201 and created.json()["base_url"] == ""
    assert_documented(created, path="/api/v1/provider-credentials", method="POST")
    assert_documented(api.get(f"{API}/provider-credentials"), path="/api/v1/provider-credentials", method="GET")
    one = api.get(f"{API}/provider-credentials/{created.json()['id']}")
    assert_documented(one, path="/api/v1/provider-credentials/{credential_id}", method="GET")


def test_a_second_export_or_import_while_one_runs_is_a_documented_409(alice):
    api = key_client(alice, scopes=["chat:read", "chat:write"])
    exporter.export_job_create(user=alice)  # no worker: it stays pending
    jobs.import_job_create(user=alice, upload=SimpleUploadedFile("c.json", CLAUDE_SINGLE.read_bytes()))
    again = api.post(f"{API}/exports")
    assert again.status_code == 409
    assert_documented(again, path="/api/v1/exports", method="POST")
    upload = api.post(f"{API}/imports", {"file": SimpleUploadedFile("d.json", CLAUDE_SINGLE.read_bytes())}, format="multipart")
    assert upload.status_code == 409
    assert_documented(upload, path="/api/v1/imports", method="POST")


def test_a_page_past_the_end_of_a_list_is_a_documented_404(alice):
    api = key_client(alice, scopes=["chat:read", "chat:write"])
    for path in ("/api/v1/conversations", "/api/v1/shares", "/api/v1/personas"):
        past = api.get(path, {"page": 9999})
        assert past.status_code == 404
        assert_documented(past, path=path, method="GET")
    conversation = services.conversation_create(user=alice, title="Tides")
    forged = api.get(f"{API}/conversations/{conversation.pk}/messages", {"cursor": "not base64!"})
    assert forged.status_code == 404
    assert_documented(forged, path="/api/v1/conversations/{conversation_id}/messages", method="GET")


def test_a_conversation_exported_as_markdown_has_a_documented_content_type(alice):
    api = key_client(alice, scopes=["chat:read", "chat:write"])
    conversation = services.conversation_create(user=alice, title="Tides")
    for kind in ("json", "md"):
        exported = api.get(f"{API}/conversations/{conversation.pk}/export", {"format": kind})
        assert exported.status_code == 200
        assert_documented(exported, path="/api/v1/conversations/{conversation_id}/export", method="GET")
