"""Plan changes: upgrades at once, downgrades at the period's end unless now, paid plans
requested when payment is not configured, cancel/resume, members refused, two concurrent
changes serialized by the lock, and ended periods written down by the periodic task."""

import threading
from datetime import timedelta

import pytest
from django.db import connections
from django.utils import timezone

from accounts.models import Membership
from accounts.tests.factories import make_user
from billing import selectors, services
from billing.models import Subscription
from billing.tests.factories import current_subscription, organization_of, put_on_plan
from config.db import rls
from config.errors import ApplicationError, ForbiddenError

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def owner(plans):
    user = make_user()
    return user, organization_of(user)


def _as(user, fn, **kwargs):
    """Run a service as `user` in a web request's context (app role, RLS on)."""
    with rls.atomic():
        rls.context_set(user_id=user.pk)
        return fn(**kwargs)


def _staff_sets(org, plan):
    with rls.privileged(reason="staff in admin"):
        return services.subscription_plan_set(organization=org, plan=plan)


@pytest.fixture
def paid(settings):
    settings.STRIPE_SECRET_KEY = "sk_test_configured"


def test_without_payment_a_paid_plan_is_requested_not_given(owner, plans):
    user, org = owner
    _as(user, services.subscription_change, actor=user, organization=org, plan=plans["pro"])
    subscription = current_subscription(org)
    assert subscription.plan.slug == "free" and subscription.requested_plan_id == plans["pro"].pk


def test_with_payment_configured_a_paid_upgrade_goes_through_checkout(owner, plans, paid):
    user, org = owner
    with pytest.raises(ApplicationError, match="bought through checkout") as refused:
        _as(user, services.subscription_change, actor=user, organization=org, plan=plans["pro"])
    assert refused.value.status_code == 402 and current_subscription(org).plan.slug == "free"


def test_a_granted_upgrade_applies_at_once_and_keeps_the_old_row_as_history(owner, plans):
    _, org = owner
    _staff_sets(org, plans["pro"])
    subscription = current_subscription(org)
    assert subscription.plan.slug == "pro" and subscription.current_period_end > timezone.now()
    with rls.privileged(reason="test"):
        assert Subscription.objects.filter(organization=org, status="canceled").count() == 1


def test_downgrades_wait_for_the_period_end_unless_chosen_now(owner, plans):
    user, org = owner
    _staff_sets(org, plans["enterprise"])
    _as(user, services.subscription_change, actor=user, organization=org, plan=plans["free"])
    subscription = current_subscription(org)
    assert subscription.plan.slug == "enterprise" and subscription.scheduled_plan_id == plans["free"].pk
    with rls.privileged(reason="test"):
        later = subscription.current_period_end + timedelta(seconds=1)
        assert selectors.plan_in_force(subscription=subscription, now=later).slug == "free"
    _as(user, services.subscription_change, actor=user, organization=org, plan=plans["free"], immediately=True)
    assert current_subscription(org).plan.slug == "free"


def test_cancel_at_period_end_and_resume(owner, plans):
    user, org = owner
    _staff_sets(org, plans["pro"])
    _as(user, services.subscription_cancel, actor=user, organization=org)
    assert current_subscription(org).cancel_at_period_end
    _as(user, services.subscription_resume, actor=user, organization=org)
    assert not current_subscription(org).cancel_at_period_end


def test_a_member_reads_but_cannot_change(owner, plans):
    user, org = owner
    member = make_user()
    with rls.privileged(reason="test"):
        Membership.objects.create(organization=org, user=member, role="member")
    with pytest.raises(ForbiddenError):
        _as(member, services.subscription_change, actor=member, organization=org, plan=plans["free"], interval="year")
    with pytest.raises(ApplicationError, match="already on the Free plan"):
        _as(user, services.subscription_change, actor=user, organization=org, plan=plans["free"])


def test_ended_periods_are_written_down(owner, plans):
    user, org = owner
    past = timezone.now() - timedelta(days=1)
    put_on_plan(org, plans["pro"], current_period_end=past, cancel_at_period_end=True)
    assert services.subscription_periods_advance() == 1
    assert current_subscription(org).plan.slug == "free"


def test_a_plan_change_waits_for_a_concurrent_one_and_applies_after_it(owner, plans):
    """Another connection is mid-way through replacing the current subscription (row locked,
    new row inserted, not committed). A change started now waits for it, then replaces the
    new current row: no conflict, exactly one current subscription, the later plan wins."""
    import psycopg

    _, org = owner
    params = connections["privileged"].get_connection_params()
    for key in ("context", "cursor_factory", "prepare_threshold"):
        params.pop(key, None)
    other = psycopg.connect(**params)
    with other.cursor() as cur:
        cur.execute("SELECT id FROM billing_subscription WHERE organization_id = %s AND status = 'active' FOR UPDATE", [org.pk])
        cur.execute("UPDATE billing_subscription SET status = 'canceled', ended_at = now() WHERE organization_id = %s", [org.pk])
        cur.execute(
            "INSERT INTO billing_subscription (id, organization_id, plan_id, interval, status, current_period_start,"
            " cancel_at_period_end, scheduled_interval, stripe_customer_id, stripe_subscription_id, created_at, updated_at)"
            " VALUES (gen_random_uuid(), %s, %s, 'month', 'active', now(), false, '', '', '', now(), now())",
            [org.pk, plans["pro"].pk],
        )
    errors = []

    def change():
        try:
            with rls.privileged(reason="concurrency test"):
                services.subscription_plan_set(organization=org, plan=plans["enterprise"])
        except Exception as exc:  # noqa: BLE001  the assertion below reports it
            errors.append(exc)
        finally:
            connections.close_all()

    thread = threading.Thread(target=change)
    thread.start()
    thread.join(timeout=1)
    assert thread.is_alive()  # waiting on the other connection's lock
    other.commit()
    other.close()
    thread.join(timeout=30)
    assert errors == []
    assert current_subscription(org).plan.slug == "enterprise"
    with rls.privileged(reason="test"):
        assert Subscription.objects.filter(organization=org, status__in=["trialing", "active", "past_due"]).count() == 1
