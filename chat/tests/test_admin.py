"""Staff admin for chat: other users' conversations, messages and personas are browsable
read-only in the audited privileged context; the catalog takes a new price version."""

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts.tests.factories import make_user
from chat import selectors, services
from chat.models import ModelPrice, Persona
from config.db import rls

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def staff_client(client, alice):
    client.force_login(make_user(email="staff@example.com", role="staff", is_superuser=True))
    return client


def _url(name, *args):
    return reverse(f"admin:chat_{name}", args=args)


def test_staff_browse_conversations_and_messages_read_only_and_audited(staff_client, alice):
    reply = services.message_send(user=alice, content="visible to staff")
    services.persona_create(user=alice, name="Alice's poet", system_prompt="Verse.")
    reasons = []

    def receiver(sender, reason, audited=True, **kwargs):
        reasons.append((reason, audited))

    rls.privileged_entered.connect(receiver)
    try:
        assert "visible to staff" in staff_client.get(_url("conversation_changelist")).content.decode()
        change = staff_client.get(_url("conversation_change", reply.conversation.pk)).content.decode()
        assert "You said: visible to staff" in change
        page = staff_client.get(_url("message_changelist")).content.decode()
        assert "You said: visible to staff" in page
        assert "Alice&#x27;s poet" in staff_client.get(_url("persona_changelist")).content.decode()
    finally:
        rls.privileged_entered.disconnect(receiver)
    assert all(audited for _, audited in reasons) and any(r.startswith("admin GET /admin/chat/conversation/") for r, _ in reasons)
    assert staff_client.get(_url("message_add")).status_code == 403
    posted = staff_client.post(_url("message_change", reply.message.pk), {"content": "rewritten"})
    assert posted.status_code == 403


def test_staff_can_neither_move_a_persona_to_another_user_nor_rewrite_or_plant_one(staff_client, alice):
    """A persona is its user's content, and it belongs to one user: moved to another, the
    conversations naming it could no longer read it (their page was a 500)."""
    bob = make_user(email="bob@example.com")
    persona = services.persona_create(user=bob, name="Bob's persona", system_prompt="Bob's own prompt")
    conversation = services.conversation_create(user=bob, persona=persona)
    change = _url("persona_change", persona.pk)
    form = {"user_id": str(alice.pk), "name": "Renamed", "system_prompt": "Rewritten", "provider": "", "model": "", "temperature": ""}
    page = staff_client.get(change).content.decode()
    assert "Bob&#x27;s own prompt" in page and 'name="system_prompt"' not in page and 'name="user_id"' not in page
    assert staff_client.post(change, form).status_code == 403
    assert staff_client.post(_url("persona_add"), {**form, "name": "Planted"}).status_code == 403
    assert staff_client.post(_url("persona_delete", persona.pk), {"post": "yes"}).status_code == 403
    with rls.privileged(reason="test: the persona as stored"):
        stored = Persona.objects.get(pk=persona.pk)
        assert (stored.user_id, stored.name, stored.system_prompt) == (bob.pk, "Bob's persona", "Bob's own prompt")
        assert not Persona.objects.filter(name="Planted").exists()
    bobs = Client()
    bobs.force_login(bob)
    assert bobs.get(f"/chat/{conversation.pk}/").status_code == 200


def test_staff_add_a_price_version_and_it_is_in_force_from_its_date(staff_client):
    now = timezone.now()  # a start the admin's "Now" gives (one in the past is refused: test_attack_staff_prices.py)
    response = staff_client.post(
        _url("modelprice_add"),
        {
            "provider": "openai",
            "model": "gpt-4o-mini",
            "display_name": "GPT-4o mini",
            "context_window": "128000",
            "input_price": "0.20",
            "output_price": "0.80",
            "effective_from_0": f"{now:%Y-%m-%d}",
            "effective_from_1": f"{now:%H:%M:%S}",
            "is_active": "on",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    with rls.privileged(reason="test"):
        assert ModelPrice.objects.filter(model="gpt-4o-mini").count() == 2
        assert str(selectors.model_price_current(provider="openai", model="gpt-4o-mini").input_price) == "0.200000"
