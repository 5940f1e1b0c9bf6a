"""The API answers as its published schema says (found by schemathesis against `make run`,
2026-12-01): a page_size out of range or not a number, and an empty query value for a UUID, a
choice or a date, were quietly read as "use the default" (a 200 the schema did not allow); the
API throttle's 429 was undocumented on every operation; text fields that refuse a blank value did
not say so (minLength)."""

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
    assert api.get(f"{API}/conversations?archived=&tag=&q=").json()["count"] == 1  # archived empty: either state
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
