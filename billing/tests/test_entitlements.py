"""entitlement_check: each limit refuses at its boundary and not one unit before; plans
decide providers and models; the rate limit is shared across processes; with Redis
stopped the decision comes from the database; past due falls to free after the grace."""

import os
import subprocess
import sys
import tempfile
import textwrap
import uuid
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from django.utils import timezone
from django_redis import get_redis_connection
from rest_framework.test import APIRequestFactory, force_authenticate

from accounts.tests.factories import make_user
from analytics import counters
from analytics.services import usage_record
from billing import selectors
from billing.api import SubscriptionApi
from billing.services import entitlement_check, reservation_settle
from billing.tests.factories import organization_of, put_on_plan
from config import embedded
from config.api.errors import exception_handler
from config.db import rls

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def member(plans):
    user = make_user()
    return user, organization_of(user)


def _use(org, *, tokens=0, messages=0):
    """Set this month's live counter for the organization to the given totals."""
    counters.counters_read(scope="org", owner_id=org.pk)  # exists (rebuilt from the database: zero)
    usage = counters.Usage(total_tokens=tokens, calls=messages)
    counters.counters_increment(organization_id=org.pk, user_id=uuid.uuid4(), month=counters.month_of(), usage=usage)


def _ledger(user, org, *, tokens: int):
    """One ledger row (committed, counted) of `tokens` for the organization."""
    with rls.privileged(reason="test"):
        usage_record(
            user_id=user.pk,
            organization_id=org.pk,
            provider="echo",
            model="echo-1",
            input_tokens=tokens // 2,
            output_tokens=tokens - tokens // 2,
            input_price=Decimal("0"),
            output_price=Decimal("0"),
            request_id=uuid.uuid4().hex,
        )


def _check(user, org, **kwargs):
    kwargs.setdefault("provider", "echo")
    kwargs.setdefault("model", "echo-1")
    with rls.privileged(reason="test"):
        return entitlement_check(user=user, organization_id=org.pk, **kwargs)


def test_tokens_refuse_at_the_limit_and_not_one_token_before(member, plans):
    user, org = member
    put_on_plan(org, plans["free"])
    _use(org, tokens=99_999)
    allowed = _check(user, org, estimated_tokens=0, max_output_tokens=1)  # reserves the last token
    assert allowed.allowed
    assert reservation_settle(organization_id=org.pk, reservation=allowed.reservation, month=allowed.month)
    assert not _check(user, org, estimated_tokens=1, max_output_tokens=1).allowed
    _use(org, tokens=1)  # 100,000 used: nothing left
    refused = _check(user, org)
    assert not refused.allowed and refused.refusal.status_code == 402
    reset = (timezone.now().replace(day=1) + timedelta(days=32)).replace(day=1)
    assert refused.reason == (
        f"Your Free plan includes 100,000 tokens a month; you have used 100,000. Upgrade, or wait until 1 {reset:%B}."
        if reset.year == timezone.now().year
        else f"Your Free plan includes 100,000 tokens a month; you have used 100,000. Upgrade, or wait until 1 {reset:%B %Y}."
    )
    assert refused.refusal.extra["resets_on"] == reset.date().isoformat()


def test_messages_refuse_at_the_limit_and_not_one_before(member, plans):
    user, org = member
    _use(org, messages=999)
    assert _check(user, org).allowed
    _use(org, messages=1)
    refused = _check(user, org)
    assert refused.refusal.extra["code"] == "monthly_messages"
    assert "includes 1,000 messages a month; you have sent 1,000" in refused.reason


def test_conversations_refuse_at_the_limit_and_not_one_before(member):
    user, org = member
    assert _check(user, org, conversations=lambda: 19).allowed
    refused = _check(user, org, conversations=lambda: 20)
    assert not refused.allowed and refused.refusal.extra["code"] == "max_conversations"
    assert "includes 20 conversations; you have 20" in refused.reason


def test_conversations_are_not_counted_on_a_plan_without_a_limit(member, plans):
    user, org = member
    put_on_plan(org, plans["enterprise"])
    counted = []
    assert _check(user, org, conversations=lambda: counted.append(1) or 10**9).allowed
    assert counted == []  # no count query for a plan that has no conversation limit


def test_requests_per_minute_refuse_at_the_limit_with_retry_after(member):
    user, org = member
    for _ in range(10):
        assert _check(user, org).allowed
    refused = _check(user, org)
    assert refused.refusal.status_code == 429
    assert 1 <= refused.refusal.retry_after <= 60
    assert "limited to 10 requests a minute" in refused.reason
    with rls.atomic():
        response = exception_handler(refused.refusal, {})  # how the API answers when chat raises it
    assert response.status_code == 429 and response["Retry-After"] == str(refused.refusal.retry_after)


def test_an_api_key_has_its_own_window_inside_the_organizations(member):
    user, org = member
    first, second = uuid.uuid4(), uuid.uuid4()
    for _ in range(10):
        assert _check(user, org, api_key_id=first).allowed
    refused = _check(user, org, api_key_id=second)
    assert refused.refusal.extra["scope"] == "organization"  # the organization's window is full


def test_a_decision_is_one_database_query_and_one_redis_command(member, django_assert_num_queries, monkeypatch):
    user, org = member
    _use(org, tokens=1)
    client = get_redis_connection("default")
    sent = []
    original = type(client).execute_command

    def counted(self, *args, **options):
        sent.append(args[0])
        return original(self, *args, **options)

    with rls.atomic():
        rls.context_set(user_id=user.pk)
        entitlement_check(user=user, organization_id=org.pk, provider="echo", model="echo-1", api_key_id=uuid.uuid4())  # script loaded
        monkeypatch.setattr(type(client), "execute_command", counted)
        with django_assert_num_queries(1):
            assert entitlement_check(user=user, organization_id=org.pk, provider="echo", model="echo-1", api_key_id=uuid.uuid4()).allowed
    assert sent == ["EVALSHA"]


def test_a_model_outside_the_plan_is_refused_with_the_plans_that_include_it(member):
    user, org = member
    refused = _check(user, org, provider="openai", model="gpt-4o")
    assert refused.refusal.status_code == 403
    assert refused.reason == "Your Free plan does not include gpt-4o. It is included in Pro and Enterprise."
    assert refused.refusal.extra["plans"] == ["Pro", "Enterprise"]
    assert _check(user, org, provider="openai", model="gpt-4o-mini").allowed


def test_a_missing_counter_is_rebuilt_from_the_ledger(member):
    user, org = member
    _ledger(user, org, tokens=100_000)
    get_redis_connection("default").flushdb()
    refused = _check(user, org)
    assert refused.refusal.extra == {**refused.refusal.extra, "code": "monthly_tokens", "used": 100_000}


def test_past_due_keeps_the_plan_for_the_grace_period_then_gets_free_limits(member, plans, settings):
    user, org = member
    settings.BILLING_GRACE_DAYS = 7
    now = timezone.now()
    put_on_plan(org, plans["pro"], status="past_due", past_due_since=now - timedelta(days=6, hours=23))
    assert _check(user, org, provider="openai", model="gpt-4o").plan.slug == "pro"
    put_on_plan(org, plans["pro"], status="past_due", past_due_since=now - timedelta(days=7, minutes=1))
    refused = _check(user, org, provider="openai", model="gpt-4o")
    assert refused.plan.slug == "free" and not refused.allowed


def test_with_redis_stopped_decisions_come_from_the_database(member, settings, caplog):
    user, org = member
    _ledger(user, org, tokens=99_999)
    with tempfile.TemporaryDirectory(prefix="confab-b-") as tmp:
        sock = embedded.redis_start(Path(tmp), persist=False)
        settings.CACHES = {**settings.CACHES, "default": {**settings.CACHES["default"], "LOCATION": f"unix://{sock}?db=0"}}
        assert _check(user, org, max_output_tokens=1).allowed
        embedded.redis_stop(Path(tmp))
        allowed = _check(user, org, estimated_tokens=0, max_output_tokens=1)
        refused = _check(user, org, estimated_tokens=1, max_output_tokens=1)
        with rls.privileged(reason="test"):
            assert selectors.month_usage(organization_id=org.pk).total_tokens == 99_999  # what the billing page shows
        request = APIRequestFactory().get(f"/api/v1/organizations/{org.pk}/subscription")
        force_authenticate(request, user=user)  # API-key sign-in uses the cache itself (accounts)
        with rls.atomic():
            rls.context_set(user_id=user.pk)
            response = SubscriptionApi.as_view()(request, organization_id=org.pk)
        assert response.status_code == 200
        assert {i["name"]: i["used"] for i in response.data["limits"]}["monthly_tokens"] == 99_999
    assert allowed.allowed and allowed.degraded
    assert not refused.allowed and refused.degraded and "you have used 99,999" in refused.reason
    assert allowed.reservation is None  # nothing to reserve in: the database decided
    assert "decided from the database" in caplog.text


CHILD = textwrap.dedent(
    """
    import os, sys, django
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings.test"
    django.setup()
    from django.conf import settings
    settings.DATABASES["privileged"]["NAME"] = settings.DATABASES["default"]["NAME"] = sys.argv[1]
    from accounts.models import Organization, User
    from billing.services import entitlement_check
    from config.db import rls
    with rls.privileged(reason="rate limit test"):
        org = Organization.objects.get(pk=sys.argv[2]); user = User.objects.get(pk=sys.argv[3])
        allowed = sum(entitlement_check(user=user, organization_id=org.pk, provider="echo", model="echo-1").allowed for _ in range(40))
    print(allowed)
    """
)


def test_the_rate_limit_holds_across_two_processes(member, plans):
    """A child process and this one hammer the same organization: 10 a minute in total."""
    user, org = member
    put_on_plan(org, plans["free"])
    from django.db import connections

    database = connections["default"].settings_dict["NAME"]
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, database, str(org.pk), str(user.pk)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=os.environ.copy(),
    )
    here = sum(_check(user, org).allowed for _ in range(40))
    out, err = child.communicate(timeout=120)
    assert child.returncode == 0, err.decode()[-2000:]
    there = int(out.decode().strip().splitlines()[-1])
    assert here + there == 10
