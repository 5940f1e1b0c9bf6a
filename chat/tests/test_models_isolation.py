"""Row-level security on chat's tables, proven with raw SQL as the web (`app`) role."""

import psycopg
import pytest

from accounts.tests.factories import make_user
from chat import services
from chat.models import Conversation, Message, ModelPrice, Persona
from config.db import rls

pytestmark = pytest.mark.django_db(transaction=True)
USER_OWNED = {"chat_conversation": Conversation, "chat_message": Message, "chat_persona": Persona}


@pytest.fixture
def tenants(catalog, plans):
    """Alice and Bob, each with a persona and a conversation of two messages."""
    alice, bob = make_user(email="alice@example.com"), make_user(email="bob@example.com")
    for user in (alice, bob):
        services.persona_create(user=user, name="Terse", system_prompt="Be brief.")
        services.message_send(user=user, content=f"hello from {user.email}")
    return alice, bob


def _as(cur, user):
    cur.execute("SELECT set_config('app.user_id', %s, true)", [str(user.pk) if user else ""])


@pytest.mark.parametrize("table", sorted(USER_OWNED))
def test_user_owned_chat_table_is_isolated(raw_app_connection, tenants, table):
    alice, bob = tenants
    with raw_app_connection.cursor() as cur:
        _as(cur, alice)
        cur.execute(f"SELECT DISTINCT user_id FROM {table}")
        assert cur.fetchall() == [(alice.pk,)]
        cur.execute(f"UPDATE {table} SET user_id = user_id WHERE user_id = %s", [bob.pk])
        assert cur.rowcount == 0
        cur.execute(f"DELETE FROM {table} WHERE user_id = %s", [bob.pk])
        assert cur.rowcount == 0
        with pytest.raises(psycopg.errors.InsufficientPrivilege):  # writing a row as someone else
            cur.execute(f"UPDATE {table} SET user_id = %s WHERE user_id = %s", [bob.pk, alice.pk])
    raw_app_connection.rollback()
    with rls.privileged(reason="test"):
        assert USER_OWNED[table].objects.filter(user_id=bob.pk).exists()


def test_no_context_reads_no_chat_rows_but_the_catalog(raw_app_connection, tenants):
    with raw_app_connection.cursor() as cur:
        for table in USER_OWNED:
            cur.execute(f"SELECT count(*) FROM {table}")
            assert cur.fetchone()[0] == 0, table
        cur.execute("SELECT count(*) FROM chat_modelprice")
        assert cur.fetchone()[0] == ModelPrice.objects.using("privileged").count() > 0


def test_a_message_cannot_be_inserted_into_another_users_conversation(raw_app_connection, tenants):
    alice, bob = tenants
    with rls.privileged(reason="test"):
        bobs = Conversation.objects.get(user_id=bob.pk)
    with raw_app_connection.cursor() as cur:
        _as(cur, alice)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            cur.execute(
                "INSERT INTO chat_message (id, conversation_id, user_id, sequence, role, content, provider, model, input_tokens,"
                " output_tokens, cost, latency_ms, status, error, metadata, created_at)"
                " VALUES (gen_random_uuid(), %s, %s, 9, 'user', 'x', '', '', 0, 0, 0, 0, 'complete', '', '{}', now())",
                [bobs.pk, bob.pk],
            )


def test_a_message_in_ones_own_name_cannot_go_into_another_users_conversation(raw_app_connection, tenants):
    """Failed before chat 0009: the policy checked the message's user_id only."""
    alice, bob = tenants
    with rls.privileged(reason="test"):
        bobs = Conversation.objects.get(user_id=bob.pk)
        alices = Message.objects.filter(user_id=alice.pk).first()
    with raw_app_connection.cursor() as cur:
        _as(cur, alice)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            cur.execute(
                "INSERT INTO chat_message (id, conversation_id, user_id, sequence, role, content, provider, model, input_tokens,"
                " output_tokens, cost, latency_ms, status, error, metadata, created_at)"
                " VALUES (gen_random_uuid(), %s, %s, 99, 'user', 'planted', '', '', 0, 0, 0, 0, 'complete', '', '{}', now())",
                [bobs.pk, alice.pk],
            )
        raw_app_connection.rollback()
        _as(cur, alice)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):  # moving one of hers there
            cur.execute("UPDATE chat_message SET conversation_id = %s, sequence = 99 WHERE id = %s", [bobs.pk, alices.pk])
        raw_app_connection.rollback()
        _as(cur, alice)
        cur.execute("UPDATE chat_message SET content = 'edited' WHERE id = %s", [alices.pk])  # her own stays writable
        assert cur.rowcount == 1
    raw_app_connection.rollback()


def test_a_conversation_cannot_name_another_users_persona(raw_app_connection, tenants):
    """Failed before chat 0009: the policy checked the conversation's user_id only."""
    alice, bob = tenants
    with rls.privileged(reason="test"):
        bobs_persona = Persona.objects.create(user_id=bob.pk, name="Bob's", system_prompt="secret")
        alices_persona = Persona.objects.create(user_id=alice.pk, name="Alice's", system_prompt="hers")
        alices = Conversation.objects.get(user_id=alice.pk)
    with raw_app_connection.cursor() as cur:
        _as(cur, alice)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            cur.execute("UPDATE chat_conversation SET persona_id = %s WHERE id = %s", [bobs_persona.pk, alices.pk])
        raw_app_connection.rollback()
        _as(cur, alice)
        cur.execute("UPDATE chat_conversation SET persona_id = %s WHERE id = %s", [alices_persona.pk, alices.pk])
        assert cur.rowcount == 1
    raw_app_connection.rollback()


def test_only_staff_write_the_catalog(raw_app_connection, tenants):
    alice, _ = tenants
    with raw_app_connection.cursor() as cur:
        _as(cur, alice)
        for statement in ("UPDATE chat_modelprice SET input_price = 0", "DELETE FROM chat_modelprice"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                cur.execute(statement)
            raw_app_connection.rollback()
            _as(cur, alice)


def test_sequence_numbers_are_unique_per_conversation(tenants):
    alice, _ = tenants
    with rls.privileged(reason="test"):
        message = Message.objects.filter(user_id=alice.pk).first()
        with pytest.raises(Exception, match="chat_message_sequence_unique"):
            Message.objects.create(conversation_id=message.conversation_id, user_id=alice.pk, sequence=message.sequence, role="user")
