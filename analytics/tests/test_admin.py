"""Staff admin for analytics: every model's list and detail pages work for staff across
tenants, nothing can be added, changed or deleted, and the big tables are never counted."""

import uuid
from datetime import timedelta

import pytest
from django.contrib import admin as django_admin
from django.urls import reverse
from django.utils import timezone

from analytics.models import ApiLog, AuditLog, Event, RollupWatermark, TokenUsage, UsageRollup
from analytics.tests.usage_data import usage_world
from config.db import rls

pytestmark = pytest.mark.django_db(transaction=True)

MODELS = (TokenUsage, UsageRollup, RollupWatermark, ApiLog, Event, AuditLog)


@pytest.fixture
def world():
    world = usage_world()
    now = timezone.now()
    with rls.privileged(reason="test: log rows"):
        ApiLog.objects.create(
            request_uuid=uuid.uuid4(),
            user=world.bob,
            route="/api/v1/usage/summary",
            method="GET",
            status=503,
            duration_ms=40,
            created_at=now - timedelta(minutes=3),
            ip="10.0.0.2",
        )
        Event.objects.create(event_uuid=uuid.uuid4(), user=world.bob, organization_id=world.acme.pk, name="bob_clicked")
        AuditLog.objects.create(
            entry_uuid=uuid.uuid4(),
            user=world.bob,
            organization_id=world.acme.pk,
            action="bob.audited",
            table_name="accounts_user",
            record_id=str(world.bob.pk),
        )
    return world


@pytest.fixture
def staff_client(client, world):
    client.force_login(world.staff)
    return client


def url(model, view, *args):
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args)


def one(model):
    with rls.privileged(reason="test"):
        return model.objects.order_by("pk").first()


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_changelist_and_detail_pages_work_for_staff(staff_client, world, model):
    response = staff_client.get(url(model, "changelist"))
    assert response.status_code == 200
    content = response.content.decode()
    if model in (TokenUsage, UsageRollup, ApiLog, Event, AuditLog):
        assert "bob@example.com" in content  # another user's rows: the privileged context is in use
    detail = staff_client.get(url(model, "change", one(model).pk))
    assert detail.status_code == 200
    assert 'name="_save"' not in detail.content.decode()  # a view page, not a form (no save button)


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_nothing_can_be_added_changed_or_deleted(staff_client, world, model):
    model_admin = django_admin.site._registry[model]
    request = type("Request", (), {"user": world.staff})()
    assert not model_admin.has_add_permission(request)
    assert not model_admin.has_change_permission(request)
    assert not model_admin.has_delete_permission(request)
    assert model_admin.has_view_permission(request)
    obj = one(model)
    assert staff_client.get(url(model, "add")).status_code == 403
    assert staff_client.post(url(model, "delete", obj.pk), {"post": "yes"}).status_code == 403
    assert staff_client.post(url(model, "change", obj.pk), {}).status_code == 403
    changelist = staff_client.get(url(model, "changelist")).content.decode()
    assert "delete_selected" not in changelist
    assert model.objects.using("privileged").filter(pk=obj.pk).exists()


def test_the_ledger_is_never_counted_and_is_searched_by_exact_request_id(staff_client, world):
    model_admin = django_admin.site._registry[TokenUsage]
    assert model_admin.show_full_result_count is False
    assert model_admin.date_hierarchy == "created_at"
    assert set(model_admin.list_select_related) == {"user", "organization"}
    row = one(TokenUsage)
    found = staff_client.get(url(TokenUsage, "changelist"), {"q": row.request_id}).content.decode()
    assert row.request_id in found and "1 result" in found
    assert "0 results" in staff_client.get(url(TokenUsage, "changelist"), {"q": row.request_id[:-2]}).content.decode()


def test_ledger_filters_take_their_choices_from_the_rollups(staff_client, world):
    content = staff_client.get(url(TokenUsage, "changelist")).content.decode()
    for choice in ("provider=gemini", "model=bob-only-model", "model=claude-sonnet"):
        assert choice in content
    filtered = staff_client.get(url(TokenUsage, "changelist"), {"model": "bob-only-model"}).content.decode()
    assert "bob-only-model" in filtered and "claude-sonnet</td>" not in filtered


def test_api_log_status_filter_and_search(staff_client, world):
    errors = staff_client.get(url(ApiLog, "changelist"), {"status_class": "5"}).content.decode()
    assert "/api/v1/usage/summary" in errors
    assert "/api/v1/usage/summary" not in staff_client.get(url(ApiLog, "changelist"), {"status_class": "2"}).content.decode()
    assert "/api/v1/usage/summary" in staff_client.get(url(ApiLog, "changelist"), {"q": "/api/v1/usage"}).content.decode()


def test_non_staff_are_sent_to_the_admin_login(client, world):
    client.force_login(world.alice)
    for model in MODELS:
        response = client.get(url(model, "changelist"))
        assert response.status_code == 302 and response["Location"].startswith(reverse("admin:login"))


def test_the_admin_index_links_the_staff_dashboard(staff_client):
    content = staff_client.get(reverse("admin:index")).content.decode()
    assert 'href="/usage/staff/"' in content and "Token usage ledger" in content
