"""The chat app's invariants under concurrency, and inputs the two doors (pages, API) must agree
on: each was a 500 or a broken limit before its fix. Races are ordered with events and by
waiting on PostgreSQL's own lock table (pg_locks), never by sleeping for luck."""

import threading

import pytest
from django.db import connections

from accounts.tests.test_api import key_client
from analytics.models import TokenUsage
from chat import services
from chat.models import Conversation, Message, Persona
from config.db import rls
from config.tests.races import race_while_held

pytestmark = pytest.mark.django_db(transaction=True)
API = "/api/v1"
SCOPES = ("chat:read", "chat:write")


def _client(user):
    client = key_client(user, scopes=SCOPES)
    client.raise_request_exception = False
    return client


# --- Inputs ----------------------------------------------------------------------------


# --- Races -----------------------------------------------------------------------------


def test_deleting_a_conversation_while_a_send_to_it_is_being_stored_is_a_204_not_a_500(alice, monkeypatch):
    """DELETE /conversations/{id} while a send holds the conversation's row (message_prepare, between
    its lock and its insert). The delete's cascade (Django's collector) deletes the messages it sees,
    then waits on the row; the send inserts its two messages and commits; the conversation's DELETE
    then commits against the deferred foreign key of the new messages: IntegrityError, a 500, and the
    conversation stays. The delete should wait for the send and take its messages with it."""
    client = _client(alice)
    conversation_id = services.message_send(user=alice, content="hello").conversation.pk
    outcome = race_while_held(
        monkeypatch,
        services,
        "entitlement_check",  # inside message_prepare's transaction, after the row lock
        lambda: services.message_send(user=alice, content="again", conversation_id=conversation_id).message.status,
        lambda: client.delete(f"{API}/conversations/{conversation_id}").status_code,
        "the delete waits on the conversation's row",
    )
    assert outcome == {"first": "complete", "second": 204}, outcome
    with rls.privileged(reason="test"):
        assert not Conversation.objects.filter(pk=conversation_id).exists()
        assert not Message.objects.filter(conversation_id=conversation_id).exists()
        assert TokenUsage.objects.filter(user_id=alice.pk).count() == 2  # both sends metered


@pytest.mark.parametrize("method", ["post", "patch"])
def test_a_persona_deleted_while_a_conversation_takes_it_is_a_404_or_no_persona_not_a_500(alice, monkeypatch, method):
    """POST /conversations (or PATCH /conversations/{id}) with a persona_id, racing DELETE
    /personas/{id}: the view reads the persona (no lock), the delete commits (its SET NULL finds no
    conversation using it yet), then the conversation is written with the deleted persona's id: the
    conversation's row policy (migration 0009: persona_id must be one of the user's personas) refuses
    it, ProgrammingError, a 500 (without that policy, the deferred foreign key would fail the COMMIT).
    It should answer 404 (no such persona) or store the conversation without it."""
    client = _client(alice)
    persona = services.persona_create(user=alice, name="Gone soon", system_prompt="Be brief.")
    existing = services.conversation_create(user=alice, title="existing")
    read, go = threading.Event(), threading.Event()
    real_get = services.selectors.persona_get

    def held_get(**kwargs):
        found = real_get(**kwargs)
        if threading.current_thread().name == "taker":
            read.set()
            assert go.wait(30)
        return found

    monkeypatch.setattr(services.selectors, "persona_get", held_get)
    outcome = {}

    def take():
        try:
            body = {"persona_id": str(persona.pk), "title": "with persona"}
            if method == "post":
                response = client.post(f"{API}/conversations", body, format="json")
            else:
                response = client.patch(f"{API}/conversations/{existing.pk}", body, format="json")
            outcome["take"] = response.status_code
        finally:
            connections.close_all()

    taker = threading.Thread(target=take, name="taker")
    taker.start()
    assert read.wait(30)
    assert client.delete(f"{API}/personas/{persona.pk}").status_code == 204
    go.set()
    taker.join(30)

    assert outcome["take"] in ((201 if method == "post" else 200), 404), outcome
    with rls.privileged(reason="test"):
        assert not Persona.objects.filter(pk=persona.pk).exists()
        assert not Conversation.objects.filter(user_id=alice.pk, persona_id=persona.pk).exists()


@pytest.mark.parametrize("method", ["post", "patch"])
def test_a_persona_deleted_while_a_conversation_holds_it_waits_and_clears_it(alice, monkeypatch, method):
    """The other order: the conversation's write holds the persona when its DELETE comes. The
    delete's SET NULL ran first and found no conversation using it, then the DELETE waited on the
    lock, and the new conversation's reference failed the delete's COMMIT (a 500). The delete now
    locks the persona first, so it waits before its SET NULL and clears the new conversation too."""
    client = _client(alice)
    persona = services.persona_create(user=alice, name="Held", system_prompt="Be brief.")
    existing = services.conversation_create(user=alice, title="existing")
    body = {"persona_id": str(persona.pk), "title": "with persona"}
    outcome = race_while_held(
        monkeypatch,
        services,
        "_persona_held",
        lambda: (
            (
                client.post(f"{API}/conversations", body, format="json")
                if method == "post"
                else client.patch(f"{API}/conversations/{existing.pk}", body, format="json")
            ).status_code
        ),
        lambda: client.delete(f"{API}/personas/{persona.pk}").status_code,
        "the persona's delete waits on the conversation's write",
    )
    assert outcome == {"first": 201 if method == "post" else 200, "second": 204}, outcome
    with rls.privileged(reason="test"):
        assert not Persona.objects.filter(pk=persona.pk).exists()
        assert not Conversation.objects.filter(user_id=alice.pk, persona_id__isnull=False).exists()


# --- Redis stopped mid-send -------------------------------------------------------------


def _ledger(user) -> list:
    with rls.privileged(reason="test: read the ledger"):
        return list(TokenUsage.objects.filter(user_id=user.pk).order_by("created_at"))


def _assistant_messages(user) -> list:
    with rls.privileged(reason="test"):
        return list(Message.objects.filter(user_id=user.pk, role="assistant").order_by("created_at"))


@pytest.mark.parametrize("redis_down", [True, False], ids=["redis-down", "redis-up"])
@pytest.mark.parametrize(
    ("limits", "code"),
    [
        ({"monthly_messages": 2}, "monthly_messages"),
        # One call may use its prompt (a few tokens) and 100 out: room for one with 1 used, not two.
        ({"monthly_tokens": 151, "max_output_tokens": 100}, "monthly_tokens"),
    ],
)
def test_concurrent_sends_do_not_exceed_the_monthly_limits_with_redis_up_or_down(catalog, own_redis, monkeypatch, limits, code, redis_down):
    """With Redis up the reservations hold the limit. With Redis down it is decided from the
    database: nothing was reserved then, and a send's ledger row is written only after its provider
    call, so sends checked while others were at their provider all saw the same settled count and
    all passed (each waits at a barrier of three, which only completes if all three were allowed):
    4 messages of 2. The calls in progress now count as held, and the checks queue per organization
    and month."""
    from billing.tests.factories import plan_with_limits
    from billing.tests.test_reservations import _member, _record
    from chat.providers import echo
    from config import embedded
    from config.errors import QuotaExceeded

    senders = 3
    user, org = _member(plan_with_limits(f"race-{code}", **limits))
    _record(user, org, input_tokens=1)  # one message, one token used
    if redis_down:
        embedded.redis_stop(own_redis)
    at_provider = threading.Barrier(senders, timeout=4)  # breaks (and lets them go) unless all three got through
    real = echo.complete

    async def gathered(request, **kwargs):
        try:
            at_provider.wait()
        except threading.BrokenBarrierError:
            pass
        return await real(request, **kwargs)

    monkeypatch.setattr(echo, "complete", gathered)
    outcomes = []

    def send(n):
        try:
            services.message_send(user=user, content=f"message {n}")
            outcomes.append("sent")
        except QuotaExceeded as exc:
            outcomes.append(exc.extra["code"])
        except Exception as exc:  # noqa: BLE001  surfaced below
            outcomes.append(repr(exc))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=send, args=(n,)) for n in range(senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert sorted(outcomes) == [code, code, "sent"], outcomes
    assert len(_ledger(user)) == 2


def test_a_persona_deleted_while_a_send_uses_it_waits_and_both_finish(alice, monkeypatch):
    """DELETE /personas/{id} while a send to a conversation using it holds the conversation (held)."""
    client = _client(alice)
    persona = services.persona_create(user=alice, name="Brief", system_prompt="Be brief.")
    conversation = services.conversation_create(user=alice, persona=persona)

    def send():
        reply = services.message_send(user=alice, content="hello", conversation_id=conversation.pk)
        return reply.message.status, reply.message.input_tokens

    outcome = race_while_held(
        monkeypatch,
        services,
        "entitlement_check",
        send,
        lambda: client.delete(f"{API}/personas/{persona.pk}").status_code,
        "the persona's delete waits on the conversation's row",
    )
    assert outcome == {"first": ("complete", 2 + 1), "second": 204}, outcome  # "Be brief." + "hello"
    with rls.privileged(reason="test"):
        assert Conversation.objects.get(pk=conversation.pk).persona_id is None


@pytest.mark.parametrize("role", ['["user"]', '{"r": "user"}'])
def test_a_gateway_message_role_that_is_not_a_string_is_a_400_not_a_500(alice, role):
    """POST /v1/chat/completions with messages[0].role a list or an object: `role not in ROLES`
    (a dict) hashes it and raises TypeError: a 500. It should be the 400 naming messages[0].role."""
    client = _client(alice)
    body = '{"model": "echo-1", "messages": [{"role": ' + role + ', "content": "hi"}]}'
    response = client.post("/v1/chat/completions", data=body.encode(), content_type="application/json")
    assert response.status_code == 400, response.content[:300]
    assert response.json()["error"]["param"] == "messages[0].role"
    assert _ledger(alice) == []


@pytest.mark.parametrize("method", ["post", "patch"])
def test_a_persona_system_prompt_longer_than_the_pages_limit_is_a_400_from_the_api_too(alice, method):
    """The persona page caps the system prompt at 20,000 characters (chat/forms.py PersonaForm); the
    API's PersonaSerializer takes the model's unbounded TextField, so POST/PATCH /personas store 200,000
    (up to the whole request body), which then rides in every send's prompt and which the persona's own
    edit page then refuses to save unchanged. The API should refuse it with a 400 naming the field."""
    from chat.forms import PersonaForm

    limit = PersonaForm.base_fields["system_prompt"].max_length
    client = _client(alice)
    body = {"name": "Long", "system_prompt": "x" * (limit * 10)}
    if method == "post":
        response = client.post(f"{API}/personas", body, format="json")
    else:
        persona = services.persona_create(user=alice, name="Short", system_prompt="ok")
        response = client.patch(f"{API}/personas/{persona.pk}", body, format="json")
    assert response.status_code == 400, response.status_code
    assert "system_prompt" in response.json()["extra"]["fields"]
    with rls.privileged(reason="test"):
        assert not Persona.objects.filter(user_id=alice.pk, name="Long").exists()


@pytest.mark.parametrize("tag", ["t" * 41, "work,home"])
def test_a_tag_the_page_could_not_save_back_is_a_400_from_the_api_too(alice, tag):
    """The conversation page takes tags comma-separated, each at most 40 characters: a tag the API
    stored longer, or with a comma, came back from the page's form refused or split in two."""
    client = _client(alice)
    created = client.post(f"{API}/conversations", {"title": "tagged", "tags": [tag]}, format="json")
    assert created.status_code == 400 and "tags" in created.json()["extra"]["fields"], created.content[:300]
    conversation = services.conversation_create(user=alice, title="kept", tags=["fine"])
    patched = client.patch(f"{API}/conversations/{conversation.pk}", {"tags": ["fine", tag]}, format="json")
    assert patched.status_code == 400
    with rls.privileged(reason="test"):
        assert list(Conversation.objects.filter(user_id=alice.pk).values_list("tags", flat=True)) == [["fine"]]
