"""The billing API: plans; an organization's subscription with limits and usage; plan
changes by owners and admins; scopes for API keys; errors in the one format."""

import pytest

from accounts.models import Membership
from accounts.tests.factories import make_user
from accounts.tests.test_api import assert_error, key_client, session_client
from billing.tests.factories import current_subscription, organization_of, put_on_plan
from config.db import rls

pytestmark = pytest.mark.django_db(transaction=True)
API = "/api/v1"


@pytest.fixture
def owner(plans):
    user = make_user()
    return user, organization_of(user)


def test_plans_list(owner):
    user, _ = owner
    response = session_client(user).get(f"{API}/plans")
    assert response.status_code == 200
    assert [p["slug"] for p in response.json()] == ["free", "pro", "enterprise"]
    assert response.json()[0]["monthly_tokens"] == 100_000


def test_subscription_shows_plan_status_limits_and_usage(owner):
    user, org = owner
    body = session_client(user).get(f"{API}/organizations/{org.pk}/subscription").json()
    assert body["plan"]["slug"] == "free" and body["status"] == "active"
    assert body["plan"]["features"] == {} and "echo" in body["plan"]["allowed_providers"]  # JSON and arrays come back typed
    assert {item["name"]: (item["limit"], item["used"]) for item in body["limits"]}["monthly_tokens"] == (100_000, 0)
    assert body["payment_configured"] is False


def test_another_organizations_subscription_is_404(owner):
    user, _ = owner
    stranger_org = organization_of(make_user())
    assert_error(session_client(user).get(f"{API}/organizations/{stranger_org.pk}/subscription"), 404)


def test_owner_changes_plan_member_is_refused_and_bad_input_is_400(owner, plans):
    user, org = owner
    client = session_client(user)
    response = client.post(f"{API}/organizations/{org.pk}/subscription", {"plan": "pro"}, format="json")
    assert response.status_code == 200 and response.json()["requested_plan"] == "pro"  # payment is not configured
    put_on_plan(org, plans["pro"])
    response = client.post(f"{API}/organizations/{org.pk}/subscription", {"plan": "free", "immediately": True}, format="json")
    assert response.status_code == 200 and response.json()["plan"]["slug"] == "free"
    assert_error(client.post(f"{API}/organizations/{org.pk}/subscription", {"plan": "gold"}, format="json"), 404, "no plan called")
    assert_error(client.post(f"{API}/organizations/{org.pk}/subscription", {"plan": "pro", "interval": "week"}, format="json"), 400)
    member = make_user()
    with rls.privileged(reason="test"):
        Membership.objects.create(organization=org, user=member, role="member")
    body = assert_error(session_client(member).post(f"{API}/organizations/{org.pk}/subscription", {"plan": "pro"}, format="json"), 403)
    assert body["extra"]["code"] == "not_allowed"
    assert current_subscription(org).plan.slug == "free"


def test_api_keys_need_billing_scopes(owner):
    user, org = owner
    assert_error(key_client(user, ["account:read"]).get(f"{API}/plans"), 403, "billing:read")
    reader = key_client(user, ["billing:read"])
    assert reader.get(f"{API}/organizations/{org.pk}/subscription").status_code == 200
    assert_error(reader.post(f"{API}/organizations/{org.pk}/subscription", {"plan": "free"}, format="json"), 403, "billing:write")
    writer = key_client(user, ["billing:read", "billing:write"])
    assert_error(writer.post(f"{API}/organizations/{org.pk}/subscription", {"plan": "free"}, format="json"), 400, "already on the Free")


def test_the_api_root_lists_the_billing_endpoints(client):
    endpoints = client.get(f"{API}/").json()["endpoints"]
    assert endpoints["plans"] == "http://testserver/api/v1/plans"
    assert endpoints["subscription"] == "http://testserver/api/v1/organizations/{organization_id}/subscription"
