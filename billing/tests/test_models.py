"""The database rules: one current subscription per organization, a free start for every
organization (new or pre-existing), and row-level security on every billing table."""

import psycopg
import pytest
from django.db import connections
from django.db.migrations.executor import MigrationExecutor

from accounts.models import Membership, Organization
from accounts.tests.factories import make_user
from billing.models import Plan, Subscription
from config.db import rls

pytestmark = pytest.mark.django_db(transaction=True)


def _org_of(user) -> Organization:
    with rls.privileged(reason="test"):
        return Membership.objects.get(user=user, role="owner").organization


def _context(cur, user):
    org_ids = ",".join(str(o) for o in Membership.objects.using("privileged").filter(user=user).values_list("organization_id", flat=True))
    cur.execute("SELECT set_config('app.user_id', %s, true), set_config('app.organization_ids', %s, true)", [str(user.pk), org_ids])


def _current(org) -> list[Subscription]:
    return list(Subscription.objects.using("privileged").filter(organization=org, status__in=["trialing", "active", "past_due"]))


def test_a_new_organization_starts_on_the_free_plan():
    org = _org_of(make_user())
    [subscription] = _current(org)
    assert subscription.plan.slug == "free" and subscription.status == "active"


def test_an_organization_created_in_a_web_request_starts_on_free_and_its_owner_reads_it():
    """The app role under RLS creates the organization; the trigger still adds its subscription."""
    from accounts.services import organization_create
    from billing import selectors

    user = make_user()
    with rls.atomic():
        rls.context_set(user_id=user.pk)
        org = organization_create(user=user, name="Acme")
        assert selectors.subscription_current(organization_id=org.pk).plan.slug == "free"
    assert [s.plan.slug for s in _current(org)] == ["free"]


def test_the_database_refuses_a_second_current_subscription(plans):
    org = _org_of(make_user())
    pro = plans["pro"]
    with pytest.raises(Exception, match="billing_subscription_one_current"), rls.privileged(reason="test"):
        Subscription.objects.create(organization=org, plan=pro, status="trialing")


def test_the_database_refuses_to_leave_an_organization_without_a_current_subscription():
    org = _org_of(make_user())
    with pytest.raises(Exception, match="without a current subscription"), rls.privileged(reason="test"):
        Subscription.objects.filter(organization=org).update(status="canceled")
    assert len(_current(org)) == 1


def test_migrating_a_database_with_organizations_puts_each_on_free():
    """Unapply billing, create organizations the old way, migrate again: one free subscription each."""
    executor = MigrationExecutor(connections["owner"])
    leaf = [key for key in executor.loader.graph.leaf_nodes() if key[0] == "billing"]
    executor.migrate([("billing", None)])
    try:
        with connections["owner"].cursor() as cur:
            for n in range(3):
                cur.execute(
                    "INSERT INTO accounts_organization (id, name, slug, is_personal, auto_join_domain, created_at, updated_at)"
                    " VALUES (gen_random_uuid(), %s, %s, false, '', now(), now())",
                    [f"Old {n}", f"old-{n}"],
                )
    finally:
        executor = MigrationExecutor(connections["owner"])
        executor.migrate(leaf)
    orgs = list(Organization.objects.using("privileged").filter(slug__startswith="old-"))
    assert len(orgs) == 3
    for org in orgs:
        [subscription] = _current(org)
        assert subscription.plan.slug == "free"
    assert set(Plan.objects.using("privileged").values_list("slug", flat=True)) >= {"free", "pro", "enterprise"}


def test_members_read_their_organizations_billing_and_only_owners_and_admins_change_it(raw_app_connection, plans):
    owner, member, stranger = make_user(), make_user(), make_user()
    org = _org_of(owner)
    with rls.privileged(reason="test"):
        Membership.objects.create(organization=org, user=member, role="member")
    pro = plans["pro"]
    with raw_app_connection.cursor() as cur:
        _context(cur, member)
        cur.execute("SELECT organization_id FROM billing_subscription")
        assert {r[0] for r in cur.fetchall()} == {org.pk, _org_of(member).pk}
        cur.execute("UPDATE billing_subscription SET plan_id = %s WHERE organization_id = %s", [pro.pk, org.pk])
        assert cur.rowcount == 0  # a member reads, never changes
        raw_app_connection.rollback()
        _context(cur, stranger)
        cur.execute("SELECT count(*) FROM billing_subscription WHERE organization_id = %s", [org.pk])
        assert cur.fetchone()[0] == 0
        cur.execute("UPDATE billing_subscription SET plan_id = %s WHERE organization_id = %s", [pro.pk, org.pk])
        assert cur.rowcount == 0
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            cur.execute(
                "INSERT INTO billing_subscription (id, organization_id, plan_id, interval, status, current_period_start,"
                " cancel_at_period_end, scheduled_interval, stripe_customer_id, stripe_subscription_id, created_at, updated_at)"
                " VALUES (gen_random_uuid(), %s, %s, 'month', 'canceled', now(), false, '', '', '', now(), now())",
                [org.pk, pro.pk],
            )
        raw_app_connection.rollback()
        _context(cur, owner)
        cur.execute("UPDATE billing_subscription SET cancel_at_period_end = true WHERE organization_id = %s", [org.pk])
        assert cur.rowcount == 1
    raw_app_connection.rollback()


def test_plans_are_readable_by_everyone_and_writable_by_no_web_request(raw_app_connection, plans):
    with raw_app_connection.cursor() as cur:
        cur.execute("SELECT count(*) FROM billing_plan WHERE slug = 'free'")
        assert cur.fetchone()[0] == 1
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            cur.execute("UPDATE billing_plan SET monthly_tokens = 1")
    raw_app_connection.rollback()


def test_stripe_events_are_invisible_to_the_web_role(raw_app_connection):
    with raw_app_connection.cursor() as cur, pytest.raises(psycopg.errors.InsufficientPrivilege):
        cur.execute("SELECT count(*) FROM billing_stripeevent")
    raw_app_connection.rollback()
