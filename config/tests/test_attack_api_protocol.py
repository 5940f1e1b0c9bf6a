"""The HTTP API as a protocol (review 26): schemathesis 4.32 with every check, negative data and
stateful links against a real server (config/tests/serving.py), then by hand: methods, content
types and charsets, Accept headers, repeated and array-form query values, path spellings, ids in
other spellings, and the gateway's OpenAI fields. Each test's "Was:" is a bug it found."""

import json
import uuid

import pytest
from django.conf import settings
from django.test import Client

from accounts.tests.factories import make_user
from accounts.tests.test_api import key_client
from billing.tests.factories import make_plans
from chat import selectors, services
from chat.tests.factories import make_catalog
from config.asgi import OneHopASGIHandler
from config.tests.api_schema import assert_documented, published_schema
from config.tests.test_attack_thread_reuse import serve

pytestmark = pytest.mark.django_db(transaction=True)
API = "/api/v1"
SCOPES = ["chat:read", "chat:write", "account:read", "account:write", "usage:read"]


@pytest.fixture
def alice():
    make_catalog()
    make_plans()
    return make_user(email="alice@example.com")


@pytest.fixture
def api(alice):
    return key_client(alice, scopes=SCOPES)


def test_a_streamed_send_that_asks_for_server_sent_events_is_answered_not_refused(api, alice):
    """POST /api/v1/conversations/{id}/messages?stream=true with `Accept: text/event-stream`, the
    header every server-sent-events client sends (EventSource, fetch-event-source, httpx-sse) and
    the very media type /api/schema/ documents for this operation's 200.
    Was: 406 "Could not satisfy the request Accept header." — DRF negotiates the view's renderers
    (JSON, browsable HTML) before the view runs, and neither renders text/event-stream, so only a
    client that also accepts JSON (or */*) gets the stream it asked for.
    Should: 200 with the events, as for `Accept: */*`."""
    conversation = services.conversation_create(user=alice, title="Tides")
    url = f"{API}/conversations/{conversation.pk}/messages?stream=true"
    response = api.post(url, {"content": "hi"}, format="json", HTTP_ACCEPT="text/event-stream")
    assert response.status_code == 200, (response.status_code, response.content[:200])
    assert response["Content-Type"].startswith("text/event-stream")
    assert b'"type": "done"' in b"".join(response)
    assert_documented(response, path="/api/v1/conversations/{conversation_id}/messages", method="POST")


@pytest.mark.parametrize("field", ["persona_id", "organization_id"])
def test_an_id_sent_as_a_json_number_or_boolean_is_refused_not_read_as_a_uuid(api, alice, field):
    """PATCH/POST a conversation with `persona_id` or `organization_id` as a JSON number (the id's
    128-bit integer) or `true`, where the schema says a string in UUID format.
    Was: DRF's UUIDField turns any integer into uuid.UUID(int=...), a boolean too (True is 1): the
    integer spelling of one's own persona is a 200 that sets it, of one's organization a 201 that
    files the conversation there; `true` is read as 00000000-...-0001 and answered 404 "No such
    persona." (or "Not found.") as if an id had been sent; on PATCH `organization_id: false` is a 200.
    README: "a text field takes only a JSON string" (config/api/inputs.StringField) — an id is text.
    Should: 400 naming the field, as for any other value that is not a UUID string."""
    persona = services.persona_create(user=alice, name="Helper", system_prompt="Be brief.")
    own = {"persona_id": persona.pk, "organization_id": services.conversation_create(user=alice).organization_id}[field]
    conversation = services.conversation_create(user=alice, title="Tides")
    answers = {}
    for value in (int(uuid.UUID(str(own))), True, False):
        body = json.dumps({field: value})
        answers[f"POST {value!r}"] = api.generic("POST", f"{API}/conversations", body, content_type="application/json")
        answers[f"PATCH {value!r}"] = api.generic("PATCH", f"{API}/conversations/{conversation.pk}", body, content_type="application/json")
    taken = {label: (r.status_code, r.json().get("message")) for label, r in answers.items() if r.status_code != 400}
    assert not taken, f"a JSON number or boolean taken for {field}: {taken}"
    for response in answers.values():
        assert field in response.json()["extra"]["fields"], response.json()


def test_a_body_over_the_servers_bound_answers_a_413_the_schema_documents(alice):
    """POST /api/v1/conversations declaring a body over REQUEST_BODY_MAX_BYTES, through the
    server's own ASGI handler (config/asgi.py), as README says: "past it the server answers 413
    before reading more, as JSON under /api/".
    Was: the 413 comes, in the API's error shape, but /api/schema/ documents no 413 for any
    operation that takes a body (it documents the 415 of a body of another type, the throttle's
    429 on every operation), so a client generated from the schema has no case for it and
    schemathesis's status_code_conformance fails on it.
    Should: every operation with a request body documents 413 with the error shape (a
    postprocessing hook like config/api/schema.json_only_documented)."""
    secret = key_client(alice, scopes=SCOPES).secret
    declared = str(settings.REQUEST_BODY_MAX_BYTES + 1).encode()
    headers = [(b"authorization", f"Bearer {secret}".encode()), (b"content-type", b"application/json"), (b"content-length", declared)]
    answer = serve(OneHopASGIHandler(), "POST", f"{API}/conversations", headers=headers)
    assert answer["status"] == 413 and json.loads(answer["body"])["extra"]["code"] == "too_large", answer
    undocumented = [
        f"{method.upper()} {path}"
        for path, operations in published_schema()["paths"].items()
        for method, operation in operations.items()
        if "requestBody" in operation and "413" not in operation["responses"]
    ]
    assert not undocumented, f"answer 413 for a body too large, undocumented: {undocumented}"


def test_an_accept_header_the_api_cannot_meet_answers_a_406_the_schema_documents(api):
    """GET /api/v1/conversations (and every other operation) with `Accept: application/xml`.
    Was: 406 {"message": "Could not satisfy the request Accept header.", "extra": {"code":
    "not_acceptable"}} — a fine answer, but /api/schema/ documents no 406 anywhere, so the answer
    matches no documented response (schemathesis's status_code_conformance).
    Should: every operation that negotiates its answer documents 406 with the error shape."""
    response = api.get(f"{API}/conversations", HTTP_ACCEPT="application/xml")
    assert response.status_code == 406 and response.json()["extra"]["code"] == "not_acceptable"
    assert_documented(response, path="/api/v1/conversations", method="GET")


def test_an_api_keys_empty_scope_list_is_refused_as_the_schema_says(api):
    """POST /api/v1/api-keys {"name": "k", "scopes": []} — valid by /api/schema/ (an array of
    scopes, no minimum), found by schemathesis's positive_data_acceptance.
    Was: 400 "scopes: This list may not be empty." while the schema publishes no `minItems`, the
    same gap the project closed for blank text (`minLength: 1`) and for the event batch
    (`minItems`/`maxItems`): a client generated from the schema sends it and is refused.
    Should: the request schema says `minItems: 1` for `scopes` (the API already refuses fewer)."""
    response = api.post(f"{API}/api-keys", {"name": "k", "scopes": []}, format="json")
    assert response.status_code == 400
    schema = published_schema()
    ref = schema["paths"]["/api/v1/api-keys"]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    scopes = schema["components"]["schemas"][ref.rsplit("/", 1)[1]]["properties"]["scopes"]
    assert scopes.get("minItems") == 1, scopes


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": True}, "n"),
        ({"stream": True, "stream_options": {"include_usage": "false"}}, "stream_options"),
        ({"stream": True, "stream_options": {"include_usage": 0}}, "stream_options"),
    ],
)
def test_the_gateway_refuses_openai_fields_of_the_wrong_json_type(alice, extra, param):
    """POST /v1/chat/completions with `n: true`, or `stream_options.include_usage` as the string
    "false" or the number 0.
    Was: 200. `n` is compared with `in (None, 1)`, and True == 1; `include_usage` is read with
    bool(), so the string "false" asks for the usage chunk. README: "Also refused: ... `n` other
    than 1, a `stream` that is not a boolean" — a `stream` of another JSON type is refused for this
    very reason (chat/tests/test_attack_limits_and_gateway_fields.py), and OpenAI's API refuses
    both ("expected an integer, but got a boolean").
    Should: 400 in OpenAI's shape naming the parameter, before anything is metered."""
    secret = key_client(alice, scopes=["chat:read", "chat:write"]).secret
    body = {"model": "echo-1", "messages": [{"role": "user", "content": "hi"}], **extra}
    response = Client(raise_request_exception=False).post(
        "/v1/chat/completions", json.dumps(body), content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {secret}"
    )
    if response.streaming:
        b"".join(response)
    assert response.status_code == 400, (response.status_code, extra)
    assert (response.json()["error"]["param"] or "").startswith(param), response.json()
    assert selectors.conversation_list(user=alice).count() == 0


@pytest.mark.parametrize(
    ("method", "query", "accept"),
    [("GET", "", "text/event-stream"), ("POST", "", "text/event-stream"), ("POST", "?stream=true", "text/event-stream;q=0")],
)
def test_only_a_streamed_send_takes_an_accept_of_events_alone(api, alice, method, query, accept):
    """The stream's way through negotiation is for a send that asks for one: a list, a send
    without `stream`, or an Accept that refuses events (q=0) is the documented 406."""
    conversation = services.conversation_create(user=alice, title="Tides")
    response = api.generic(
        method,
        f"{API}/conversations/{conversation.pk}/messages{query}",
        json.dumps({"content": "hi"}),
        "application/json",
        HTTP_ACCEPT=accept,
    )
    assert response.status_code == 406, (response.status_code, response.content[:200])
