"""The indexes a send writes (chat 0012, analytics 0009): none that another index already covers,
and the stale-stream sweep's index holds streaming rows only; the readers still find an index."""

import pytest
from django.db import connections, transaction
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

from chat.models import Message
from config.db import rls

pytestmark = pytest.mark.django_db(transaction=True)


def _indexes(table: str) -> dict[str, str]:
    with connections["owner"].cursor() as cur:
        cur.execute("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = %s", [table])
        return dict(cur.fetchall())


def _plan(queryset) -> str:
    """The plan with sequential scans priced out, so a usable index shows even on empty tables."""
    with rls.privileged(reason="test: the plan of a system query"):
        alias = queryset.db
        with transaction.atomic(using=alias), connections[alias].cursor() as cur:
            cur.execute("SET LOCAL enable_seqscan = off")
            return queryset.explain()


def test_a_message_write_touches_no_index_another_covers():
    messages = _indexes("chat_message")
    by_conversation = [name for name, sql in messages.items() if sql.endswith("USING btree (conversation_id)")]
    assert by_conversation == []  # chat_message_sequence_unique leads with conversation_id
    assert messages["chat_message_sequence_unique"].endswith("(conversation_id, sequence)")
    assert messages["chat_message_streaming_created"].endswith("(created_at) WHERE ((status)::text = 'streaming'::text)")
    assert "chat_message_status_created" not in messages
    assert [name for name in _indexes("analytics_usagerequest") if name.endswith("_like")] == []


def test_the_readers_still_use_an_index():
    cutoff = timezone.now()
    stale = Message.objects.filter(status=Message.Status.STREAMING, created_at__lt=cutoff)  # as streams_close_stale
    assert "chat_message_streaming_created" in _plan(stale)
    history = Message.objects.filter(conversation_id="00000000-0000-0000-0000-000000000001").order_by("sequence")
    assert "chat_message_sequence_unique" in _plan(history)


def test_the_migrations_reverse_and_apply_again():
    executor = MigrationExecutor(connections["owner"])
    leaves = [key for key in executor.loader.graph.leaf_nodes() if key[0] in ("chat", "analytics")]
    executor.migrate([("chat", "0011_one_export_and_one_import_at_a_time"), ("analytics", "0008_reconciliation_reports")])
    try:
        messages = _indexes("chat_message")
        assert "chat_message_status_created" in messages and "chat_message_streaming_created" not in messages
        assert any(sql.endswith("USING btree (conversation_id)") for sql in messages.values())
        assert any(name.endswith("_like") for name in _indexes("analytics_usagerequest"))
    finally:
        MigrationExecutor(connections["owner"]).migrate(leaves)
    test_a_message_write_touches_no_index_another_covers()
