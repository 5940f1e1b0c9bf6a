"""Plan limits and the subscription lifecycle, as an attacker tried them (2026-12-01): a conversation
limit counted per organization, periods that keep their day through short months, a plan sold only
yearly treated as paid, and the plan's trial given at checkout, once an organization."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from accounts.services.organizations import organization_create
from accounts.tests.factories import make_user
from billing import selectors, services
from billing.tests.factories import current_subscription, organization_of, put_on_plan
from chat import services as chat_services
from config.db import rls
from config.errors import ApplicationError, QuotaExceeded

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def alice(catalog, plans):
    return make_user(email="alice@example.com")


def _team_of(user, plan):
    with rls.atomic():
        rls.context_set(user_id=user.pk)
        team = organization_create(user=user, name="Team")
    put_on_plan(team, plan)
    return team


# --- The conversation limit is the organization's ------------------------------------------


def test_conversations_billed_to_another_organization_do_not_use_up_the_personal_plans_limit(alice, plans):
    """max_conversations is a limit of the plan of the organization a conversation is billed to.
    Alice's team (Enterprise: no conversation limit) has 3 of her conversations; her personal
    workspace (Free, here 2 conversations) has none. A first conversation in her personal
    workspace must be allowed: it is that organization's first."""
    plans["free"].max_conversations = 2
    with rls.privileged(reason="test: a free plan with two conversations"):
        plans["free"].save()
    team = _team_of(alice, plans["enterprise"])
    for n in range(3):
        conversation = chat_services.conversation_create(user=alice, title=f"team {n}", organization_id=team.pk)
        chat_services.message_send(user=alice, content="work talk", conversation_id=conversation.pk)
    # Her personal workspace has no conversation at all.
    try:
        reply = chat_services.message_send(user=alice, content="my own first conversation")
    except QuotaExceeded as exc:
        pytest.fail(f"personal workspace refused its first conversation: {exc.message}")
    assert reply.conversation.organization_id == organization_of(alice).pk


def test_conversations_of_every_member_count_against_the_organizations_plan(alice, plans):
    """The team's plan includes 2 conversations. Alice has one there and Bob (a member) has one:
    the organization is at its limit, so Bob's second is refused, whoever starts it."""
    from accounts.models import Membership

    plans["pro"].max_conversations = 2
    with rls.privileged(reason="test: a plan with two conversations"):
        plans["pro"].save()
    team = _team_of(alice, plans["pro"])
    bob = make_user(email="bob@example.com")
    with rls.privileged(reason="test: bob joins the team"):
        Membership.objects.create(organization=team, user=bob, role="member")
    for user in (alice, bob):
        conversation = chat_services.conversation_create(user=user, title="one", organization_id=team.pk)
        chat_services.message_send(user=user, content="hello", conversation_id=conversation.pk)
    third = chat_services.conversation_create(user=bob, title="three", organization_id=team.pk)
    with pytest.raises(QuotaExceeded):
        chat_services.message_send(user=bob, content="one too many", conversation_id=third.pk)


# --- A period's day survives a short month -----------------------------------------------


def test_a_monthly_period_anchored_on_the_31st_keeps_its_anchor_after_february(alice, plans):
    """A period starting 31 January ends 28 February (February has no 31st); the next one must
    end 31 March, as every billing system anchors a month (Stripe's billing_cycle_anchor), not
    28 March: otherwise each renewal through a short month moves the period's day for good."""
    org = organization_of(alice)
    start = datetime(2025, 1, 31, 12, 0, tzinfo=UTC)
    end = selectors.period_end_for(start=start, interval="month")
    assert end == datetime(2025, 2, 28, 12, 0, tzinfo=UTC)
    put_on_plan(org, plans["pro"], current_period_start=start, current_period_end=end)
    assert services.subscription_periods_advance(now=end + timedelta(seconds=1)) == 1
    renewed = current_subscription(org)
    assert renewed.current_period_start == end
    assert renewed.current_period_end == datetime(2025, 3, 31, 12, 0, tzinfo=UTC)
    for expected in (datetime(2025, 4, 30, 12, 0, tzinfo=UTC), datetime(2025, 5, 31, 12, 0, tzinfo=UTC)):
        assert services.subscription_periods_advance(now=renewed.current_period_end + timedelta(seconds=1)) == 1
        renewed = current_subscription(org)
        assert renewed.current_period_end == expected  # April is short of the 31st, May is not


def test_a_period_anchored_on_the_30th_keeps_it_through_february(alice, plans):
    org = organization_of(alice)
    start = datetime(2025, 1, 30, 8, 0, tzinfo=UTC)
    put_on_plan(org, plans["pro"], current_period_start=start, current_period_end=selectors.period_end_for(start=start, interval="month"))
    ends = []
    for _ in range(3):
        assert services.subscription_periods_advance(now=current_subscription(org).current_period_end + timedelta(seconds=1)) == 1
        ends.append(current_subscription(org).current_period_end.day)
    assert ends == [30, 30, 30]  # March, April, May: after 28 February, back on the 30th


# --- A plan sold only yearly is a paid plan ------------------------------------------------


def test_a_plan_sold_only_yearly_is_a_paid_plan_for_the_managed_key(alice, plans, settings):
    """Plan.is_free is 'both prices are zero'; the managed key goes to 'monthly_price > 0'. An
    organization paying 240 a year for a plan with no monthly price must get the platform's
    managed key, as any paid plan does, not be told to add its own key or upgrade."""
    from unittest import mock

    from billing.models import Plan
    from chat.tests.provider_servers import ProviderServer, Reply, openai_completion

    with rls.privileged(reason="test: a plan sold yearly only"):
        annual = Plan.objects.create(
            slug="annual", name="Annual", monthly_price=Decimal("0"), yearly_price=Decimal("240.00"), display_order=3
        )
    assert not annual.is_free
    put_on_plan(organization_of(alice), annual, interval="year")
    settings.OPENAI_API_KEY = "sk-platform-managed"
    server = ProviderServer().start()
    try:
        server.queue(Reply(body=openai_completion("Hi.", {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2})))
        with mock.patch.dict("os.environ", {"OPENAI_BASE_URL": f"{server.url}/v1"}):
            reply = chat_services.message_send(user=alice, content="hi", provider="openai", model="gpt-4o-mini")
        assert reply.message.status == "complete"
        assert server.received[0].headers["authorization"] == "Bearer sk-platform-managed"
    finally:
        server.stop()


def test_a_cheaper_monthly_plan_after_a_plan_sold_only_yearly_is_a_downgrade(alice, plans, fake_stripe):
    """240 a year is 20 a month: moving to a plan of 5 a month waits for the period's end, as any
    downgrade does, rather than being sent to checkout as an upgrade."""
    from billing.models import Plan

    with rls.privileged(reason="test: a plan sold yearly only, and a cheap monthly one"):
        annual = Plan.objects.create(slug="annual", name="Annual", monthly_price=0, yearly_price=Decimal("240.00"), display_order=3)
        starter = Plan.objects.create(slug="starter", name="Starter", monthly_price=Decimal("5.00"), yearly_price=0, display_order=1)
    org = organization_of(alice)
    start = datetime(2026, 1, 10, tzinfo=UTC)
    put_on_plan(org, annual, interval="year", current_period_start=start, current_period_end=start.replace(year=2027))
    with rls.atomic_as(alice.pk):
        services.subscription_change(actor=alice, organization=org, plan=starter)
    subscription = current_subscription(org)
    assert (subscription.plan_id, subscription.scheduled_plan_id, subscription.requested_plan_id) == (annual.pk, starter.pk, None)


def test_a_cancellation_cannot_be_undone_once_its_period_has_ended(alice, plans):
    """Resume undoes a cancellation before the period ends. After it, the organization is on Free
    already (the limits follow at once; the periods task writes it down within minutes)."""
    org = organization_of(alice)
    ended = datetime(2026, 1, 10, tzinfo=UTC)
    put_on_plan(org, plans["pro"], current_period_start=ended - timedelta(days=31), current_period_end=ended, cancel_at_period_end=True)
    with pytest.raises(ApplicationError) as refused, rls.atomic_as(alice.pk):
        services.subscription_resume(actor=alice, organization=org)
    assert refused.value.extra["code"] == "period_ended"
    assert current_subscription(org).cancel_at_period_end
    assert services.subscription_periods_advance() == 1 and current_subscription(org).plan.slug == "free"


# --- The plan's trial, at checkout --------------------------------------------------------


def test_checkout_of_a_plan_with_a_trial_starts_the_trial_at_stripe(client, fake_stripe, plans):
    """Pro offers a 14-day trial (Plan.trial_days, listed by GET /api/v1/billing/plans). Checkout is
    the only way a paying organization starts Pro, so the session must ask Stripe for the trial
    (subscription_data[trial_period_days]); without it the card is charged at once and no
    organization ever trials."""
    assert plans["pro"].trial_days == 14
    user = make_user()
    client.force_login(user)
    org = organization_of(user)
    response = client.post("/billing/checkout/", {"organization": org.pk, "plan": "pro", "interval": "month"})
    assert response.status_code == 302
    [session] = [r for r in fake_stripe.requests if r["method"] == "POST" and r["path"] == "/v1/checkout/sessions"]
    assert session["form"].get("subscription_data[trial_period_days]") == "14", sorted(session["form"])


def test_an_organization_that_has_had_a_trial_gets_none_at_checkout(client, fake_stripe, plans):
    """One trial an organization: after one (here, on a row of its history), checkout charges at once."""
    user = make_user()
    client.force_login(user)
    org = organization_of(user)
    put_on_plan(org, plans["free"], trial_end=datetime(2025, 1, 15, tzinfo=UTC))
    assert client.post("/billing/checkout/", {"organization": org.pk, "plan": "pro", "interval": "month"}).status_code == 302
    [session] = [r for r in fake_stripe.requests if r["method"] == "POST" and r["path"] == "/v1/checkout/sessions"]
    assert "subscription_data[trial_period_days]" not in session["form"]
    assert session["form"]["subscription_data[metadata][organization_id]"] == str(org.pk)


# --- A call in flight at the month's end holds in the next -------------------------------------


@pytest.mark.parametrize("redis_down", [False, True], ids=["redis-up", "redis-down"])
def test_a_call_in_flight_at_midnight_of_the_months_end_still_holds_its_tokens(alice, plans, settings, own_redis, redis_down):
    """Free here: 10,000 tokens a month. A call is checked one second before the month ends: it
    reserves 5,000 + 4,096 in that month's hash. It finishes after midnight, so its ledger row (and
    counter) is in the new month. A second call checked in the new month meanwhile sees neither
    the first one's usage (not written yet) nor its reservation (held in the old month's hash), so
    it is allowed too, and the new month gets 2 x 9,096 tokens on a plan of 10,000. Each call used
    exactly what it reserved: the overshoot is the month boundary's alone. With Redis down the
    check reads the calls in progress from the database: the first call's reply, stored before
    midnight and still streaming, holds in the new month there too."""
    from unittest import mock

    from asgiref.sync import async_to_sync
    from django.utils import timezone as dj_timezone

    from analytics import counters
    from chat.tests.provider_servers import ProviderServer, Reply, openai_completion

    plans["free"].monthly_tokens = 10_000
    with rls.privileged(reason="test: a small token budget"):
        plans["free"].save()
    settings.OPENAI_FREE_TIER_API_KEY = "sk-platform-free-tier"
    org = organization_of(alice)
    real_now = dj_timezone.now()
    this_month = counters.month_of(real_now)
    last_second = datetime(this_month.year, this_month.month, 1, tzinfo=UTC) - timedelta(seconds=1)
    content = "abcd" * 5_000  # 20,000 characters: an estimate of 5,000 input tokens
    used = {"prompt_tokens": 5_000, "completion_tokens": 4_096, "total_tokens": 9_096}  # exactly what each reserves
    server = ProviderServer().start()
    try:
        server.queue(Reply(body=openai_completion("x", used)), Reply(body=openai_completion("y", used)))
        with mock.patch.dict("os.environ", {"OPENAI_BASE_URL": f"{server.url}/v1"}):
            with mock.patch("django.utils.timezone.now", return_value=last_second):
                first = chat_services.message_prepare(user=alice, content=content, provider="openai", model="gpt-4o-mini")
            assert first.reservation.month == counters.month_of(last_second)
            if redis_down:  # decided from the database: the first call is its reply, still streaming
                from chat.models import Message
                from config import embedded

                with rls.privileged(reason="test: the first call's reply was stored before midnight"):
                    Message.objects.filter(pk=first.message.pk).update(created_at=last_second)
                embedded.redis_stop(own_redis)
            # Midnight passes; a second call is checked while the first is still with the provider.
            second_refused = False
            try:
                chat_services.message_send(user=alice, content=content, provider="openai", model="gpt-4o-mini")
            except QuotaExceeded:
                second_refused = True
            # The first call's reply arrives now, after midnight, and is metered as message_send does.
            text, usage, status, failure, finish = async_to_sync(chat_services._complete)(first)
            chat_services._reply_finish(first, text=text, usage=usage, status=status, failure=failure, latency_ms=1, finish_reason=finish)
    finally:
        server.stop()
    with rls.privileged(reason="test: read the month"):
        month_total = counters.usage_from_database(scope="org", owner_id=org.pk, month=this_month).total_tokens
    assert second_refused or month_total <= 10_000, f"{month_total:,} tokens metered in one month on a plan of 10,000"
