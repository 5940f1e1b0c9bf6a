"""Attack probes on search (page and API): hostile queries and page numbers are a 400 with a
sentence or an ordinary answer, never a 500."""

import psycopg
import pytest
from django.test import Client

from accounts.tests.test_api import session_client
from chat import selectors
from chat.models import Conversation
from chat.tests.test_search import _conversation, _user
from config.db import rls

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


def test_raw_sql_trigger_functions_cannot_be_called_and_a_planted_row_finds_nothing_of_the_owner(raw_app_connection, ann):
    eve = _user("eve@example.com")
    _conversation(eve, "Eve's notes", "nothing here")
    with rls.privileged(reason="test"):
        anns = Conversation.objects.get(user_id=ann.pk)
    with raw_app_connection.cursor() as cur:
        cur.execute("SELECT set_config('app.user_id', %s, true)", [str(eve.pk)])
        for function in ("chat_message_search_config()", "chat_conversation_search_config()"):
            with pytest.raises((psycopg.errors.InsufficientPrivilege, psycopg.errors.FeatureNotSupported)):
                cur.execute(f"SELECT {function}")
            raw_app_connection.rollback()
            cur.execute("SELECT set_config('app.user_id', %s, true)", [str(eve.pk)])
        # Eve's own row naming Ann's conversation is refused (chat 0009; it went in before).
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            cur.execute(
                "INSERT INTO chat_message (id, conversation_id, user_id, sequence, role, content, provider, model, input_tokens,"
                " output_tokens, cost, latency_ms, status, error, metadata, created_at, imported)"
                " VALUES (gen_random_uuid(), %s, %s, 99, 'user', 'zanzibar planted', '', '', 0, 0, 0, 0, 'complete', '', '{}', now(), false)",
                [anns.pk, eve.pk],
            )
    raw_app_connection.rollback()
    with rls.atomic_as(eve.pk):
        found = selectors.conversation_search(user=eve, query="zanzibar")
    assert [hit.conversation_title for hit in found.hits] == []  # Ann's title never reaches Eve
    with rls.atomic_as(ann.pk):
        found = selectors.conversation_search(user=ann, query="planted")
    assert found.hits == []  # nor does Eve's row reach Ann
