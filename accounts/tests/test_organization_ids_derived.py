"""The caller's organizations come from their memberships: a forged `app.organization_ids`
widens nothing (raw SQL as the app role), and policies read them once per query."""

from datetime import date

import psycopg
import pytest
from django.db import connections

from accounts import services
from accounts.models import Membership
from accounts.tests.factories import make_user
from analytics.models import UsageRollup
from config.db import rls

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def strangers():
    """Alice and Bob, strangers: each their personal organization, with an invitation and a rollup in it."""
    alice, bob = make_user(email="alice@example.com"), make_user(email="bob@example.com")
    with rls.privileged(reason="test fixture"):
        for user in (alice, bob):
            organization = Membership.objects.get(user=user).organization
            services.invitation_create(actor=user, organization=organization, email=f"guest-of-{user.email}", role="member")
            UsageRollup.objects.create(
                period="day", period_start=date(2026, 1, 1), organization=organization, user=user, provider="openai", model="m"
            )
    return (
        alice,
        Membership.objects.using("privileged").get(user=alice).organization_id,
        bob,
        Membership.objects.using("privileged").get(user=bob).organization_id,
    )


def _as(cur, user, organization_ids: str = "") -> None:
    cur.execute(
        "SELECT set_config('app.user_id', %s, true), set_config('app.organization_ids', %s, true)", [str(user.pk), organization_ids]
    )


def _rows(cur, query: str) -> set:
    cur.execute(query)
    return {row[0] for row in cur.fetchall()}


def test_a_forged_organization_list_reads_nothing_of_that_organization(raw_app_connection, strangers):
    alice, alice_org, bob, bob_org = strangers
    with raw_app_connection.cursor() as cur:
        _as(cur, alice, f"{alice_org},{bob_org}")
        assert _rows(cur, "SELECT id FROM accounts_organization") == {alice_org}
        assert _rows(cur, "SELECT organization_id FROM accounts_membership") == {alice_org}
        assert _rows(cur, "SELECT organization_id FROM accounts_invitation") == {alice_org}
        assert _rows(cur, "SELECT organization_id FROM analytics_usagerollup") == {alice_org}
        assert _rows(cur, "SELECT id FROM accounts_user") == {alice.pk}
        assert _rows(cur, "SELECT unnest(app_organization_ids())") == {alice_org}


def test_a_forged_organization_list_records_no_usage_there(raw_app_connection, strangers):
    alice, alice_org, _, bob_org = strangers
    insert = (
        "INSERT INTO analytics_tokenusage (created_at, user_id, organization_id, provider, model, input_tokens, output_tokens, "
        "total_tokens, input_price, output_price, cost, request_id, latency_ms, success, error) "
        "VALUES (now(), %s, %s, 'openai', 'm', 1, 1, 2, 0, 0, 0, 'req', 1, true, '')"
    )
    with raw_app_connection.cursor() as cur:
        _as(cur, alice, f"{alice_org},{bob_org}")
        cur.execute(insert, [alice.pk, alice_org])
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            cur.execute(insert, [alice.pk, bob_org])


def test_organizations_come_from_memberships_without_a_list(raw_app_connection, strangers):
    alice, alice_org, _, _ = strangers
    with raw_app_connection.cursor() as cur:
        _as(cur, alice)
        assert _rows(cur, "SELECT id FROM accounts_organization") == {alice_org}
        assert _rows(cur, "SELECT organization_id FROM analytics_usagerollup") == {alice_org}


def test_every_policy_reads_the_organizations_once_per_query():
    """A call per row would run the membership lookup for every row a query reads."""
    with connections["owner"].cursor() as cur:
        cur.execute(
            "SELECT tablename, policyname FROM pg_policies "
            "WHERE concat(qual, ' ', with_check) LIKE '%%app_organization_ids()%%' "
            "AND concat(qual, ' ', with_check) NOT LIKE '%%SELECT app_organization_ids()%%'"
        )
        assert cur.fetchall() == []
        cur.execute("SELECT policyname FROM pg_policies WHERE concat(qual, ' ', with_check) LIKE '%%SELECT app_organization_ids()%%'")
        assert {row[0] for row in cur.fetchall()} >= {
            "accounts_user_fellow_members",
            "accounts_organization_read",
            "accounts_membership_read",
            "accounts_invitation_read",
            "analytics_usagerollup_read",
            "analytics_tokenusage_record",
        }
