"""Revenue for staff: a known set of subscriptions gives exact Decimal figures, the task
stores them in a snapshot the web role can neither read nor write, and /billing/staff/
shows them to staff only."""

import json
import re
from datetime import timedelta
from decimal import Decimal

import psycopg
import pytest
from django.conf import settings
from django.utils import timezone

from accounts.tests.factories import make_user
from billing import services
from billing.models import RevenueSnapshot, Subscription
from billing.revenue import revenue_figures
from billing.tasks import revenue_snapshot_task
from billing.tests.factories import organization_of, put_on_plan
from config.celery import app as celery_app
from config.db import rls

pytestmark = pytest.mark.django_db(transaction=True)
STAFF_PAGE = "/billing/staff/"


@pytest.fixture
def book(plans):
    """Eight organizations: A pro monthly, B pro yearly, C enterprise monthly past due, D pro
    in trial, E pro monthly converted from a trial this month, F churned from enterprise to
    free, G moved from pro to enterprise yearly, H free."""
    now = timezone.now()
    orgs = {name: organization_of(make_user()) for name in "ABCDEFGH"}
    pro, enterprise = plans["pro"], plans["enterprise"]
    put_on_plan(orgs["A"], pro)
    put_on_plan(orgs["B"], pro, interval="year")
    put_on_plan(orgs["C"], enterprise, status="past_due", past_due_since=now)
    put_on_plan(orgs["D"], pro, status="trialing", trial_end=now + timedelta(days=10))
    month_start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    put_on_plan(orgs["E"], pro, trial_end=max(month_start, now - timedelta(minutes=1)))
    put_on_plan(orgs["F"], enterprise)
    put_on_plan(orgs["G"], pro)
    with rls.privileged(reason="test factory"):
        services.subscription_plan_set(organization=orgs["F"], plan=plans["free"])
        services.subscription_plan_set(organization=orgs["G"], plan=enterprise, interval="year")
    return orgs


def test_a_known_set_of_subscriptions_gives_exact_figures(book):
    snapshot_id = revenue_snapshot_task.apply().get()
    with rls.privileged(reason="test"):
        snapshot = RevenueSnapshot.objects.get(pk=snapshot_id)
    # 20 + 200/12 + 200 + 20 + 2000/12 = 423.333...; ARR from the exact sum: 5080, not 12 x 423.33.
    assert (snapshot.mrr, snapshot.arr) == (Decimal("423.33"), Decimal("5080.00"))
    assert (snapshot.paying_organizations, snapshot.trial_conversions, snapshot.churned_this_month) == (5, 1, 1)
    assert snapshot.currency == "usd"
    assert {(r["plan"], r["status"]): r["organizations"] for r in snapshot.by_plan_status} == {
        ("free", "active"): 2,
        ("pro", "active"): 3,
        ("pro", "trialing"): 1,
        ("enterprise", "active"): 1,
        ("enterprise", "past_due"): 1,
    }


def test_a_trial_whose_first_charge_failed_is_not_a_trial_conversion(plans):
    """A Pro trial ends this month and Stripe's first charge fails: the subscription is past due
    (nothing was ever paid). Was: revenue_figures counted conversions as trials that ended this
    month "and [were] paid for", but took PAYING = (active, past_due) for "paid": the failed trial
    was a conversion on the staff revenue page. Should: 0 conversions until a charge succeeds."""
    now = timezone.now()
    month_start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    trial_end = max(month_start, now - timedelta(minutes=5))
    org = organization_of(make_user())
    put_on_plan(
        org,
        plans["pro"],
        status=Subscription.Status.PAST_DUE,
        trial_end=trial_end,
        past_due_since=trial_end,
        stripe_subscription_id="sub_1",
        stripe_customer_id="cus_1",
    )
    with rls.privileged(reason="test: staff read the figures"):
        figures = revenue_figures(now=now)
    assert figures["trial_conversions"] == 0, figures


def test_the_snapshot_task_is_scheduled():
    [entry] = [e for e in settings.CELERY_BEAT_SCHEDULE.values() if e["task"] == "billing.tasks.revenue_snapshot_task"]
    assert entry["task"] in celery_app.tasks


def test_snapshots_are_invisible_to_the_web_role(raw_app_connection, plans):
    revenue_snapshot_task.apply()
    with raw_app_connection.cursor() as cur:
        cur.execute("SELECT count(*) FROM billing_revenuesnapshot")
        assert cur.fetchone()[0] == 0
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            cur.execute(
                "INSERT INTO billing_revenuesnapshot (id, taken_at, by_plan_status, mrr, arr, paying_organizations, trial_conversions, churned_this_month, currency) VALUES (gen_random_uuid(), now(), '[]', 1, 12, 0, 0, 0, 'usd')"
            )
    raw_app_connection.rollback()
    with raw_app_connection.cursor() as cur:
        cur.execute("UPDATE billing_revenuesnapshot SET mrr = 0")
        assert cur.rowcount == 0
        cur.execute("DELETE FROM billing_revenuesnapshot")
        assert cur.rowcount == 0
    raw_app_connection.rollback()
    with rls.privileged(reason="test"):
        assert RevenueSnapshot.objects.count() == 1


def test_the_staff_page_shows_the_latest_snapshot_to_staff_only(client, book):
    revenue_snapshot_task.apply()
    assert client.get(STAFF_PAGE)["Location"].startswith("/accounts/login/")
    client.force_login(make_user())
    assert client.get(STAFF_PAGE).status_code == 403
    staff = make_user(role="staff")
    client.force_login(staff)
    content = client.get(STAFF_PAGE).content.decode()
    for text in ("$423.33", "$5080.00", "Paying organizations", "Churned this month", 'href="/usage/staff/"'):
        assert text in content
    charts = [json.loads(c.replace("&quot;", '"')) for c in re.findall(r'data-chart="([^"]+)"', content)]
    assert [c["type"] for c in charts] == ["line", "bar"]
    assert charts[0]["data"]["datasets"][0]["data"] == [423.33]
    assert 'href="/billing/staff/"' in client.get("/admin/").content.decode()  # linked from the admin index


def test_the_staff_page_before_any_snapshot(client, plans):
    client.force_login(make_user(role="staff"))
    response = client.get(STAFF_PAGE)
    assert response.status_code == 200 and "No snapshot yet" in response.content.decode()


def test_staff_page_query_count(client, book, django_assert_num_queries):
    revenue_snapshot_task.apply()
    client.force_login(make_user(role="staff"))
    client.get(STAFF_PAGE)
    # Through the privileged alias: BEGIN, the latest snapshot, the last snapshot of each day, COMMIT, RESET ALL.
    with django_assert_num_queries(5, using="privileged"):
        client.get(STAFF_PAGE)
