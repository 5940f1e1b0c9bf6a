"""The usage pages: /usage/ shows a user their own figures (and, to organization owners and
admins, usage by member), /usage/staff/ shows every tenant to staff only; both read the
rollups and live counters, never the ledger, in a fixed number of queries."""

import html
import json
import re
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connections
from django.test.utils import CaptureQueriesContext

from analytics import counters, selectors, services
from analytics.templatetags.usage_format import tokens, usd
from analytics.tests.usage_data import ledger_totals, month_start, record, usage_world
from config.db import rls

pytestmark = pytest.mark.django_db(transaction=True)

DASHBOARD, STAFF = "/usage/", "/usage/staff/"


@pytest.fixture
def world():
    return usage_world()


def page(client, user, url=DASHBOARD, **params):
    client.force_login(user)
    response = client.get(url, params)
    assert response.status_code == 200, response.status_code
    return response.content.decode()


def charts(content: str) -> list[dict]:
    return [json.loads(html.unescape(raw)) for raw in re.findall(r'data-chart="([^"]*)"', content)]


def this_month(user=None, organization=None) -> dict:
    month = month_start(selectors.usage_today())
    where, params = ["date_trunc('month', day) = %s"], [month]
    if user is not None:
        where.append("user_id = %s")
        params.append(user.pk)
    if organization is not None:
        where.append("organization_id = %s")
        params.append(organization)
    return ledger_totals(where=" AND ".join(where), params=params)


def test_the_dashboard_shows_my_month_my_models_and_a_30_day_chart(client, world):
    content = page(client, world.alice)
    mine = this_month(world.alice)
    for figure in (tokens(mine["total_tokens"]), tokens(mine["calls"]), usd(mine["cost"])):
        assert figure in content
    assert content.count("Yours, in every organization") == 3  # a user's figures span organizations: no one plan's limit
    for model in ("gpt-4o", "claude-sonnet", "gpt-4o-mini"):
        assert f'<td class="mono">{model}</td>' in content
    [chart] = charts(content)
    assert len(chart["data"]["labels"]) == 30
    tokens_by_day = [sum(ds["data"][i] for ds in chart["data"]["datasets"] if ds.get("stack") == "tokens") for i in range(30)]
    start = selectors.usage_today() - timedelta(days=29)
    assert sum(tokens_by_day) == ledger_totals(where="user_id = %s AND day >= %s", params=[world.alice.pk, start])["total_tokens"]
    assert '<div class="chart-box">' in content


def test_another_user_sees_only_their_own_usage(client, world):
    content = page(client, world.bob)
    bob = this_month(world.bob)
    assert tokens(bob["total_tokens"]) in content and usd(bob["cost"]) in content
    assert "bob-only-model" in content
    for other in ("gpt-4o", "claude-sonnet", "Alice", tokens(this_month(world.alice)["total_tokens"])):
        assert other not in content
    assert 'id="by-member"' not in content  # a plain member of Acme


def test_organization_admins_see_usage_by_member_with_an_organization_selector(client, world):
    content = page(client, world.alice)
    assert 'id="by-member"' in content and "By member · Acme" in content
    assert '<select id="organization" name="organization" style="width: auto">' in content  # Acme and Beta
    bob_in_acme = this_month(world.bob, organization=world.acme.pk)
    row = re.search(r"<tr>\s*<td>Bob</td>(.*?)</tr>", content, re.S).group(1)
    assert tokens(bob_in_acme["total_tokens"]) in row and usd(bob_in_acme["cost"]) in row
    acme = this_month(organization=world.acme.pk)
    limits = re.search(r'data-testid="organization-limits">(.*?)<div class="table-wrap">', content, re.S).group(1)
    assert tokens(acme["total_tokens"]) in limits and usd(acme["cost"]) in limits
    beta = page(client, world.alice, organization=str(world.beta.pk))
    assert "By member · Beta" in beta and "<td>Bob</td>" not in beta
    assert client.get(DASHBOARD, {"organization": str(world.alice_personal)}).status_code == 404  # not a shared organization
    carol = page(client, world.carol)
    assert "By member · Acme" in carol and '<select id="organization"' not in carol


def test_the_dashboard_needs_a_login(client):
    response = client.get(DASHBOARD)
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


def test_the_dashboard_with_no_usage_at_all(client):
    from accounts.tests.factories import make_user

    content = page(client, make_user(email="new@example.com"))
    assert "No usage this month yet" in content and "$0.00" in content and 'id="by-member"' not in content


# The request's own 6 (BEGIN, the context setting, the session user, the preferences for the
# theme, COMMIT, RESET ALL) and the dashboard's 7: organizations
# administered, daily rollups, monthly rollups by model, the organization's current subscription
# with its plan (the limits shown), the admin check, member names, and the monthly rollups by
# member. This month's figures come from Redis.
DASHBOARD_QUERIES = 6 + 7


def test_dashboard_query_count_does_not_grow_with_the_data(client, world, django_assert_num_queries):
    client.force_login(world.alice)
    client.get(DASHBOARD)  # warms the live counters and the session's last-activity write
    with django_assert_num_queries(DASHBOARD_QUERIES):
        client.get(DASHBOARD)
    for user, organization in ((world.alice, world.alice_personal), (world.bob, world.acme.pk)):
        record(
            user,
            organization,
            [{"model": f"model-{n}", "provider": f"provider-{n % 3}", "created_at": world.now - timedelta(days=n)} for n in range(25)],
        )
    services.usage_rollup()
    counters.counters_read(scope="user", owner_id=world.alice.pk)
    with django_assert_num_queries(DASHBOARD_QUERIES):
        assert "model-0" in client.get(DASHBOARD).content.decode()  # today: in this month's table


def test_the_pages_never_read_the_ledger(client, world):
    for scope, owner in (("user", world.alice.pk), ("org", world.acme.pk), ("org", world.beta.pk), ("user", world.staff.pk)):
        counters.counters_read(scope=scope, owner_id=owner)  # warm, as every message leaves them
    client.force_login(world.alice)
    with CaptureQueriesContext(connections["default"]) as app, CaptureQueriesContext(connections["privileged"]) as worker:
        assert client.get(DASHBOARD).status_code == 200
        assert client.get(DASHBOARD, {"organization": str(world.beta.pk)}).status_code == 200
        client.force_login(world.staff)
        assert client.get(STAFF).status_code == 200
    statements = [q["sql"] for q in (*app.captured_queries, *worker.captured_queries)]
    assert any("analytics_usagerollup" in sql for sql in statements)
    assert not [sql for sql in statements if "analytics_tokenusage" in sql]


def test_the_staff_dashboard_is_for_staff_only(client, world):
    assert client.get(STAFF)["Location"].startswith("/accounts/login/")
    client.force_login(world.alice)
    assert client.get(STAFF).status_code == 403
    content = page(client, world.staff, STAFF)
    everyone = this_month()
    for figure in (tokens(everyone["total_tokens"]), usd(everyone["cost"]), tokens(everyone["calls"])):
        assert figure in content
    for text in ("alice@example.com", "bob@example.com", "Acme", "bob-only-model", "claude-sonnet", "API errors, last 24 h"):
        assert text in content
    assert len(charts(content)) == 4
    assert f'href="{STAFF}"' in page(client, world.staff, "/admin/")  # linked from the admin index


def test_staff_dashboard_query_count(client, world, django_assert_num_queries):
    client.force_login(world.staff)
    client.get(STAFF)
    # Through the privileged alias: BEGIN, totals, top users, top organizations, by model (and
    # provider), the 30 days, the API log's hours, COMMIT, RESET ALL.
    with django_assert_num_queries(9, using="privileged"):
        client.get(STAFF)


def test_a_cost_under_a_twentieth_of_a_cent_does_not_read_as_zero():
    """The usage page shows costs through the `usd` filter, whose promise is that "amounts under a
    cent keep four places so they do not read as $0.00". A user who sent one short message to a
    cheap model (20 tokens of gpt-4o-mini: $0.000003) sees "Cost this month: $0.0000": a zero, the
    same as an idle month. Now: "$0.0000". Should: a figure that is not zero (its significant
    digits, e.g. "$0.000003", or "< $0.0001")."""
    for amount in ("0.000003", "0.00004"):
        shown = usd(Decimal(amount))
        assert any(digit in shown for digit in "123456789") or "<" in shown, f"{amount} USD is shown as {shown}"


def test_a_plan_with_a_zero_spend_budget_is_not_shown_as_having_no_budget(client):
    """An organization's plan may set a limit of 0 (the admin allows it: MinValueValidator(0)), e.g.
    a monthly spend budget of $0.00: every priced call is then refused ("spend"). The usage page's
    "By member" section shows the organization's limits with `{% if limit %}`, so 0 reads as
    "No spend budget on this plan" (and 0 tokens as "No limit on this plan"), the opposite of what
    holds; the billing page says "0.00 USD". Now: "No spend budget on this plan". Should: "of $0.00
    this month" with a full meter (`limit is not None`)."""
    from accounts import services as accounts_services
    from accounts.tests.factories import make_user
    from billing.tests.factories import plan_with_limits, put_on_plan

    owner = make_user(email="zero-owner@example.com", display_name="Zed")
    with rls.privileged(reason="test: organization"):
        organization = accounts_services.organization_create(user=owner, name="Zero Co")
    put_on_plan(organization, plan_with_limits("zero-budget", monthly_spend=Decimal("0.00"), monthly_tokens=0))
    client.force_login(owner)
    response = client.get("/usage/", {"organization": str(organization.pk)})
    assert response.status_code == 200
    content = response.content.decode()
    section = content.split('data-testid="organization-limits"', 1)[1].split('<div class="table-wrap">', 1)[0]
    stats = {block.split("</div>", 1)[0]: block for block in section.split('<div class="stat-label">')[1:]}
    assert "No limit on this plan" in stats["Messages this month"]  # no message limit: said right
    assert "No limit on this plan" not in stats["Tokens this month"], stats["Tokens this month"]
    assert "No spend budget on this plan" not in stats["Spend this month"], stats["Spend this month"]
    assert "of $0.00 this month" in stats["Spend this month"] and "of 0 this month" in stats["Tokens this month"]
    assert all("width: 100%" in stats[label] for label in ("Spend this month", "Tokens this month"))  # reached from the start
