"""The query parameters of the list endpoints and the gateway attacked: `format`, too many
parameters, an empty page or cursor. Each test's docstring: what is done, what happened ("Was:"),
what should."""

import pytest
from django.core.exceptions import PermissionDenied, SuspiciousOperation, TooManyFieldsSent
from django.http import Http404
from django.test import Client

from accounts.tests.factories import make_user
from accounts.tests.test_api import key_client
from chat import services
from chat.tests.factories import make_catalog
from config.db import rls

pytestmark = pytest.mark.django_db(transaction=True)
API = "/api/v1"
SCOPES = ["chat:read", "chat:write", "account:read", "account:write", "usage:read"]


@pytest.fixture
def alice():
    make_catalog()
    return make_user(email="alice@example.com")


def _gateway_key(user) -> str:
    from accounts.services import api_key_create

    with rls.privileged(reason="test: issue an API key"):
        return api_key_create(user=user, name="gateway", scopes=["chat:read", "chat:write"])[1]


def _openai_shaped_and_not_a_500(response):
    body = response.json()
    assert response.status_code < 500, (response.status_code, body)
    if response.status_code >= 400:
        assert set(body) == {"error"} and body["error"]["message"] and body["error"]["code"] != "server_error", body


@pytest.mark.parametrize("value", ["xml", "api"])
def test_a_format_query_parameter_on_the_gateway_is_not_a_500(alice, value):
    """GET /v1/models?format=xml (and POST /v1/chat/completions?format=...), with a key or with
    none at all. Was: 500 "Internal server error; it has been logged." in OpenAI's shape, and a
    logged exception per request, for anyone on the internet: DRF's content negotiation raises
    Django's Http404 for a `format` no renderer has, and the gateway's own exception handler
    (chat/gateway.exception_handler) knows only APIException, ApplicationError and
    RequestDataTooBig, so Http404 falls to its 500 branch. Should: OpenAI's API has no `format`
    parameter: ignore it (the models list, 200; 401 without a key), or at worst answer a 4xx in
    OpenAI's shape, never a 500."""
    secret = _gateway_key(alice)
    keyed = Client(raise_request_exception=False, HTTP_AUTHORIZATION=f"Bearer {secret}")
    anonymous = Client(raise_request_exception=False)
    _openai_shaped_and_not_a_500(keyed.get(f"/v1/models?format={value}"))
    _openai_shaped_and_not_a_500(anonymous.get(f"/v1/models?format={value}"))
    body = '{"model": "echo-1", "messages": [{"role": "user", "content": "hi"}]}'
    _openai_shaped_and_not_a_500(keyed.post(f"/v1/chat/completions?format={value}", body, content_type="application/json"))
    _openai_shaped_and_not_a_500(anonymous.post(f"/v1/chat/completions?format={value}", body, content_type="application/json"))


def test_too_many_query_parameters_on_the_gateway_are_not_a_500(alice):
    """GET /v1/models (and a completion) with 1,001 query parameters (past Django's
    DATA_UPLOAD_MAX_NUMBER_FIELDS), with or without a key. Was: 500 "Internal server error"
    (Django raises TooManyFieldsSent when the negotiation first read request.GET, and the gateway's
    handler turned anything it did not know into a 500). Should: never a 500: the gateway reads no
    query (it has no parameters there) and answers as without them; the API's own answer is 400."""
    many = "&".join(f"p{i}=1" for i in range(1001))
    secret = _gateway_key(alice)
    for client in (Client(raise_request_exception=False, HTTP_AUTHORIZATION=f"Bearer {secret}"), Client(raise_request_exception=False)):
        _openai_shaped_and_not_a_500(client.get(f"/v1/models?{many}"))
        _openai_shaped_and_not_a_500(client.post(f"/v1/chat/completions?{many}", '{"model": "echo-1"}', content_type="application/json"))
    api = key_client(alice, scopes=SCOPES)
    api.raise_request_exception = False
    assert api.get(f"{API}/conversations?{many}").status_code == 400  # the API's own answer to the same query


@pytest.mark.parametrize(
    "exc, status, message",
    [
        (TooManyFieldsSent("too many"), 400, "The request has more than 1,000 parameters."),
        (SuspiciousOperation("odd"), 400, "The request was malformed."),
        (Http404("gone"), 404, "Not found."),
        (PermissionDenied("no"), 403, "You do not have permission to do that."),
    ],
)
def test_the_gateways_handler_answers_djangos_own_refusals_in_openais_shape(exc, status, message):
    """Django's refusals raised inside a gateway view were a 500 "Internal server error"."""
    from chat.gateway import exception_handler

    response = exception_handler(exc, {})
    assert (response.status_code, response.data["error"]["message"]) == (status, message)


def test_an_empty_page_or_cursor_is_checked_not_taken_as_the_first_page(alice):
    """GET /api/v1/conversations?page= and GET .../messages?cursor= (a client whose page variable
    was unset). Was: 200 with the first page, as if neither had been sent; `?page=abc` and
    `?page=0` are 404 "Invalid page.", a forged cursor 404 "Invalid cursor", and on /api/v1/search
    `?page=` is a 400: README says "A query value given empty (`?persona_id=`, `?period=`) is
    checked like any other, not taken as 'the default'" (config/api/inputs.validated_query does
    so for filters, StrictPageSize for `page_size=`; DRF's PageNumberPagination.get_page_number
    reads `page` with `or 1` and CursorPagination decodes "" as no position). Should: an empty
    `page` is refused as `page=abc` is (a 4xx with a sentence), an empty `cursor` as any cursor
    the API did not issue."""
    conversation = services.message_send(user=alice, content="hello").conversation
    api = key_client(alice, scopes=SCOPES)
    assert api.get(f"{API}/search?q=hello&page=").status_code == 400  # the search checks its empty page already
    urls = (f"{API}/conversations?page=", f"{API}/personas?page=", f"{API}/conversations/{conversation.pk}/messages?cursor=")
    taken = {url: api.get(url).status_code for url in urls}
    assert all(status in (400, 404) for status in taken.values()), taken


def test_an_unknown_format_is_a_400_that_names_it_not_not_found(alice):
    """GET /api/v1/conversations?format=csv (a client hoping for another format; any list or
    endpoint). Was: 404 {"message": "Not found."}, on an endpoint that exists, and before
    authentication: an anonymous caller gets the same 404 instead of a 401 (DRF's negotiation
    raises Http404 for a format no renderer has; config/api/errors.exception_handler turns it into
    NotFound). Should: a 400 whose message says `format` is not one the API serves (json), as
    every other bad query value is ("Bad input gets a clear error: a 400 with a message saying
    what is wrong")."""
    services.conversation_create(user=alice, title="Tides")
    api = key_client(alice, scopes=SCOPES)
    for path in (f"{API}/conversations", f"{API}/organizations", f"{API}/usage/summary"):
        response = api.get(f"{path}?format=csv")
        assert response.status_code == 400, (path, response.status_code, response.json())
        assert "format" in response.json()["message"], response.json()
