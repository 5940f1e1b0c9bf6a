"""Chat's pages and API as an attacker finds them (review of 2026-12-02): the pages' writes
racing a delete of the row they name (a 500), a persona's model given without its provider (lost
on every send), and a number where a message's text goes (sent as "inf"). Each test failed
before its fix. Races are ordered by events, never by sleeping for luck."""

import pytest
from django.test import Client

from accounts.tests.test_api import key_client
from analytics.models import TokenUsage
from billing.tests.factories import organization_of, put_on_plan
from chat import selectors, services
from chat.models import Conversation, Message, Persona
from chat.tests.factories import price_add
from chat.tests.test_attack_chat_api import _after_a_read_on, _on_a_thread
from config.db import rls

pytestmark = pytest.mark.django_db(transaction=True)
API = "/api/v1"


def _signed_in(user) -> Client:
    client = Client(raise_request_exception=False)
    client.force_login(user)
    return client


def _api(user):
    client = key_client(user, scopes=("chat:read", "chat:write"))
    client.raise_request_exception = False
    return client


# --- A page's write racing a delete of its row ---------------------------------------------


@pytest.mark.parametrize("page", ["delete", "archive", "edit", "persona-delete", "persona-edit"])
def test_a_page_post_whose_row_is_deleted_meanwhile_is_a_404_not_a_500(alice, monkeypatch, page):
    """A user double-clicks Delete on the conversation page (or has it open in two tabs and
    archives, renames, or deletes a persona in one while the other deletes it). The page view reads
    the row (chat/views.py _conversation / _persona), the other request's delete commits, then the
    service locks the row (services._still_there), finds it gone and raises NotFoundError. The API
    turns that into a 404, but the page views do not catch it: the page answers 500 (Django's
    server-error page). It should answer 404 (the row is gone), or the page's redirect."""
    client = _signed_in(alice)
    conversation = services.message_send(user=alice, content="hello").conversation
    persona = services.persona_create(user=alice, name="Brief", system_prompt="Be brief.")
    if page.startswith("persona-"):
        url, data = {
            "persona-delete": (f"/chat/personas/{persona.pk}/delete/", {}),
            "persona-edit": (f"/chat/personas/{persona.pk}/", {"name": "Briefer", "system_prompt": "Be brief.", "model": ""}),
        }[page]
        selector, deleted = "persona_get", f"{API}/personas/{persona.pk}"
    else:
        selector = "conversation_get"
        url, data = {
            "delete": (f"/chat/{conversation.pk}/delete/", {}),
            "archive": (f"/chat/{conversation.pk}/archive/", {"archived": "1"}),
            "edit": (f"/chat/{conversation.pk}/edit/", {"title": "renamed", "tags": "", "persona": ""}),
        }[page]
        deleted = f"{API}/conversations/{conversation.pk}"
    read, go = _after_a_read_on(monkeypatch, selectors, selector, "page")
    outcome = {}
    poster = _on_a_thread("page", lambda: client.post(url, data).status_code, outcome)
    assert read.wait(30)
    assert _api(alice).delete(deleted).status_code == 204  # the other tab's delete commits first
    go.set()
    poster.join(30)
    assert outcome["page"] in (302, 404), outcome
    with rls.privileged(reason="test"):
        assert not Conversation.objects.filter(pk=conversation.pk).exists() or page.startswith("persona-")
        assert not Persona.objects.filter(pk=persona.pk).exists() or not page.startswith("persona-")


@pytest.mark.parametrize("page", ["new", "edit"])
def test_a_persona_deleted_while_a_page_form_takes_it_is_not_a_500(alice, monkeypatch, page):
    """The user starts a conversation with a persona (/chat/new/) or picks a persona in the
    conversation's header form (/chat/{id}/edit/), while the persona is deleted in another tab. The
    view reads the persona (views._persona), the delete commits, then the service takes it
    (services._persona_held) and raises NotFoundError ("No such persona."), which the page views do
    not catch: a 500. The API answers the same race 404 (test_attack_races_inputs). The page should
    answer 404 or its redirect, and no conversation may name the deleted persona."""
    client = _signed_in(alice)
    persona = services.persona_create(user=alice, name="Gone soon", system_prompt="Be brief.")
    existing = services.conversation_create(user=alice, title="existing")
    if page == "new":
        url, data = "/chat/new/", {"persona": str(persona.pk)}
    else:
        url, data = f"/chat/{existing.pk}/edit/", {"title": "existing", "tags": "", "persona": str(persona.pk)}
    read, go = _after_a_read_on(monkeypatch, selectors, "persona_get", "page")
    outcome = {}
    poster = _on_a_thread("page", lambda: client.post(url, data).status_code, outcome)
    assert read.wait(30)
    assert _api(alice).delete(f"{API}/personas/{persona.pk}").status_code == 204
    go.set()
    poster.join(30)
    assert outcome["page"] in (302, 404), outcome
    with rls.privileged(reason="test"):
        assert not Conversation.objects.filter(user_id=alice.pk, persona_id=persona.pk).exists()


# --- A persona's model without its provider -------------------------------------------------


def test_a_persona_model_accepted_without_a_provider_is_the_model_its_conversations_use(alice, plans):
    """POST /api/v1/personas {"name", "system_prompt", "model": "echo-2"} (no provider): the API
    checks the model against the default provider's catalog (services._persona_model_check), finds
    it, and stores the persona with provider "" and model "echo-2" (201). A conversation with that
    persona then sends without naming a model, and message_prepare takes the persona's model only
    when `persona.provider == provider` ("" != "echo"): the reply comes from the default model
    echo-1, and the persona's accepted model is silently lost. The persona's model should be used
    (or the persona refused with a 400 naming the missing provider)."""
    price_add(provider="echo", model="echo-2", input_price="0", output_price="0")
    put_on_plan(organization_of(alice), plans["pro"])  # Free offers echo-1 only
    client = _api(alice)
    created = client.post(f"{API}/personas", {"name": "Second", "system_prompt": "Be brief.", "model": "echo-2"}, format="json")
    assert created.status_code == 201, created.json()
    assert created.json()["provider"] == "echo"  # stored with the provider its model was checked against
    conversation = client.post(f"{API}/conversations", {"persona_id": created.json()["id"]}, format="json").json()
    sent = client.post(f"{API}/conversations/{conversation['id']}/messages", {"content": "hi"}, format="json")
    assert sent.status_code == 201, sent.json()
    assert sent.json()["message"]["model"] == "echo-2", (created.json(), sent.json()["message"]["model"])
    with rls.privileged(reason="test"):
        assert TokenUsage.objects.filter(user_id=alice.pk, model="echo-2").count() == 1
        assert Message.objects.filter(conversation_id=conversation["id"], role="assistant", model="echo-2").count() == 1


# --- A number where the message's text goes -------------------------------------------------


def test_a_message_whose_content_is_a_number_beyond_a_double_is_a_400_not_sent_as_inf(alice):
    """POST /api/v1/conversations/{id}/messages with {"content": 1e400} (a JSON number, not text).
    Python's json reads 1e400 as float('inf'); DRF's CharField takes any number and makes it text,
    so the message is sent as "inf": the user message stores "inf", the conversation is titled
    "inf", the provider is called and metered (201). A wrong JSON type should be a 400 saying the
    content must be text, with nothing stored and nothing metered."""
    client = _api(alice)
    conversation = client.post(f"{API}/conversations", {}, format="json").json()["id"]
    response = client.post(f"{API}/conversations/{conversation}/messages", data=b'{"content": 1e400}', content_type="application/json")
    stored = client.get(f"{API}/conversations/{conversation}/messages").json()["results"]
    assert response.status_code == 400 and response.json()["message"], ([m["content"] for m in stored], response.status_code)
    with rls.privileged(reason="test"):
        assert not Message.objects.filter(conversation_id=conversation).exists()
        assert not TokenUsage.objects.filter(user_id=alice.pk).exists()
