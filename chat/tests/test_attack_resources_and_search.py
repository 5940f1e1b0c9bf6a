"""Review of the chat resources (API and pages other than streaming and porting, 2026-12-03):
conversations, personas, search and share links. Each test failed before its fix; its
docstring says what a user or attacker does, what happens now and what should happen. Races are
ordered by events (chat/tests/test_attack_chat_api.py), never by sleeping for luck."""

from html.parser import HTMLParser

import pytest
from django.test import Client

from chat import selectors, services
from chat.models import Conversation, ModelPrice, Persona
from chat.tests.factories import price_add
from chat.tests.test_attack_chat_api import _after_a_read_on, _client, _on_a_thread, _status_and_body
from config.db import rls

pytestmark = pytest.mark.django_db(transaction=True)
API = "/api/v1"


def _stored(model, pk):
    with rls.privileged(reason="test: read back"):
        return model.objects.get(pk=pk)


# --- Tags: a huge list -------------------------------------------------------------------


def test_a_tag_list_of_a_hundred_thousand_items_is_refused_by_its_count_not_answered_item_by_item(alice):
    """An API client PATCHes a conversation with `tags` a list of 100,000 items (a 400 KB body,
    well under the upload limit), each a one-character tag holding a comma. Now DRF's ListField
    validates every item before it looks at the count (MAX_TAGS = 20): seconds of CPU, and the
    400 lists an error for each of the 100,000 items, a body of megabytes (the whole upload
    limit's worth, 650,000 items, took 14 s and answered 29 MB). It should be refused on its
    count first: a short 400 saying a conversation has at most 20 tags."""
    client = _client(alice)
    conversation = services.conversation_create(user=alice, title="mine")
    body = '{"tags":[' + ",".join(['","'] * 100_000) + "]}"
    response = client.patch(f"{API}/conversations/{conversation.pk}", body, content_type="application/json")
    assert response.status_code == 400
    assert response.json()["message"]
    assert len(response.content) < 10_000, f"a 400 of {len(response.content):,} bytes"
    assert _stored(Conversation, conversation.pk).tags == []


# --- Wrong JSON types --------------------------------------------------------------------


@pytest.mark.parametrize("body", ['{"summary": 1e400}', '{"summary": 12}', '{"tags": [1e400]}', '{"tags": [7, 1.5]}'])
def test_a_summary_or_tag_given_as_a_json_number_is_a_400_not_stored_as_its_text(alice, body):
    """PATCH /conversations/{id} with `summary` or a tag that is a JSON number. The title, the
    message and the persona's texts take only JSON strings (config.api.inputs.StringField: a JSON
    1e400, read as infinity, reached a model as "inf"), but `summary` and the tags' items are
    DRF's CharField, which turns a number into its text: the conversation now has the summary
    "inf" or the tags ["inf"], ["7", "1.5"] (200). It should be a 400 saying a string is expected,
    and nothing stored."""
    client = _client(alice)
    conversation = services.conversation_create(user=alice, title="mine")
    response = client.patch(f"{API}/conversations/{conversation.pk}", body, content_type="application/json")
    stored = _stored(Conversation, conversation.pk)
    assert response.status_code == 400, (_status_and_body(response), stored.summary, stored.tags)
    assert response.json()["message"]
    assert (stored.summary, stored.tags) == ("", [])


# --- Personas: two PATCHes, each checked against the persona as it was ------------------------


def test_two_persona_patches_racing_never_store_a_provider_model_pair_the_catalog_lacks(alice, monkeypatch):
    """A persona is openai/gpt-4o. One client PATCHes it to {"provider": "anthropic", "model":
    "claude-haiku-4-5"}; another, at the same moment, PATCHes only {"model": "gpt-4o-mini"}.
    persona_update checks the pair (_persona_model_check) against the row read before its
    transaction, so the second checks openai/gpt-4o-mini, passes, and then saves only `model` over
    the first's commit: the persona is now anthropic/gpt-4o-mini, a pair not in the catalog, and
    every send with it is refused ("has no price in the catalog"). Each PATCH should check the pair
    as it will be stored, under the row lock it already takes: the second is then a 400 (or its
    pair checked against anthropic), never an unusable persona."""
    client = _client(alice)
    persona = services.persona_create(user=alice, name="P", system_prompt="x", provider="openai", model="gpt-4o")
    url = f"{API}/personas/{persona.pk}"
    read, go = _after_a_read_on(monkeypatch, selectors, "persona_get", "late")
    outcome = {}
    late = _on_a_thread("late", lambda: _status_and_body(client.patch(url, {"model": "gpt-4o-mini"}, format="json")), outcome)
    assert read.wait(30)
    first = client.patch(url, {"provider": "anthropic", "model": "claude-haiku-4-5"}, format="json")
    assert first.status_code == 200, _status_and_body(first)
    go.set()
    late.join(30)
    stored = _stored(Persona, persona.pk)
    pair = (stored.provider, stored.model)
    assert selectors.model_price_current(provider=stored.provider, model=stored.model) is not None, (pair, outcome["late"])


# --- Personas: the edit page and a model that left the catalog ---------------------------------


class _ModelSelect(HTMLParser):
    """The persona form's `model` select as a browser reads it: its options and the selected one."""

    def __init__(self):
        super().__init__()
        self.inside, self.options, self.selected = False, [], None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "select" and attrs.get("name") == "model":
            self.inside = True
        elif tag == "option" and self.inside:
            self.options.append(attrs.get("value", ""))
            if "selected" in attrs:
                self.selected = attrs.get("value", "")

    def handle_endtag(self, tag):
        if tag == "select":
            self.inside = False

    def submitted(self) -> str:
        return self.selected if self.selected is not None else self.options[0]  # a browser sends the first when none is selected


def test_saving_a_persona_page_unchanged_keeps_its_model_after_the_model_left_the_catalog(alice):
    """A persona uses echo/echo-classic; staff later retire that model's price. The user opens the
    persona's edit page to fix a typo in its name and saves. The page's model list offers only the
    catalog's models, so the persona's own is not among them and none is selected: the browser
    sends the first option, "The default model", and the save clears the persona's model without a
    word (its conversations now use another model). The edit page should offer (and select) the
    persona's model, or refuse the save with a form error: a save never changes what was not touched."""
    price = price_add(provider="echo", model="echo-classic", input_price="0", output_price="0")
    persona = services.persona_create(user=alice, name="Typo", system_prompt="Be brief.", provider="echo", model="echo-classic")
    with rls.privileged(reason="test: staff retire the model"):
        ModelPrice.objects.filter(pk=price.pk).delete()
    page = Client()
    page.force_login(alice)
    url = f"/chat/personas/{persona.pk}/"
    select = _ModelSelect()
    select.feed(page.get(url).content.decode())
    page.post(url, {"name": "Fixed", "system_prompt": "Be brief.", "model": select.submitted(), "temperature": ""})
    stored = _stored(Persona, persona.pk)
    assert (stored.provider, stored.model) == ("echo", "echo-classic"), (select.options[:3], select.selected)


# --- Search: the `next` link the API hands out ---------------------------------------------------


def test_the_search_apis_next_link_on_its_last_allowed_page_is_null_not_a_400(alice):
    """A client walks GET /search?q=zanzibar&page_size=1 by following `next`, as the API invites.
    With more hits than SEARCH_PAGES_MAX pages (101 conversations titled "zanzibar"), page 100
    answers `next` = ...&page=101, and following it is a 400 ("Ensure this value is less than or
    equal to 100."): the API's own link refused. `next` should be null on the last page the API
    serves (or the page it names should answer)."""
    for n in range(selectors.SEARCH_PAGES_MAX + 1):
        services.conversation_create(user=alice, title=f"zanzibar trip {n}")
    client = _client(alice)
    last = client.get(f"{API}/search", {"q": "zanzibar", "page_size": 1, "page": selectors.SEARCH_PAGES_MAX})
    assert last.status_code == 200, _status_and_body(last)
    data = last.json()
    assert data["count"] == selectors.SEARCH_PAGES_MAX + 1
    if data["next"] is not None:
        following = client.get(data["next"])
        assert following.status_code == 200, (data["next"], _status_and_body(following))


# --- Search: the page past the last ------------------------------------------------------------


def test_the_search_page_past_the_last_does_not_say_there_are_no_results(alice):
    """A user has one conversation about Zanzibar and opens /chat/?q=zanzibar&page=2 (a stale
    link, a bookmark, or page 2 after deleting a hit). The page answers 200 saying "0 results for
    “zanzibar”" and "No messages match", though page 1 lists the hit: the total is read from the
    rows of the page asked for (chat.selectors.conversation_search), and past the end there are
    none. The API answers the same request 404 "No such page of results."; the page should say
    the true total (or be a 404 too), never that nothing matches."""
    services.conversation_create(user=alice, title="Zanzibar ferry times")
    page = Client(raise_request_exception=False)
    page.force_login(alice)
    first = page.get("/chat/", {"q": "zanzibar"}).content.decode()
    assert "1 result for" in first
    response = page.get("/chat/", {"q": "zanzibar", "page": 2})
    body = response.content.decode()
    assert response.status_code == 404 or ("0 results" not in body and "No messages match" not in body), body[
        body.find("search-summary") :
    ][:200]
