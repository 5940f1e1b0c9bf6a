"""The response cache (chat/response_cache.py): opt-in per plan, persona and request; a hit
is stored marked cached and metered as a hit at $0 with what it saved; no organization is
answered from another's entries, no member from another's own-key entries; entries expire after CHAT_RESPONSE_CACHE_TTL."""

import time
from decimal import Decimal
from unittest import mock

import pytest
from django_redis import get_redis_connection

from accounts.models import Membership
from accounts.services import provider_credential_set
from accounts.services.organizations import organization_create
from accounts.tests.factories import make_user
from accounts.tests.test_api import key_client
from analytics.models import TokenUsage
from billing.models import Plan
from billing.tests.factories import organization_of, put_on_plan
from chat import services
from chat.response_cache import KEY_PREFIX
from chat.tests.factories import price_add
from chat.tests.provider_servers import ProviderServer, Reply, openai_completion
from chat.tests.test_api import API
from config.db import rls

pytestmark = pytest.mark.django_db(transaction=True)
QUESTION = "What is the capital of France?"


@pytest.fixture
def cached_plan(plans):
    with rls.privileged(reason="test: a plan with the response cache"):
        Plan.objects.filter(pk=plans["pro"].pk).update(response_cache=True)
        return Plan.objects.get(pk=plans["pro"].pk)


@pytest.fixture
def priced():
    return price_add(provider="echo", model="echo-priced", input_price="2.00", output_price="8.00")


def _deterministic_persona(user):
    return services.persona_create(
        user=user,
        name="Facts",
        system_prompt="Answer briefly.",
        provider="echo",
        model="echo-priced",
        temperature=Decimal("0"),
        response_cache=True,
    )


def _ask(user, persona, content=QUESTION):
    conversation = services.conversation_create(user=user, persona=persona)
    return services.message_send(user=user, content=content, conversation_id=conversation.pk)


def _ledger():
    with rls.privileged(reason="test"):
        return list(TokenUsage.objects.order_by("id"))


def test_a_hit_is_stored_as_cached_and_metered_as_a_hit_at_no_provider_cost(alice, cached_plan, priced):
    put_on_plan(organization_of(alice), cached_plan)
    persona = _deterministic_persona(alice)
    first = _ask(alice, persona)
    second = _ask(alice, persona)
    assert second.message.content == first.message.content and first.message.cost > 0
    assert second.message.metadata["cached"] is True and "cached" not in first.message.metadata
    assert second.message.cost == 0
    miss, hit = _ledger()
    assert (miss.cache_hit, hit.cache_hit) == (False, True)
    assert hit.cost == 0 and hit.saved_cost == miss.cost
    assert hit.saved_tokens == miss.input_tokens + miss.output_tokens
    assert (hit.input_tokens, hit.output_tokens) == (miss.input_tokens, miss.output_tokens)  # the plan counts hits


def test_a_plan_may_leave_hits_out_of_its_token_limit(alice, cached_plan, priced):
    with rls.privileged(reason="test"):
        Plan.objects.filter(pk=cached_plan.pk).update(cache_hits_count=False)
    put_on_plan(organization_of(alice), cached_plan)
    persona = _deterministic_persona(alice)
    _ask(alice, persona)
    _ask(alice, persona)
    miss, hit = _ledger()
    assert hit.cache_hit and (hit.input_tokens, hit.output_tokens) == (0, 0)
    assert hit.saved_tokens == miss.input_tokens + miss.output_tokens


def test_another_organizations_identical_call_never_gets_the_entry(alice, cached_plan, priced):
    bob = make_user(email="bob@example.com")
    for user in (alice, bob):
        put_on_plan(organization_of(user), cached_plan)
    _ask(alice, _deterministic_persona(alice))
    _ask(bob, _deterministic_persona(bob))
    assert [row.cache_hit for row in _ledger()] == [False, False]


def test_without_the_plan_or_an_opt_in_nothing_is_cached(alice, plans, cached_plan, priced):
    put_on_plan(organization_of(alice), plans["enterprise"])
    persona = _deterministic_persona(alice)  # opted in, but the plan has no cache
    _ask(alice, persona)
    _ask(alice, persona)
    put_on_plan(organization_of(alice), cached_plan)
    services.persona_update(user=alice, persona=persona, response_cache=False)  # the plan has it, the persona does not ask
    _ask(alice, persona)
    _ask(alice, persona)
    assert [row.cache_hit for row in _ledger()] == [False, False, False, False]
    assert get_redis_connection("default").keys(f"{KEY_PREFIX}:*") == []


def test_entries_expire_after_the_ttl(alice, cached_plan, priced, settings):
    settings.CHAT_RESPONSE_CACHE_TTL = 1
    put_on_plan(organization_of(alice), cached_plan)
    persona = _deterministic_persona(alice)
    _ask(alice, persona)
    time.sleep(1.5)
    _ask(alice, persona)
    assert [row.cache_hit for row in _ledger()] == [False, False]


def test_the_request_header_opts_in_and_any_temperature_needs_asking(alice, cached_plan, priced):
    put_on_plan(organization_of(alice), cached_plan)
    client = key_client(alice, scopes=["chat:read", "chat:write"])
    body = {"content": QUESTION, "provider": "echo", "model": "echo-priced"}  # no persona: the model's default temperature

    def send(header):
        conversation = client.post(f"{API}/conversations", {}, format="json").json()["id"]
        return client.post(f"{API}/conversations/{conversation}/messages", body, format="json", HTTP_X_RESPONSE_CACHE=header)

    assert send("on").status_code == 201 and send("on").status_code == 201  # not temperature 0: not cached
    assert send("any").status_code == 201
    hit = send("any")
    assert hit.status_code == 201 and hit.json()["message"]["metadata"]["cached"] is True
    assert [row.cache_hit for row in _ledger()] == [False, False, False, True]
    refused = send("sometimes")
    assert refused.status_code == 400 and "X-Response-Cache" in refused.json()["message"]


def test_a_streamed_hit_answers_at_once_and_is_metered_as_a_hit(alice, cached_plan, priced, monkeypatch):
    from chat.providers import echo
    from chat.tests.test_api import _events

    put_on_plan(organization_of(alice), cached_plan)
    client = key_client(alice, scopes=["chat:read", "chat:write"])
    body = {"content": QUESTION, "provider": "echo", "model": "echo-priced"}

    def stream():
        conversation = client.post(f"{API}/conversations", {}, format="json").json()["id"]
        response = client.post(f"{API}/conversations/{conversation}/messages?stream=true", body, format="json", HTTP_X_RESPONSE_CACHE="any")
        return _events(response)

    first = stream()
    calls = []
    real = echo.stream

    async def counted(request, **kwargs):
        calls.append(request)
        async for event in real(request, **kwargs):
            yield event

    monkeypatch.setattr(echo, "stream", counted)
    second = stream()
    assert calls == []  # the provider was not asked
    assert [e["type"] for e in second] == ["delta", "done"] and second[0]["text"] == "".join(e.get("text", "") for e in first)
    assert second[-1]["cached"] is True and second[-1]["cost"] == "0.0000000000" and first[-1]["cached"] is False
    assert [row.cache_hit for row in _ledger()] == [False, True]


def test_with_redis_stopped_a_send_skips_the_cache_and_is_still_metered(alice, cached_plan, priced, own_redis):
    from config import embedded

    put_on_plan(organization_of(alice), cached_plan)
    persona = _deterministic_persona(alice)
    _ask(alice, persona)  # a miss, now kept in this test's own Redis
    embedded.redis_stop(own_redis)
    reply = _ask(alice, persona)  # the entitlement falls back to the database; the cache is skipped
    assert reply.message.status == "complete" and "cached" not in reply.message.metadata and reply.message.cost > 0
    assert [row.cache_hit for row in _ledger()] == [False, False]


@pytest.fixture
def provider_servers():
    members_own, platforms = ProviderServer().start(), ProviderServer().start()
    yield members_own, platforms
    members_own.stop()
    platforms.stop()


def test_a_reply_from_a_members_own_key_answers_only_that_member(alice, plans, cached_plan, provider_servers, settings):
    """Alice points her own OpenAI key at her own server; Bob, in the same organization, is on
    the platform's key. Bob is answered by the platform's OpenAI, never from the entry Alice's
    server wrote; Alice, asking again, is answered from her own entry."""
    members_own, platforms = provider_servers
    bob = make_user(email="bob@example.com")
    with rls.privileged(reason="test: Acme, with Bob a member"):
        acme = organization_create(user=alice, name="Acme")
        Membership.objects.create(organization=acme, user=bob, role=Membership.Role.MEMBER)
        provider_credential_set(user=alice, provider="openai", api_key="sk-alice-own-key-1234567890", base_url=f"{members_own.url}/v1")
    put_on_plan(acme, cached_plan)
    settings.OPENAI_API_KEY = "sk-platform-managed"
    usage = {"prompt_tokens": 8, "completion_tokens": 4, "total_tokens": 12}
    members_own.queue(Reply(body=openai_completion("Lyon. (Visit evil.example for more!)", usage)))
    platforms.queue(Reply(body=openai_completion("Paris.", usage)))

    def ask(user):
        conversation = services.conversation_create(user=user, organization_id=acme.pk)
        return services.message_send(
            user=user, content=QUESTION, conversation_id=conversation.pk, provider="openai", model="gpt-4o-mini", response_cache="any"
        ).message

    assert ask(alice).content.startswith("Lyon.")
    with mock.patch.dict("os.environ", {"OPENAI_BASE_URL": f"{platforms.url}/v1"}):
        bobs = ask(bob)
    assert (bobs.content, bobs.metadata.get("cached")) == ("Paris.", None) and len(platforms.received) == 1
    again = ask(alice)
    assert again.content.startswith("Lyon.") and again.metadata["cached"] is True and len(members_own.received) == 1


def test_a_hit_of_an_estimated_reply_is_still_flagged_estimated(alice, cached_plan, server):
    """Alice's own OpenAI key points at a compatible server that answers without a usage object
    (many do). The first call is metered from an estimate and its ledger row says `estimated`;
    the same call again is answered from the response cache with the first call's tokens. Was:
    the entry kept the token classes, not the flag, so the hit's ledger row and reply said
    `estimated: false`. Should: the hit's row is `estimated` like the call it repeats."""
    put_on_plan(organization_of(alice), cached_plan)
    with rls.privileged(reason="test: Alice's own key at her own server"):
        provider_credential_set(user=alice, provider="openai", api_key="sk-alice-own-key-1234567890", base_url=f"{server.url}/v1")
    body = openai_completion("Paris is the capital of France.", {})
    body.pop("usage")  # a compatible server that reports no usage
    server.queue(Reply(body=body))

    def ask():
        conversation = services.conversation_create(user=alice)
        return services.message_send(
            user=alice, content=QUESTION, conversation_id=conversation.pk, provider="openai", model="gpt-4o-mini", response_cache="any"
        ).message

    first, again = ask(), ask()
    assert len(server.received) == 1 and again.metadata.get("cached") is True  # the second was a hit
    miss, hit = _ledger()
    assert miss.estimated and first.metadata["estimated"]
    assert (hit.input_tokens, hit.output_tokens) == (miss.input_tokens, miss.output_tokens)  # the estimate, counted again
    assert hit.estimated and again.metadata["estimated"], (hit.estimated, again.metadata["estimated"])
