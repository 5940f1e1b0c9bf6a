"""The API's shared base (config/api): one error shape whose `extra` always carries a
machine-readable `code`, JSON 404s under /api/ with DEBUG on or off, bounded JSON bodies,
and Swagger UI served from our own static files."""

import json

import pytest
import yaml
from django.contrib.staticfiles import finders
from rest_framework.test import APIClient

from accounts.tests.factories import make_user

pytestmark = pytest.mark.django_db(transaction=True)

SIDECAR = "/static/drf_spectacular_sidecar/swagger-ui-dist/"


@pytest.fixture
def api():
    client = APIClient()
    client.force_login(make_user())
    return client


def _error(response, status: int) -> dict:
    body = response.json()
    assert response.status_code == status, body
    assert set(body) == {"message", "extra"}, body
    assert isinstance(body["extra"].get("code"), str) and body["extra"]["code"], body
    return body


@pytest.mark.parametrize("debug", [False, True])
@pytest.mark.parametrize("path", ["/api/v1/no-such-thing", "/api/nothing-here", "/api/v2/me"])
def test_unknown_api_paths_answer_the_json_error_shape(client, settings, debug, path):
    settings.DEBUG = debug
    body = _error(client.get(path), 404)
    assert body["extra"]["code"] == "not_found"
    assert body["message"] == f"No API endpoint at {path}."


def test_every_api_error_carries_a_code(client, api):
    assert _error(client.get("/api/v1/me"), 401)["extra"]["code"] == "not_authenticated"
    invalid = _error(api.patch("/api/v1/me", {"timezone": "Mars/Olympus"}, format="json"), 400)
    assert invalid["extra"]["code"] == "invalid"
    assert "timezone" in invalid["extra"]["fields"]
    # An ApplicationError raised by a view or service.
    assert _error(api.post("/api/v1/events", {"events": []}, format="json"), 400)["extra"]["code"] == "invalid"
    # A domain error subclass names itself.
    malformed = _error(api.post("/api/v1/provider-credentials", {"provider": "openai", "api_key": "nope"}, format="json"), 400)
    assert malformed["extra"]["code"] == "malformed_provider_key"


def _nested(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


def test_deeply_nested_json_is_a_400_not_a_500(api):
    body = _error(api.post("/api/v1/events", "[" * 2000 + "]" * 2000, content_type="application/json"), 400)
    assert body["extra"]["code"] == "parse_error"
    assert "nested deeper than 64" in body["message"]
    too_deep = json.dumps({"events": [{"name": "deep", "properties": json.loads(_nested(62))}]})
    assert "nested deeper than 64" in _error(api.post("/api/v1/events", too_deep, content_type="application/json"), 400)["message"]


def test_a_lone_surrogate_quoted_back_in_an_error_is_a_400_not_a_500(api):
    """A choice field's error quotes the input; a lone surrogate in it (valid JSON text, not valid
    UTF-8) failed DRF's encoding of the answer."""
    response = api.patch("/api/v1/preferences", '{"theme": "\\udc80"}', content_type="application/json")
    body = _error(response, 400)
    assert "theme" in body["extra"]["fields"] and "\\udc80" in response.content.decode()  # escaped, the same JSON


def test_nesting_within_the_bound_is_accepted(api):
    # The body (1) > events (2) > the event (3) > properties and 60 objects inside it (61) = 64.
    body = json.dumps({"events": [{"name": "deep", "properties": json.loads(_nested(61))}]})
    response = api.post("/api/v1/events", body, content_type="application/json")
    assert response.status_code == 202, response.json()


def test_brackets_inside_strings_do_not_count_as_nesting(api):
    body = json.dumps({"events": [{"name": "brackets", "properties": {"text": "[{" * 500}}]})
    assert api.post("/api/v1/events", body, content_type="application/json").status_code == 202


def test_an_oversized_json_body_is_a_400(api, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    body = json.dumps({"events": [{"name": "big", "properties": {"text": "x" * 2000}}]})
    error = _error(api.post("/api/v1/events", body, content_type="application/json"), 400)
    assert error["extra"]["code"] == "too_large"
    assert "1000 bytes" in error["message"]


def test_swagger_ui_is_served_from_our_own_static_files(client):
    response = client.get("/api/docs/")
    assert response.status_code == 200
    html = response.content.decode()
    for asset in ("swagger-ui.css", "swagger-ui-bundle.js", "swagger-ui-standalone-preset.js"):
        assert f"{SIDECAR}{asset}" in html
        assert finders.find(f"drf_spectacular_sidecar/swagger-ui-dist/{asset}")
    assert "//cdn" not in html and "https://" not in html
    # Inline script or style would be refused by the Content-Security-Policy.
    assert "<style" not in html
    assert "<script>" not in html
    script = client.get("/api/docs/?script=")
    assert script.status_code == 200
    assert "SwaggerUIBundle" in script.content.decode()


def test_the_schema_has_one_error_component(client):
    schema = yaml.safe_load(client.get("/api/schema/").content)
    components = schema["components"]["schemas"]
    error_shapes = [name for name, c in components.items() if set(c.get("properties", {})) == {"message", "extra"}]
    assert error_shapes == ["ErrorOut"]
