"""The API answers as its published schema says (found by schemathesis against `make run`,
2026-12-01): a page_size out of range or not a number, and an empty query value for a UUID, a
choice or a date, were quietly read as "use the default" (a 200 the schema did not allow); the
API throttle's 429 was undocumented on every operation; text fields that refuse a blank value did
not say so (minLength)."""

import json
import re

import pytest

from accounts.tests.factories import make_user
from accounts.tests.test_api import key_client
from chat import services
from chat.tests.factories import make_catalog
from config.tests.api_schema import assert_documented, published_schema

pytestmark = pytest.mark.django_db(transaction=True)
API = "/api/v1"
SCOPES = ["chat:read", "chat:write", "account:read", "account:write", "usage:read"]
PAGED = ["/api/v1/conversations", "/api/v1/personas", "/api/v1/shares", "/api/v1/organizations", "/api/v1/provider-credentials"]


@pytest.fixture
def alice():
    return make_user(email="alice@example.com")


@pytest.fixture
def api(alice):
    return key_client(alice, scopes=SCOPES)


@pytest.mark.parametrize("size", ["0", "-1", "abc", "1.5", "201", "null", "", " 5", "٣", "99999999999999999999999"])
@pytest.mark.parametrize("path", PAGED)
def test_a_page_size_out_of_range_is_a_documented_400_with_a_sentence(api, path, size):
    response = api.get(path, {"page_size": size})
    assert response.status_code == 400, (path, size, response.status_code)
    assert response.json()["message"] == "page_size must be a whole number from 1 to 200."
    assert response.json()["extra"] == {"code": "page_size_invalid", "field": "page_size", "max": 200}
    assert_documented(response, path=path, method="GET")


def test_the_message_cursor_checks_its_page_size_too(api, alice):
    make_catalog()
    conversation = services.message_send(user=alice, content="hello").conversation
    url = f"{API}/conversations/{conversation.pk}/messages"
    for size in ("0", "abc", "201"):
        response = api.get(url, {"page_size": size})
        assert response.status_code == 400, size
        assert_documented(response, path="/api/v1/conversations/{conversation_id}/messages", method="GET")
    assert [m["sequence"] for m in api.get(url, {"page_size": "1"}).json()["results"]] == [1]
    assert len(api.get(url, {"page_size": "200"}).json()["results"]) == 2


def test_page_size_within_range_pages(api, alice):
    for title in ("one", "two", "three"):
        services.conversation_create(user=alice, title=title)
    first = api.get(f"{API}/conversations", {"page_size": "2"}).json()
    assert len(first["results"]) == 2 and first["count"] == 3 and "page_size=2" in first["next"]
    assert len(api.get(first["next"]).json()["results"]) == 1


def test_the_schema_publishes_page_size_bounds():
    for path in PAGED:
        [size] = [p for p in published_schema()["paths"][path]["get"]["parameters"] if p["name"] == "page_size"]
        assert (size["schema"]["minimum"], size["schema"]["maximum"]) == (1, 200), path


@pytest.mark.parametrize(
    ("path", "query", "message"),
    [
        ("/api/v1/conversations", "persona_id=", "Invalid input: persona_id: Must be a valid UUID."),
        ("/api/v1/conversations", "organization_id=", "Invalid input: organization_id: Must be a valid UUID."),
        ("/api/v1/usage/summary", "period=", "Invalid input: period: '' is not a period: use day, week, month or 30d."),
        ("/api/v1/usage/daily", "to=", "Invalid input: to: Give the date as YYYY-MM-DD."),
        ("/api/v1/usage/daily", "organization=", "Invalid input: organization: Give the organization's id (a UUID)."),
    ],
)
def test_an_empty_query_value_is_checked_not_taken_as_the_default(api, path, query, message):
    response = api.get(f"{path}?{query}")
    assert (response.status_code, response.json()["message"]) == (400, message)
    assert_documented(response, path=path, method="GET")


def test_an_empty_export_format_is_a_400(api, alice):
    conversation = services.conversation_create(user=alice, title="Tides")
    response = api.get(f"{API}/conversations/{conversation.pk}/export?format=")
    assert response.status_code == 400 and "format" in response.json()["message"]
    assert api.get(f"{API}/conversations/{conversation.pk}/export").status_code == 200


def test_empty_values_that_mean_something_still_work(api, alice):
    services.conversation_create(user=alice, title="Tides")
    assert api.get(f"{API}/conversations?tag=&q=").json()["count"] == 1  # text filters empty: no filter
    assert api.get(f"{API}/conversations?persona_id=a&persona_id=").status_code == 400  # the last value counts


def test_every_operation_documents_the_throttles_429_with_retry_after():
    for path, operations in published_schema()["paths"].items():
        for method, operation in operations.items():
            documented = operation["responses"].get("429")
            assert documented and "Retry-After" in documented["headers"], (method, path)


def test_a_throttled_answer_matches_the_schema(settings, alice):
    settings.THROTTLES = {**settings.THROTTLES, "api": (1, 60)}
    conversation = services.conversation_create(user=alice, title="Tides")
    calls = [
        ("GET", "/api/v1/personas", "/api/v1/personas"),
        ("DELETE", f"/api/v1/conversations/{conversation.pk}", "/api/v1/conversations/{conversation_id}"),
        ("GET", "/api/v1/me", "/api/v1/me"),
    ]
    for method, url, path in calls:
        api = key_client(alice, scopes=SCOPES)  # a fresh key: its own count
        assert api.generic(method, url).status_code != 429
        throttled = api.generic(method, url)
        assert throttled.status_code == 429 and int(throttled["Retry-After"]) > 0
        assert_documented(throttled, path=path, method=method)


def test_text_fields_that_refuse_blank_say_so_in_the_schema_of_requests_only():
    schema = published_schema()
    components = schema["components"]["schemas"]

    def request_body(path: str) -> dict:
        ref = schema["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        return components[ref.rsplit("/", 1)[1]]["properties"]

    for path, field in [
        ("/api/v1/conversations/{conversation_id}/messages", "content"),
        ("/api/v1/personas", "name"),
        ("/api/v1/personas", "system_prompt"),
        ("/api/v1/invitations/accept", "token"),
    ]:
        assert request_body(path)[field].get("minLength") == 1, (path, field)
    answered = schema["paths"]["/api/v1/personas"]["post"]["responses"]["201"]["content"]["application/json"]["schema"]["$ref"]
    assert "minLength" not in components[answered.rsplit("/", 1)[1]]["properties"]["name"]  # an answer is not a request


# --- schemathesis against the running API, 2026-12-03 ------------------------------------------------


def _org(api) -> str:
    return api.post(f"{API}/organizations", {"name": "Acme"}, format="json").json()["id"]


def test_request_bodies_are_json_only_in_the_schema_and_in_the_api(api):
    """A form carries text alone, where an empty value meant "not given" and "0" meant false: a
    PATCH /me with `timezone` empty, or a conversation with `organization_id` empty, was a 200."""
    for path, operations in published_schema()["paths"].items():
        for method, operation in operations.items():
            if "requestBody" in operation:
                wanted = ["multipart/form-data"] if path == "/api/v1/imports" else ["application/json"]
                assert sorted(operation["requestBody"]["content"]) == wanted, (method, path)
                assert "415" in operation["responses"], (method, path)
    for body, content_type in [
        (b'--b\r\nContent-Disposition: form-data; name="timezone"\r\n\r\n\r\n--b--\r\n', "multipart/form-data; boundary=b"),
        (b"timezone=", "application/x-www-form-urlencoded"),
    ]:
        response = api.generic("PATCH", f"{API}/me", body, content_type=content_type)
        assert response.status_code == 415, response.content
        assert response.json()["extra"] == {"code": "unsupported_media_type"}
        assert_documented(response, path="/api/v1/me", method="PATCH")
    assert api.patch(f"{API}/me", {"timezone": ""}, format="json").status_code == 400
    assert api.patch(f"{API}/me", {"timezone": "Europe/Paris"}, format="json").json()["timezone"] == "Europe/Paris"
    response = api.post(f"{API}/imports", {"file": "x"}, format="json")  # the upload takes multipart only
    assert response.status_code == 415
    assert_documented(response, path="/api/v1/imports", method="POST")


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("POST", "/api/v1/organizations", {"name": 0}, "name"),
        ("PATCH", "/api/v1/organizations/{organization_id}", {"name": 5}, "name"),
        ("PATCH", "/api/v1/organizations/{organization_id}", {"auto_join_domain": 5}, "auto_join_domain"),
        ("PATCH", "/api/v1/me", {"first_name": 5}, "first_name"),
        ("PATCH", "/api/v1/me", {"display_name": 1.5}, "display_name"),
        ("PATCH", "/api/v1/me", {"locale": 1}, "locale"),
        ("POST", "/api/v1/api-keys", {"name": 7, "scopes": ["chat:read"]}, "name"),
        ("POST", "/api/v1/provider-credentials", {"provider": "openai", "api_key": 12345678901234567890}, "api_key"),
        ("PATCH", "/api/v1/preferences", {"language": 5}, "language"),
        ("PATCH", "/api/v1/preferences", {"email_notifications": 0}, "email_notifications"),
        ("PATCH", "/api/v1/preferences", {"analytics_opt_out": "yes"}, "analytics_opt_out"),
        ("POST", "/api/v1/invitations/accept", {"token": 12345}, "token"),
        ("POST", "/api/v1/organizations/{organization_id}/subscription", {"plan": 5}, "plan"),
        ("POST", "/api/v1/organizations/{organization_id}/subscription", {"plan": "free", "immediately": 1}, "immediately"),
    ],
)
def test_json_text_and_flags_take_only_json_strings_and_booleans(alice, method, path, body, field):
    api = key_client(alice, scopes=[*SCOPES, "billing:read", "billing:write"])
    url = path.replace("{organization_id}", _org(api)) if "{organization_id}" in path else path
    response = api.generic(method, url, json.dumps(body), content_type="application/json")
    assert response.status_code == 400, (response.status_code, response.content)
    assert field in response.json()["extra"]["fields"], response.json()
    assert_documented(response, path=path, method=method)


def test_an_events_name_or_session_must_be_json_strings_and_the_schema_bounds_the_batch(api):
    for event in ({"name": 5}, {"name": "page_view", "session_id": 7}):
        response = api.post(f"{API}/events", {"events": [event]}, format="json")
        assert response.status_code == 400, response.json()
        assert_documented(response, path="/api/v1/events", method="POST")
    components = published_schema()["components"]["schemas"]
    events = components["EventBatchInRequest"]["properties"]["events"]
    assert (events["minItems"], events["maxItems"]) == (1, 100)
    assert components["EventInRequest"]["properties"]["properties"]["type"] == "object"


def test_the_streamed_send_documents_its_200_event_stream(api, alice):
    make_catalog()
    conversation = services.conversation_create(user=alice, title="Tides")
    path = "/api/v1/conversations/{conversation_id}/messages"
    response = api.post(f"{API}/conversations/{conversation.pk}/messages?stream=true", {"content": "hi"}, format="json")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/event-stream")
    assert b'"type": "done"' in b"".join(response)  # an async body, consumed as the test client can
    assert_documented(response, path=path, method="POST")
    assert "201" in published_schema()["paths"][path]["post"]["responses"]  # the JSON answer stays


@pytest.mark.parametrize(
    ("q", "taken"),
    [
        ("tides", True),
        ("  tides\t\n", True),
        ("a b", True),
        ("x" * 500, True),
        (" " + "x" * 500 + " ", True),
        ("", False),
        ("   ", False),
        ("\t\n", False),
        ("x" * 501, False),
        ("a\tb", False),
        ("\x07", False),
        ("a\x85b", False),
    ],
)
def test_the_search_query_is_published_as_the_search_takes_it(api, q, taken):
    [parameter] = [p for p in published_schema()["paths"]["/api/v1/search"]["get"]["parameters"] if p["name"] == "q"]
    assert parameter["schema"]["minLength"] == 1
    assert bool(re.search(parameter["schema"]["pattern"], q)) is taken
    response = api.get(f"{API}/search", {"q": q})
    assert response.status_code == (200 if taken else 400), response.content
    assert_documented(response, path="/api/v1/search", method="GET")


def test_the_import_file_is_published_as_not_empty(api):
    schema = published_schema()
    ref = schema["paths"]["/api/v1/imports"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"]
    file = schema["components"]["schemas"][ref.rsplit("/", 1)[1]]["properties"]["file"]
    assert (file["format"], file["minLength"]) == ("binary", 1)
