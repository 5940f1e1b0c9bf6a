"""Attack probe: Redis (cache and Celery broker) stopped, then each #17 surface is used.
None may answer a 500: search (page and API), import upload (page and API), export start (page
and API), the gateway. The share page's own outage test is in test_share.py."""

import io
import json

import pytest
from django.test import Client

from accounts.services import api_key_create
from chat import services
from chat.models import ExportJob, ImportJob
from chat.porting import exporter, jobs
from config import embedded
from config.db import rls

pytestmark = pytest.mark.django_db(transaction=True)
CLAUDE = [{"uuid": "c1", "name": "Probe", "chat_messages": [{"sender": "human", "text": "Hello there"}]}]


def test_with_redis_stopped_no_new_surface_answers_a_500(own_redis, alice, settings, tmp_path):
    settings.CHAT_IMPORT_DIR = tmp_path / "imports"
    services.conversation_create(user=alice, title="Lisbon packing")
    with rls.privileged(reason="test: issue an API key"):
        _, secret = api_key_create(user=alice, name="outage", scopes=["chat:read", "chat:write"])
    page = Client(raise_request_exception=False)
    page.force_login(alice)
    api = Client(raise_request_exception=False, HTTP_AUTHORIZATION=f"Bearer {secret}")
    embedded.redis_stop(own_redis)

    answers = {
        "search page": page.get("/chat/", {"q": "lisbon"}).status_code,
        "search page (htmx)": page.get("/chat/", {"q": "lisbon"}, headers={"HX-Request": "true"}).status_code,
        "search API": api.get("/api/v1/search", {"q": "lisbon"}).status_code,
        "import upload": page.post("/chat/porting/", {"file": io.BytesIO(json.dumps(CLAUDE).encode())}).status_code,
        "import API": api.post("/api/v1/imports", {"file": io.BytesIO(json.dumps(CLAUDE).encode())}).status_code,
        "export start page": page.post("/chat/porting/export/").status_code,
        "export start API": api.post("/api/v1/exports").status_code,
        "gateway": api.post(
            "/v1/chat/completions", {"model": "echo-1", "messages": [{"role": "user", "content": "hi"}]}, content_type="application/json"
        ).status_code,
    }
    assert answers == {
        "search page": 200,
        "search page (htmx)": 200,
        "search API": 200,
        "import upload": 302,  # back to the page, which says why
        "import API": 503,
        "export start page": 302,  # back to the page, which says why
        "export start API": 503,
        "gateway": 200,
    }
    # Fails closed: each job is kept as failed with the reason (no pending job waits for a task never queued).
    with rls.privileged(reason="test"):
        assert set(ExportJob.objects.filter(user_id=alice.pk).values_list("status", "error")) == {("failed", exporter.NOT_QUEUED)}
        assert list(ImportJob.objects.filter(user_id=alice.pk).values_list("status", "error")) == [("failed", jobs.NOT_QUEUED)] * 2
    assert list(settings.CHAT_IMPORT_DIR.iterdir()) == []  # the saved uploads are removed, nothing half-done
    porting = page.get("/chat/porting/")
    assert porting.status_code == 200 and "could not be queued" in porting.content.decode()
    assert porting.content.decode().count(jobs.NOT_QUEUED) >= 2  # each import job says why
