"""config/api/negotiation.ContentNegotiation answers as DRF's own negotiation does, and keeps
nothing a client chose beyond the common Accept headers."""

import pytest
from rest_framework import exceptions
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.renderers import BrowsableAPIRenderer
from rest_framework.request import Request
from rest_framework.test import APIRequestFactory

from config.api import negotiation
from config.api.renderers import JSONRenderer

ACCEPTS = [None, "*/*", "application/json", "text/html", "application/json; indent=4", "text/html;q=0.9, application/json", "application/*"]


def _select(negotiator, accept, query=""):
    headers = {} if accept is None else {"HTTP_ACCEPT": accept}
    request = Request(APIRequestFactory().get("/api/v1/models" + query, **headers))
    renderers = [JSONRenderer(), BrowsableAPIRenderer()]
    renderer, media_type = negotiator.select_renderer(request, renderers)
    return renderers.index(renderer), media_type


def _outcome(negotiator, accept, query=""):
    """(renderer's index, media type), or the refusal DRF raises (a 406 for ?format=api with JSON only)."""
    try:
        return _select(negotiator, accept, query)
    except exceptions.APIException as refusal:
        return type(refusal)


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    monkeypatch.setattr(negotiation, "_answers", {})


@pytest.mark.parametrize("query", ["", "?format=api", "?format=json"])
@pytest.mark.parametrize("accept", ACCEPTS)
def test_the_same_renderer_and_media_type_as_drf(accept, query):
    for _ in range(2):  # the second answer comes from what the first kept
        assert _outcome(negotiation.ContentNegotiation(), accept, query) == _outcome(DefaultContentNegotiation(), accept, query)


def test_only_the_common_accept_headers_are_kept():
    for accept in ACCEPTS:
        _select(negotiation.ContentNegotiation(), accept)
    kept = {accept for accept, _classes in negotiation._answers}
    assert kept == {"*/*", "application/json"}  # no header at all is */*; nothing else a client sent


def test_an_unacceptable_type_is_still_a_406():
    with pytest.raises(exceptions.NotAcceptable):
        _select(negotiation.ContentNegotiation(), "text/csv")
    assert not negotiation._answers


def test_the_api_uses_it(settings):
    from rest_framework.settings import api_settings

    assert api_settings.DEFAULT_CONTENT_NEGOTIATION_CLASS is negotiation.ContentNegotiation


def test_what_one_request_chose_with_format_is_not_the_answer_for_the_next():
    ours, drf = negotiation.ContentNegotiation(), DefaultContentNegotiation()
    for query in ["?format=api", "", "?format=json", "", "?format=api"]:
        for accept in ACCEPTS:
            assert _outcome(ours, accept, query) == _outcome(drf, accept, query), (accept, query)
