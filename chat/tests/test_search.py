"""Full-text search (chat.selectors.conversation_search, migration 0005): ranking, highlighting,
stemming by the owner's language and the `simple` fallback, title hits, web-search syntax, bad
input as 400s; another user's messages never found, through the selector, the page, the API and
raw SQL as the web role."""

from datetime import timedelta

import psycopg
import pytest
from django.db import connections
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from accounts.services import preferences_update
from accounts.tests.factories import make_user
from accounts.tests.test_api import assert_error, key_client, session_client
from chat import selectors, services
from chat.errors import SearchQueryInvalid
from chat.models import Conversation, Message
from config.db import rls

pytestmark = pytest.mark.django_db(transaction=True)
SEARCH = "/api/v1/search"


def _user(email: str, language: str = "en"):
    user = make_user(email=email)
    with rls.atomic_as(user.pk):
        preferences_update(user=user, language=language)
    return user


def _conversation(user, title: str = "", *contents: str, ago: timedelta = timedelta(0)) -> Conversation:
    """A conversation with these user messages, written through the models (as an import writes them)."""
    conversation = services.conversation_create(user=user, title=title)
    with rls.atomic_as(user.pk):
        for sequence, content in enumerate(contents):
            Message.objects.create(
                conversation=conversation,
                user_id=user.pk,
                sequence=sequence,
                role=Message.Role.USER,
                content=content,
                created_at=timezone.now() - ago,
            )
    return conversation


def _search(user, query: str, **kwargs) -> selectors.SearchPage:
    with rls.atomic_as(user.pk):
        return selectors.conversation_search(user=user, query=query, **kwargs)


@pytest.fixture
def ann(catalog, plans):
    return _user("ann@example.com")


@pytest.fixture
def bob(catalog, plans):
    return _user("bob@example.com")


def test_title_and_two_mentions_rank_above_one_mention_title_only_hits_too(ann):
    once = _conversation(ann, "", "We talked about kubernetes once, then lunch and the weather today.")
    twice = _conversation(ann, "Kubernetes notes", "kubernetes pods and kubernetes services, then lunch and the weather.")
    titled = _conversation(ann, "Kubernetes cheatsheet", "nothing relevant here at all")
    page = _search(ann, "kubernetes")
    assert [(h.conversation_id, h.message_id is None) for h in page.hits] == [(twice.pk, False), (titled.pk, True), (once.pk, False)]
    assert page.total == 3 and page.hits[0].rank > page.hits[1].rank > page.hits[2].rank
    assert page.hits[1].snippet == "<mark>Kubernetes</mark> cheatsheet" and page.hits[1].conversation_title == "Kubernetes cheatsheet"


def test_a_search_is_two_queries(ann):
    _conversation(ann, "Kubernetes notes", "kubernetes pods")
    with rls.atomic_as(ann.pk), CaptureQueriesContext(connections["default"]) as queries:
        assert selectors.conversation_search(user=ann, query="kubernetes").total == 1
    assert len(queries.captured_queries) == 2  # the user's configurations, then hits, total and snippets at once


def test_equal_ranks_newest_first_and_pages(ann):
    for days in range(5):
        _conversation(ann, "", f"weekly report number {days}", ago=timedelta(days=days))
    first, second = _search(ann, "report", limit=3), _search(ann, "report", limit=3, offset=3)
    assert [h.snippet_plain for h in first.hits + second.hits] == [f"weekly report number {d}" for d in range(5)]
    assert first.total == 5 and first.has_next and not second.has_next


def test_snippet_escapes_the_message_and_marks_only_the_match(ann):
    _conversation(ann, "", "<script>alert(1)</script> the deployment failed \ue000 not a mark \ue001\ue002 <b>bold</b> a<b")
    (hit,) = _search(ann, "deployment").hits
    html = str(hit.snippet)
    assert "<mark>deployment</mark>" in html and html.count("<mark>") == 1
    assert "<script" not in html and "&lt;/script&gt;" in html and "&lt;b&gt;bold&lt;/b&gt;" in html
    assert not {"\ue000", "\ue001", "\ue002"} & set(html + hit.snippet_plain) and html.endswith("&lt;b&gt;bold&lt;/b&gt; a&lt;b")
    assert hit.snippet_plain.endswith("alert(1)</script> the deployment failed  not a mark  <b>bold</b> a<b")


def test_english_stems_and_drops_stop_words(ann):
    _conversation(ann, "", "She was running quickly to the stations")
    assert len(_search(ann, "runs").hits) == 1
    assert len(_search(ann, "station").hits) == 1
    assert _search(ann, "the").hits == []  # a stop word in English


@pytest.mark.parametrize("language", ["xx", "klingon", "zz-ZZ"])
def test_an_unknown_language_falls_back_to_simple(catalog, plans, language):
    user = _user("kim@example.com", language=language)
    conversation = _conversation(user, "", "She was running quickly to the stations")
    with connections["privileged"].cursor() as cur:
        cur.execute(
            "SELECT search_config::text FROM chat_conversation WHERE id = %s UNION ALL "
            "SELECT search_config::text FROM chat_message WHERE conversation_id = %s",
            [conversation.pk, conversation.pk],
        )
        assert cur.fetchall() == [("simple",), ("simple",)]
    assert _search(user, "runs").hits == []  # no stemming
    assert len(_search(user, "running").hits) == 1
    assert len(_search(user, "the").hits) == 1  # no stop words


def test_german_owner_and_each_conversation_keeps_its_configuration(ann):
    english = _conversation(ann, "", "the houses were running")
    with rls.atomic_as(ann.pk):
        preferences_update(user=ann, language="de-AT")
    german = _conversation(ann, "", "Die Häuser waren groß")
    assert [h.conversation_id for h in _search(ann, "Haus").hits] == [german.pk]  # German stems Häuser to haus
    assert [h.conversation_id for h in _search(ann, "run").hits] == [english.pk]  # still ranked and queried in English


def test_rows_written_privileged_or_renamed_or_replied_are_indexed(ann):
    # An importer writes messages through the models, possibly privileged: the trigger still indexes them in the owner's language.
    conversation = services.conversation_create(user=ann, title="Imported")
    with rls.privileged(reason="test: an import"):
        Message.objects.create(conversation=conversation, user_id=ann.pk, sequence=0, role="assistant", content="Gardens need watering")
    (hit,) = _search(ann, "garden").hits
    assert hit.role == "assistant" and hit.message_id is not None
    services.conversation_update(user=ann, conversation=conversation, title="Allotment gardens")
    assert [(h.conversation_id, h.message_id) for h in _search(ann, "allotment").hits] == [(conversation.pk, None)]  # the title
    boosted = _search(ann, "garden").hits[0]  # the message, now also matching by its title
    assert boosted.message_id == hit.message_id and boosted.rank > hit.rank
    reply = services.message_send(user=ann, content="photosynthesis explained")
    assert {h.message_id for h in _search(ann, "photosynthesis").hits} >= {reply.user_message.pk}


@pytest.mark.parametrize(
    "query",
    ['"failed deployment', "-", "or", "a or", "--x", "!!!", "&|:*()<->", "'; DROP TABLE chat_message; --", "\\", "ß" * 500, '""', "( )"],
)
def test_web_search_syntax_never_errors(ann, query):
    _conversation(ann, "", "the deployment failed again")
    page = _search(ann, query)
    assert page.total == len(page.hits)


def test_quotes_minus_and_or(ann):
    public = _conversation(ann, "", "deploy the public site")
    secret = _conversation(ann, "", "deploy the secret site")
    phrase = _conversation(ann, "", "site deploy later")

    def found(q):
        return {h.conversation_id for h in _search(ann, q).hits}

    assert found("deploy -secret") == {public.pk, phrase.pk}
    assert found('"deploy the public"') == {public.pk}
    assert found("public or secret") == {public.pk, secret.pk}


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        ("", "Type a word"),
        ("   ", "Type a word"),
        ("x" * 501, "at most 500"),
        ("bad\x07bell", "control characters"),
        ("two\nlines", "control"),
    ],
)
def test_bad_queries_are_refused_with_a_sentence(ann, query, fragment):
    with pytest.raises(SearchQueryInvalid, match=fragment) as caught:
        _search(ann, query)
    assert caught.value.status_code == 400


def test_another_users_messages_are_never_found(ann, bob):
    _conversation(ann, "Zanzibar trip", "ferry to zanzibar")
    bobs = _conversation(bob, "Zanzibar secrets", "bob's zanzibar password is hunter2")
    assert {h.conversation_id for h in _search(bob, "zanzibar").hits} == {bobs.pk}
    hits = _search(ann, "zanzibar").hits
    assert len(hits) == 1 and hits[0].conversation_id != bobs.pk
    assert _search(ann, "hunter2").hits == []
    # Called with no context (a caller that forgot it), the web role finds nothing, not everything.
    with rls.atomic():
        assert selectors.conversation_search(user=bob, query="zanzibar").hits == []
    # Inside a privileged block the search still runs as the web role under the caller's context.
    with rls.atomic_as(ann.pk), rls.privileged(reason="test: search must not widen"):
        assert selectors.conversation_search(user=bob, query="zanzibar").hits == []


def test_raw_sql_as_the_web_role_sees_only_its_own_vectors(raw_app_connection, ann, bob):
    _conversation(ann, "Zanzibar trip", "ferry to zanzibar")
    bobs = _conversation(bob, "Zanzibar secrets", "bob's zanzibar password is hunter2")
    with raw_app_connection.cursor() as cur:
        cur.execute("SELECT set_config('app.user_id', %s, true)", [str(ann.pk)])
        for table in ("chat_message", "chat_conversation"):
            cur.execute(f"SELECT DISTINCT user_id FROM {table} WHERE search_vector @@ to_tsquery('english', 'zanzibar')")
            assert cur.fetchall() == [(ann.pk,)], table
            cur.execute(f"SELECT count(*) FROM {table} WHERE user_id = %s AND search_vector @@ to_tsquery('english', 'zanzibar')", [bob.pk])
            assert cur.fetchone()[0] == 0, table
        cur.execute("SELECT count(*) FROM chat_message WHERE search_vector @@ to_tsquery('english', 'hunter2')")
        assert cur.fetchone()[0] == 0
        cur.execute("UPDATE chat_message SET search_config = 'simple' WHERE conversation_id = %s", [bobs.pk])
        assert cur.rowcount == 0
        with pytest.raises(psycopg.errors.GeneratedAlways):  # the vector is the content's, never written directly
            cur.execute("UPDATE chat_message SET search_vector = to_tsvector('simple', 'forged') WHERE user_id = %s", [ann.pk])
    raw_app_connection.rollback()
    with raw_app_connection.cursor() as cur:  # no context: no rows, whatever the search
        cur.execute("SELECT count(*) FROM chat_message WHERE search_vector @@ to_tsquery('english', 'zanzibar')")
        assert cur.fetchone()[0] == 0
        for function in SEARCH_FUNCTIONS:
            cur.execute(f"SELECT count(*) FROM {function}")
            assert cur.fetchone()[0] == 0, function


# Migration 0005's functions (owner's rights, so the GIN index is used) answer only the context's user.
ZANZIBAR = "to_tsquery('english', 'zanzibar'), ARRAY['english']::regconfig[], ARRAY[to_tsquery('english', 'zanzibar')]"
SEARCH_FUNCTIONS = (f"chat_search_messages({ZANZIBAR})", f"chat_search_conversations({ZANZIBAR})")


def test_raw_sql_search_functions_answer_only_the_context_user(raw_app_connection, ann, bob):
    annes = _conversation(ann, "Zanzibar trip", "ferry to zanzibar")
    _conversation(bob, "Zanzibar secrets", "bob's zanzibar password is hunter2")
    with raw_app_connection.cursor() as cur:
        cur.execute("SELECT set_config('app.user_id', %s, true)", [str(ann.pk)])
        cur.execute(f"SELECT conversation_id FROM chat_search_messages({ZANZIBAR})")
        assert cur.fetchall() == [(annes.pk,)]
        cur.execute(f"SELECT id FROM chat_search_conversations({ZANZIBAR})")
        assert cur.fetchall() == [(annes.pk,)]


def test_search_page_as_you_type_and_plain_form(client, ann, bob):
    _conversation(ann, "Trip <plans>", "book the ferry to <b>Zanzibar</b>")
    _conversation(bob, "", "bob's zanzibar diary")
    client.force_login(ann)
    url = reverse("chat:list")
    full = client.get(url, {"q": "zanzibar"})
    body = full.content.decode()
    assert full.status_code == 200 and "<html" in body and 'data-testid="search-input"' in body
    assert "<mark>Zanzibar</mark>" in body and "&lt;b&gt;" in body and "Trip &lt;plans&gt;" in body and "diary" not in body
    partial = client.get(url, {"q": "zanzibar"}, headers={"HX-Request": "true"})
    assert partial.status_code == 200 and "<html" not in partial.content.decode() and "<mark>Zanzibar</mark>" in partial.content.decode()
    assert "1 result for" in partial.content.decode()
    cleared = client.get(url, {"q": ""}, headers={"HX-Request": "true"})  # the box cleared: the list again
    assert cleared.status_code == 200 and 'data-testid="conversation-list"' in cleared.content.decode()
    assert "No messages match" in client.get(url, {"q": "nowhere"}).content.decode()


@pytest.mark.parametrize(("query", "fragment"), [("   ", "Type a word"), ("x" * 501, "at most 500"), ("a\x00b", "control characters")])
def test_search_page_bad_query_is_a_form_message(client, ann, query, fragment):
    client.force_login(ann)
    for headers in ({}, {"HX-Request": "true"}):
        response = client.get(reverse("chat:list"), {"q": query, "page": "nope"}, headers=headers)
        assert response.status_code == 400 and fragment in response.content.decode()


def test_search_api_pages_scopes_and_isolation(ann, bob):
    for n in range(3):
        _conversation(ann, "", f"invoice number {n} is overdue")
    _conversation(bob, "", "bob's overdue invoice")
    client = key_client(ann, scopes=["chat:read"])
    first = client.get(SEARCH, {"q": "invoice", "page_size": 2})
    assert first.status_code == 200, first.json()
    data = first.json()
    assert data["count"] == 3 and len(data["results"]) == 2 and data["previous"] is None and "page=2" in data["next"]
    hit = data["results"][0]
    assert set(hit) == {"conversation_id", "conversation_title", "message_id", "role", "created_at", "rank", "snippet", "snippet_html"}
    assert "<mark>invoice</mark>" in hit["snippet_html"] and "<mark>" not in hit["snippet"] and hit["role"] == "user"
    second = client.get(data["next"]).json()
    assert len(second["results"]) == 1 and second["next"] is None and "bob" not in str(second)
    assert_error(client.get(SEARCH, {"q": "invoice", "page": 3, "page_size": 2}), 404, "No such page")
    assert_error(key_client(ann, scopes=["account:read"]).get(SEARCH, {"q": "invoice"}), 403)
    assert session_client(bob).get(SEARCH, {"q": "invoice"}).json()["count"] == 1
    for syntax in ('"unterminated -x or', "-", "or", "&|!:*()<->"):
        assert client.get(SEARCH, {"q": syntax}).status_code == 200, syntax


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({}, "q"),
        ({"q": ""}, "Type a word"),
        ({"q": "  "}, "Type a word"),
        ({"q": "y" * 501}, "at most 500"),
        ({"q": "tab\there"}, "control characters"),
        ({"q": "nul\x00"}, "q"),
        ({"q": "ok", "page": "0"}, "page"),
        ({"q": "ok", "page_size": "1000"}, "page_size"),
    ],
)
def test_search_api_bad_input_is_400(ann, params, fragment):
    assert_error(session_client(ann).get(SEARCH, params), 400, fragment)


def test_search_api_is_in_the_schema(ann):
    schema = session_client(ann).get("/api/schema/", {"format": "json"}).json()
    operation = schema["paths"]["/api/v1/search"]["get"]
    assert {p["name"] for p in operation["parameters"]} >= {"q", "page", "page_size"}
    assert {"200", "400"} <= set(operation["responses"])
