"""`make run`'s demo user can chat at once: the demo usage would pass Free's monthly tokens."""

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from accounts.models import Membership, User
from billing import selectors, services
from billing.tests.factories import make_plans
from config.db import rls

pytestmark = pytest.mark.django_db(transaction=True)


def test_demo_billing_needs_the_demo_user():
    with pytest.raises(CommandError, match="demo_data"):
        call_command("demo_billing")


def test_the_demo_user_may_send_after_the_demo_usage_and_it_is_idempotent():
    make_plans()  # the seeded plans (a transactional test starts from empty tables)
    call_command("demo_data")
    call_command("demo_usage")
    call_command("demo_billing")
    call_command("demo_billing")
    with rls.privileged(reason="test"):
        user = User.objects.get(email="demo@confab.local")
        organization = Membership.objects.get(user=user, organization__is_personal=True).organization
        assert selectors.subscription_current(organization_id=organization.pk).plan.slug == "pro"
    with rls.atomic_as(user.pk):
        decision = services.entitlement_check(
            user=user, organization_id=organization.pk, provider="echo", model="echo-1", estimated_tokens=10
        )
    assert decision.allowed, decision
