"""A counter rebuild's restored holds expire like any reservation, and an email stored before the
IDNA 2008 spelling stays editable around. Each test's docstring: what is done, what happened
("Was:"), what should."""

import uuid

import pytest
from django.urls import reverse

from accounts.models import Membership, User
from accounts.tests.factories import make_user
from billing.services import RESERVATIONS_DUE_KEY, entitlement_check, reservations_expire
from billing.tests.factories import organization_of, plan_with_limits, put_on_plan
from chat import services as chat_services
from chat.models import PendingCall
from config.cache import redis_client
from config.db import rls

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def plans(django_db_blocker):
    from billing.tests.factories import make_plans

    with django_db_blocker.unblock():
        return make_plans()


# --- 1. A restored hold of a call decided without Redis breaks the expiry task -----------------


def test_reservations_expire_survives_a_restored_hold_of_a_call_decided_without_redis(catalog, plans):
    """An organization on a plan of 1,000 tokens a month has a gateway call in progress that was
    decided while Redis was down: its PendingCall row holds no reservation id. Redis has lost the
    organization's counter, so the next check rebuilds it and holds that call again
    (RESTORE_SCRIPT) under the id `call:<request_id>` (chat.services._calls_in_progress), with the
    global due member `<YYYYMM>:<org>:call:<request_id>`. The hold's deadline passes and the beat's
    reservations_expire_task runs (every minute).

    Was: ValueError "too many values to unpack (expected 2)". reservations_expire splits each due
    member with rpartition(":") and then `owner.split(":")`: the owner part is
    "<YYYYMM>:<org>:call", three fields. The task fails every minute until that organization checks
    again, and every organization after it in the loop keeps its expired reservations and its
    unsure counter.

    Should: the hold is released like any other (the member parsed as month, organization, id:
    split(":", 2)), returning 1."""
    user = make_user()
    organization = organization_of(user)
    put_on_plan(organization, plan_with_limits("thousand-tokens", monthly_tokens=1000))
    price = next(p for p in chat_services.selectors.model_price_list() if p.provider == "echo")
    request_id = uuid.uuid4().hex
    with rls.privileged(reason="test: a gateway call decided while Redis was down, still running"):
        PendingCall.objects.create(
            user_id=user.pk,
            organization_id=organization.pk,
            request_id=request_id,
            provider="echo",
            model=price.model,
            price_id=price.pk,
            prompt_tokens_estimate=5,
            key_source="platform",
            reservation={"reservation": None, "reservation_month": None, "reserved_tokens": 105, "reserved_cost_units": 0},
        )
    with rls.atomic_as(user.pk):  # as message_prepare checks, under the sender's context
        entitlement = entitlement_check(
            user=user,
            organization_id=organization.pk,
            provider="echo",
            model=price.model,
            estimated_tokens=5,
            max_output_tokens=100,
            in_progress=lambda month: chat_services._calls_in_progress(organization.pk, month),
        )
    assert entitlement.allowed, entitlement.reason
    assert entitlement.usage["held_tokens"] == 105, entitlement.usage  # the call in progress is held again
    client = redis_client()
    restored = [m for m in client.zrange(RESERVATIONS_DUE_KEY, 0, -1) if f"call:{request_id}".encode() in m]
    assert restored, client.zrange(RESERVATIONS_DUE_KEY, 0, -1)
    client.zadd(RESERVATIONS_DUE_KEY, {restored[0]: 1})  # its deadline passed (15 minutes later)
    try:
        released = reservations_expire()
    except ValueError as exc:
        pytest.fail(f"reservations_expire crashed on the restored hold {restored[0]!r}: {exc!r}")
    assert released == 1


# --- 2. An existing account under a domain IDNA 2003 spelled can no longer be edited -----------


def test_staff_can_still_deactivate_an_existing_user_whose_domain_idna_2008_refuses(client):
    """Bob signed up as bob@i❤.ws before today: the old normalize_email (Python's IDNA 2003 codec)
    stored it so, migration 0017 leaves it (IDNA 2008 cannot spell it), Bob still signs in, and
    Django sends his mail with that same IDNA 2003 codec (to xn--i-7iq.ws). Staff open Bob's admin
    page and untick "active" to lock him out.

    Was: 200, the form re-rendered with "Mail cannot be delivered to this address's domain: check
    how it is spelled." on the email field, which staff did not touch
    (UserChangeAdminForm.clean_email -> User.objects.normalize_email_checked): Bob can no longer
    be deactivated, renamed or have his role changed in admin at all (organizations.invitation_create
    likewise refuses to invite him anywhere).

    Should: an email that is unchanged (the stored one) is kept as it is; the IDNA 2008 refusal
    applies to new addresses only. 302, Bob inactive."""
    staff = make_user(email="staff@example.com", role="staff", is_superuser=True)
    bob = make_user(email="bob@example.com")
    with rls.privileged(reason="test: an account stored by the IDNA 2003 spelling"):
        User.objects.filter(pk=bob.pk).update(email="bob@i\u2764.ws")
        assert Membership.objects.filter(user_id=bob.pk).exists()
    client.force_login(staff)
    data = {
        "email": "bob@i\u2764.ws",
        "display_name": "",
        "first_name": "",
        "last_name": "",
        "avatar_url": "",
        "timezone": "UTC",
        "locale": "en",
        "role": "member",
        "metadata": "{}",
    }
    response = client.post(reverse("admin:accounts_user_change", args=[bob.pk]), data)
    assert response.status_code == 302, [
        line.strip() for line in response.content.decode().splitlines() if "errorlist" in line or "cannot" in line
    ][:5]
    with rls.privileged(reason="test: read back"):
        assert User.objects.get(pk=bob.pk).is_active is False
