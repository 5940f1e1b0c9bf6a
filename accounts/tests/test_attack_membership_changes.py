"""Attack review of membership changes against what a member holds or is using: a member removed
(or leaving) while a reply of theirs is being made, and the web role's raw SQL after a removal.
Each test's docstring: what is done, what happens now ("Was: ..."), what should ("Should: ...")."""

from __future__ import annotations

import json
import uuid

import psycopg
import pytest
from django.db import connections
from django.db.migrations.executor import MigrationExecutor

from accounts.tests.test_api import API, key_client, session_client
from accounts.tests.test_attack_lifecycle import _join, _no_raise, acme, alice, bob  # noqa: F401  (fixtures)
from analytics.models import TokenUsage
from billing.tests.conftest import plans  # noqa: F401  (a fixture)
from chat import services as chat_services
from chat.models import Message, ModelPrice
from config.db import rls
from config.tests.races import Paused, hold_in_thread

pytestmark = pytest.mark.django_db(transaction=True)


def _as(cur, user) -> None:
    cur.execute("SELECT set_config('app.user_id', %s, true)", [str(user.pk)])


# --- 1. A removal against a send in flight ----------------------------------------------------------


@pytest.mark.parametrize("how", ["removed", "leaves"])
def test_a_member_removed_while_their_reply_is_being_made_is_answered_and_metered_exactly(alice, bob, acme, settings, monkeypatch, how):  # noqa: F811
    """Bob (member of Acme) sends a message in a conversation of Acme through the API; the check
    passes and the call goes to the provider. Meanwhile Alice removes him (or he leaves Acme in
    another tab). The reply comes back and _reply_finish writes the ledger row under Bob's own
    context, and analytics_tokenusage's WITH CHECK wants the row's organization among his.
    Was: 'new row violates row-level security policy for table "analytics_tokenusage"': the send
    answers 500, the reply stays `streaming` with no text, nothing is on the ledger and the
    reservation is not released; a quarter of an hour later the stale pass meters an estimate
    (no output), not what the provider counted.
    Should: the call, allowed when it was checked, is stored and metered once, exactly, to Acme
    (201), e.g. the finish writes the ledger row of a call already checked through the privileged
    context, or the ledger's policy takes the organization the reservation was made for."""
    settings.CHAT_ECHO_DELAY = 0
    membership = _join(acme, bob)
    conversation = chat_services.conversation_create(user=bob, title="team", organization_id=acme.pk)
    script = _no_raise(key_client(bob, scopes=("chat:read", "chat:write", "account:read", "account:write")))
    reached, release = hold_in_thread(monkeypatch, chat_services, "message_prepare", "bob")
    send = Paused(
        lambda: script.post(f"{API}/conversations/{conversation.pk}/messages", {"content": "one two three"}, format="json"), "bob"
    )
    send.start()
    assert reached.wait(60), "Bob's send never passed its check"
    if how == "removed":
        assert session_client(alice).delete(f"{API}/organizations/{acme.pk}/members/{membership.pk}").status_code == 204
    else:
        assert session_client(bob).post(f"{API}/organizations/{acme.pk}/leave").status_code == 204
    release.set()
    send.join(60)
    response = send.result
    with rls.privileged(reason="test: what was stored and metered"):
        reply = Message.objects.filter(conversation_id=conversation.pk, role="assistant").first()
        ledger = list(TokenUsage.objects.filter(organization_id=acme.pk).values_list("input_tokens", "output_tokens", "estimated"))
    status = getattr(response, "status_code", repr(response))
    assert (status, reply.status, len(ledger)) == (201, "complete", 1), (
        f"send: {status} {getattr(response, 'content', b'')[:200]!r}; reply {reply.status!r}; Acme's ledger rows: {ledger}"
    )
    assert ledger[0][2] is False and ledger[0][1] == reply.output_tokens > 0, ledger


# --- 2. The web role's raw SQL after a removal ------------------------------------------------------


@pytest.mark.parametrize("where", ["his old conversation", "a new conversation", "his old reply set back", "his own conversation moved"])
def test_a_removed_members_raw_sql_cannot_put_calls_on_the_organizations_ledger(alice, bob, acme, raw_app_connection, where):  # noqa: F811
    """Bob was a member of Acme (he keeps the conversations he had there, and knows Acme's id);
    Alice removes him. As the web role, under his own context, he writes a `streaming` reply
    whose metadata names a price and a prompt estimate of a billion tokens, into his old Acme
    conversation or into a new conversation he inserts billed to Acme: chat_conversation's policy
    checks only that the row and its persona are his, chat_message's only that the conversation is
    his, never that he belongs to its organization. The stale-stream pass, which runs privileged,
    closes the reply and meters its estimate to the conversation's organization.
    Was: the inserts are accepted, and the stale pass writes a ledger row billing Acme $2,500 in
    Bob's name after he left (and Acme's live counters then refuse its own members' sends). The
    same by setting one of his old replies back to `streaming`, or by moving a conversation of
    his own into Acme (both accepted too).
    Should: the row policies refuse a conversation, or a message in one, billed to an organization
    the writer is not a member of (as chat_pendingcall's and the ledger's own policies already
    do), so a former member can put nothing on the organization's ledger."""
    membership = _join(acme, bob)
    old = chat_services.conversation_create(user=bob, title="his", organization_id=acme.pk)
    chat_services.message_send(user=bob, content="hello", conversation_id=old.pk)
    assert session_client(alice).delete(f"{API}/organizations/{acme.pk}/members/{membership.pk}").status_code == 204
    with rls.privileged(reason="test: a price in the catalog"):
        price = ModelPrice.objects.filter(provider="openai", model="gpt-4o").order_by("-effective_from").first()
    conversation_id, request_id = (old.pk if where == "his old conversation" else uuid.uuid4()), uuid.uuid4().hex
    metadata = json.dumps({"request_id": request_id, "price_id": str(price.pk), "prompt_tokens_estimate": 10**9, "key_source": "managed"})
    refused = None
    with raw_app_connection.cursor() as cur:
        _as(cur, bob)
        try:
            if where == "his old reply set back":  # the stale pass would meter it again, at the forged estimate
                cur.execute(
                    "UPDATE chat_message SET status = 'streaming', metadata = %s, created_at = now() - interval '1 hour'"
                    " WHERE conversation_id = %s AND role = 'assistant'",
                    [metadata, old.pk],
                )
                raw_app_connection.commit()
                raise AssertionError("a reply was set back to streaming")
            if where == "his own conversation moved":
                personal = chat_services.conversation_create(user=bob, title="mine")
                cur.execute("UPDATE chat_conversation SET organization_id = %s WHERE id = %s", [acme.pk, personal.pk])
                raw_app_connection.commit()
                raise AssertionError("a conversation moved into an organization")
            if where == "a new conversation":
                cur.execute(
                    "INSERT INTO chat_conversation (id, user_id, organization_id, title, summary, tags, is_archived, message_count,"
                    " total_tokens, total_cost, created_at, updated_at, imported_from, external_id)"
                    " VALUES (%s, %s, %s, 'x', '', '[]', false, 0, 0, 0, now(), now(), '', '')",
                    [conversation_id, bob.pk, acme.pk],
                )
            cur.execute(
                "INSERT INTO chat_message (id, conversation_id, user_id, sequence, role, content, provider, model, input_tokens,"
                " output_tokens, cost, latency_ms, status, error, metadata, created_at, imported)"
                " VALUES (gen_random_uuid(), %s, %s, 1000, 'assistant', '', 'openai', 'gpt-4o', 0, 0, 0, 0, 'streaming', '', %s,"
                " now() - interval '1 hour', false)",
                [conversation_id, bob.pk, metadata],
            )
            raw_app_connection.commit()
        except (psycopg.errors.InsufficientPrivilege, psycopg.errors.CheckViolation) as exc:
            refused = str(exc).splitlines()[0]
            raw_app_connection.rollback()
    chat_services.streams_close_stale(older_than_minutes=0)
    with rls.privileged(reason="test: Acme's ledger"):
        billed = list(TokenUsage.objects.filter(organization_id=acme.pk, request_id=request_id).values_list("input_tokens", "cost"))
    assert refused is not None and billed == [], f"the web role's inserts were accepted; Acme billed for Bob after his removal: {billed}"


def _own_organization_rules() -> set[str]:
    with connections["owner"].cursor() as cur:
        cur.execute(
            "SELECT policyname FROM pg_policies WHERE policyname LIKE '%%in_own_organization'"
            " UNION ALL SELECT tgname FROM pg_trigger WHERE tgname = 'chat_conversation_organization_fixed'"
        )
        return {name for (name,) in cur.fetchall()}


def test_the_own_organization_rules_reverse_and_apply_again():
    """chat 0015's policies and trigger go with its reverse and come back."""
    rules = {
        "chat_conversation_made_in_own_organization",
        "chat_message_streaming_inserted_in_own_organization",
        "chat_message_streaming_updated_in_own_organization",
        "chat_conversation_organization_fixed",
    }
    assert _own_organization_rules() == rules
    leaves = MigrationExecutor(connections["owner"]).loader.graph.leaf_nodes()
    MigrationExecutor(connections["owner"]).migrate([("chat", "0014_conversation_user_distinct_hint")])
    try:
        assert _own_organization_rules() == set()
    finally:
        MigrationExecutor(connections["owner"]).migrate(leaves)
    assert _own_organization_rules() == rules
