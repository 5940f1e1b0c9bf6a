"""Attack probes on search (page and API): hostile queries and page numbers are a 400 with a
sentence or an ordinary answer, never a 500."""

import pytest
from django.test import Client

from accounts.tests.test_api import session_client
from chat.tests.test_search import _conversation, _user

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def ann(catalog, plans):
    user = _user("ann@example.com")
    _conversation(user, "Zanzibar trip", "ferry to \u202ezanzibar\u202c at dawn")
    return user


QUERIES = {
    "10 MB": ("z" * 10_000_000, 400),
    "NUL": ("zanzibar\x00", 400),
    "bidi override": ("\u202ezanzibar", 200),
    "replacement character (a lone surrogate in the URL)": ("zanzibar\ufffd", 200),
    "only punctuation": ('"-" or -', 200),
}


@pytest.mark.parametrize("name", list(QUERIES))
def test_hostile_queries_on_the_page_and_the_api(ann, name):
    query, status = QUERIES[name]
    page = Client(raise_request_exception=False)
    page.force_login(ann)
    assert page.get("/chat/", {"q": query}).status_code == status
    assert page.get("/chat/", {"q": query}, headers={"HX-Request": "true"}).status_code == status
    answer = session_client(ann).get("/api/v1/search", {"q": query})
    assert answer.status_code == status
    if status == 400:
        assert answer.json()["message"]


def test_absurd_page_numbers(ann):
    page = Client(raise_request_exception=False)
    page.force_login(ann)
    for value in ("9" * 5000, "-1", "1e3", "\u0661"):
        assert page.get("/chat/", {"q": "zanzibar", "page": value}).status_code == 200, value
    api = session_client(ann)
    assert api.get("/api/v1/search", {"q": "zanzibar", "page": str(10**30)}).status_code == 400
    assert api.get("/api/v1/search", {"q": "zanzibar", "page": ["1", "2"]}).status_code == 404  # the last page given: 2, empty
