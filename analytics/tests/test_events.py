"""Product events: POST /api/v1/events keeps the valid events of a batch and reports the
rest by index; server events through event_track; opted-out users are not tracked."""

import uuid
from datetime import timedelta

import pytest
import yaml
from django.utils import timezone
from openapi_spec_validator import validate
from rest_framework.test import APIClient

from accounts import services as account_services
from analytics import buffer, services
from analytics.models import Event
from analytics.tests.factories import make_member
from config.db import rls

pytestmark = pytest.mark.django_db(transaction=True)

URL = "/api/v1/events"


def _session(user) -> APIClient:
    client = APIClient()
    client.force_login(user)
    return client


def _events():
    return list(Event.objects.using("privileged").order_by("created_at", "name"))


def test_a_mixed_batch_keeps_the_good_events_and_reports_the_bad_by_index():
    user, _ = make_member()
    occurred = timezone.now() - timedelta(hours=2)
    response = _session(user).post(
        URL,
        {
            "events": [
                {"name": "page_view", "properties": {"path": "/chat"}},
                {"properties": {"path": "/x"}},  # no name
                {"name": "button_click", "properties": {"id": "new"}, "occurred_at": occurred.isoformat(), "session_id": "s-1"},
                {"name": "bad props", "properties": ["not", "an", "object"]},
                "not an object",
                {"name": "signup_seen"},
            ]
        },
        format="json",
    )
    assert response.status_code == 202, response.json()
    body = response.json()
    assert body["accepted"] == 3
    assert [r["index"] for r in body["rejected"]] == [1, 3, 4]
    assert "name" in body["rejected"][0]["errors"] and "properties" in body["rejected"][1]["errors"]
    assert _events() == []  # queued, not written on the request path
    assert buffer.buffer_flush("event") == 3
    stored = {e.name: e for e in _events()}
    assert set(stored) == {"page_view", "button_click", "signup_seen"}
    assert all(e.user_id == user.pk and e.source == "client" for e in stored.values())
    assert stored["button_click"].created_at == occurred and stored["button_click"].session_id == "s-1"
    assert stored["page_view"].properties == {"path": "/chat"}


def test_more_than_100_events_are_refused_with_a_sentence():
    user, _ = make_member()
    response = _session(user).post(URL, {"events": [{"name": "e"}] * 101}, format="json")
    assert response.status_code == 400
    assert response.json()["message"] == "Send at most 100 events per request; this one has 101."
    assert buffer.buffer_length("event") == 0
    assert _session(user).post(URL, {"events": [{"name": "e"}] * 100}, format="json").json()["accepted"] == 100


@pytest.mark.parametrize("payload", [{}, {"events": []}, {"events": "x"}, ["not", "an", "object"]])
def test_a_request_without_an_events_list_is_refused(payload):
    user, _ = make_member()
    response = _session(user).post(URL, payload, format="json")
    assert response.status_code == 400
    assert set(response.json()) == {"message", "extra"}


def test_an_all_bad_batch_is_a_400_with_the_errors_of_each_event():
    user, _ = make_member()
    now = timezone.now()
    response = _session(user).post(
        URL,
        {
            "events": [
                {"name": "future", "occurred_at": (now + timedelta(minutes=10)).isoformat()},
                {"name": "ancient", "occurred_at": (now - timedelta(days=8)).isoformat()},
                {"name": "big", "properties": {"blob": "x" * 9000}},
                {"name": "long session", "session_id": "s" * 65},
                {"name": "not a date", "occurred_at": "yesterday"},
                {"name": "bad/name!"},
            ]
        },
        format="json",
    )
    assert response.status_code == 400
    body = response.json()
    assert body["message"] == "None of the 6 events is valid; see extra.rejected."
    errors = {r["index"]: r["errors"] for r in body["extra"]["rejected"]}
    assert "future" in errors[0]["occurred_at"][0]
    assert "older than 7 days" in errors[1]["occurred_at"][0]
    assert "8 KB" in errors[2]["properties"][0]
    assert "session_id" in errors[3] and "occurred_at" in errors[4] and "name" in errors[5]
    assert buffer.buffer_length("event") == 0


def test_occurred_at_within_the_allowed_window_is_kept():
    user, _ = make_member()
    now = timezone.now()
    response = _session(user).post(
        URL,
        {
            "events": [
                {"name": "soon", "occurred_at": (now + timedelta(minutes=4)).isoformat()},
                {"name": "last week", "occurred_at": (now - timedelta(days=6, hours=23)).isoformat()},
            ]
        },
        format="json",
    )
    assert response.json() == {"accepted": 2, "rejected": []}


def test_authentication_and_the_api_key_scope():
    user, _ = make_member()
    assert APIClient().post(URL, {"events": [{"name": "e"}]}, format="json").status_code == 401
    for scopes, expected in ((["account:read", "usage:read"], 403), (["account:write"], 202)):
        with rls.privileged(reason="test"):
            _, secret = account_services.api_key_create(user=user, name="events", scopes=scopes)
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
        assert client.post(URL, {"events": [{"name": "e"}]}, format="json").status_code == expected
    assert buffer.buffer_length("event") == 1


def test_server_events_record_user_and_organization_and_skip_opted_out_users():
    user, org = make_member()
    quiet, quiet_org = make_member()
    with rls.privileged(reason="test: preferences"):
        account_services.preferences_update(user=quiet, analytics_opt_out=True)
        tracked = services.event_track(name="conversation.created", user=user, organization_id=org, properties={"n": 1})
        skipped = services.event_track(name="conversation.created", user=quiet, organization_id=quiet_org)
    assert isinstance(tracked, uuid.UUID) and skipped is None
    assert services.event_track(name="system.started") is not None  # no user: nothing to opt out of
    response = _session(quiet).post(URL, {"events": [{"name": "page_view"}]}, format="json")
    assert response.json() == {"accepted": 0, "rejected": []}
    assert buffer.buffer_flush("event") == 2
    stored = Event.objects.using("privileged").get(event_uuid=tracked)
    assert (stored.user_id, stored.organization_id, stored.source, stored.properties) == (user.pk, org, "server", {"n": 1})
    assert not Event.objects.using("privileged").filter(user_id=quiet.pk).exists()


def test_the_events_endpoint_is_in_the_openapi_schema():
    response = APIClient().get("/api/schema/")
    schema = yaml.safe_load(response.content)
    validate(schema)
    operation = schema["paths"]["/api/v1/events"]["post"]
    assert operation["operationId"] == "events_track"
    assert "account:write" in operation["description"]
    assert set(operation["responses"]) >= {"202", "400"}
    request = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert request.endswith("/EventBatchInRequest")  # request components are apart (COMPONENT_SPLIT_REQUEST)
