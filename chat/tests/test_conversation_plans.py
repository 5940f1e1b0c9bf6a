"""The send's statements reach a conversation by its primary key, however many conversations its
user has, also where most users have one (chat migration 0014). Their cached generic plans are
what runs on every send; one through the user's index reads all of the user's conversations."""

import re
from decimal import Decimal

import pytest
from django.db import connections
from django.utils import timezone

from accounts.tests.factories import make_user
from chat import services
from chat.models import Message
from chat.services import conversation_create
from config.db import rls
from config.tests.benchkit import sql as owner_sql

pytestmark = pytest.mark.django_db(transaction=True)

HEAVY_USER_CONVERSATIONS = 3_000
ONE_CONVERSATION_USERS = 30_000
COLUMNS = (
    "id, user_id, organization_id, title, summary, tags, is_archived, message_count, total_tokens, total_cost, "
    "created_at, updated_at, imported_from, external_id"
)


def _generic_plan(user_id, sql: str) -> str:
    """EXPLAIN (GENERIC_PLAN) of a statement with %s or %(name)s placeholders, as the user (row policies applied)."""
    numbers = {}

    def number(match) -> str:
        key = match.group(1) or f"#{len(numbers)}"
        return f"${numbers.setdefault(key, len(numbers) + 1)}"

    numbered = re.sub(r"%(?:\((\w+)\))?s", number, sql)
    with rls.atomic_as(user_id), connections["default"].cursor() as cur:
        cur.execute("EXPLAIN (GENERIC_PLAN) " + numbered.replace("%%", "%"))
        return "\n".join(row[0] for row in cur.fetchall())


def _conversation_scans(plan: str) -> list[str]:
    return [line.strip() for line in plan.splitlines() if re.search(r"Scan .*on chat_conversation c(_\d+)?\b", line)]


@pytest.fixture
def heavy_user():
    """A user with thousands of conversations among tens of thousands of users with one each, analyzed."""
    user = make_user()
    first = conversation_create(user=user)
    values = "'t', '', '[]', false, 0, 0, 0, now(), now() - g * interval '1 second', '', ''"
    owner_sql(
        f"INSERT INTO chat_conversation ({COLUMNS}) SELECT gen_random_uuid(), user_id, organization_id, {values} "
        "FROM chat_conversation, generate_series(1, %s) g WHERE id = %s",
        [HEAVY_USER_CONVERSATIONS, first.pk],
    )
    owner_sql(
        f"INSERT INTO chat_conversation ({COLUMNS}) SELECT gen_random_uuid(), gen_random_uuid(), organization_id, {values} "
        "FROM chat_conversation, generate_series(1, %s) g WHERE id = %s",
        [ONE_CONVERSATION_USERS, first.pk],
    )
    owner_sql("ANALYZE chat_conversation")
    return user, first


def test_the_locking_read_finds_the_conversation_by_its_primary_key(heavy_user):
    user, _ = heavy_user
    scans = _conversation_scans(_generic_plan(user.pk, services._SEND_TARGET_SQL))
    assert scans and all("chat_conversation_pkey" in scan for scan in scans), scans


def test_the_finish_adds_to_the_totals_through_the_primary_key(heavy_user):
    user, conversation = heavy_user
    reply = Message(pk=conversation.pk, conversation=conversation, user_id=user.pk)  # only its id is read
    fields = {"content": "hi", "cost": Decimal("0.0001"), "status": Message.Status.COMPLETE}
    update = services._reply_update(reply, fields, tokens=1, now=timezone.now())
    sql = f"WITH {update.sql} SELECT (SELECT count(*) FROM alongside), (SELECT count(*) FROM conversation_totals)"
    scans = _conversation_scans(_generic_plan(user.pk, sql))
    assert scans and all("chat_conversation_pkey" in scan for scan in scans), scans
    assert Decimal(0) == conversation.total_cost  # nothing ran: a plan only


def test_the_list_page_still_reads_the_users_index(heavy_user):
    """The hint makes a user's conversations many to the planner; their newest page still comes from their index."""
    from chat.selectors import conversation_list

    user, _ = heavy_user
    with rls.atomic_as(user.pk):
        plan = conversation_list(user=user, archived=False)[:50].explain()
    assert "chat_conv_user_updated" in plan, plan


def _user_id_options():
    return owner_sql("SELECT attoptions FROM pg_attribute WHERE attrelid = 'chat_conversation'::regclass AND attname = 'user_id'")[0][0]


def test_the_hint_reverses_and_applies_again():
    from django.db.migrations.executor import MigrationExecutor

    assert _user_id_options() == ["n_distinct=-0.05"]
    executor = MigrationExecutor(connections["owner"])
    leaves = [key for key in executor.loader.graph.leaf_nodes() if key[0] == "chat"]
    executor.migrate([("chat", "0013_share_links_of_active_accounts_only")])
    try:
        assert _user_id_options() is None
    finally:
        MigrationExecutor(connections["owner"]).migrate(leaves)
    assert _user_id_options() == ["n_distinct=-0.05"]
