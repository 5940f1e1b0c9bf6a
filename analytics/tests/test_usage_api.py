"""The usage API: summary and daily figures equal the ledger, each bad input is a 400 in the
one error format, by-member figures are for organization admins only, API keys need
`usage:read`, a user sees only their own usage, and the ledger itself is never read."""

from datetime import timedelta
from decimal import Decimal

import pytest
import yaml
from django.db import connections
from django.test.utils import CaptureQueriesContext
from openapi_spec_validator import validate
from rest_framework.test import APIClient

from accounts import services as accounts_services
from analytics import counters, selectors, services
from analytics.tests.usage_data import ledger, ledger_totals, record, totals_of, usage_world
from config.db import rls

pytestmark = pytest.mark.django_db(transaction=True)

SUMMARY, DAILY = "/api/v1/usage/summary", "/api/v1/usage/daily"


@pytest.fixture
def world():
    return usage_world()


def session_client(user) -> APIClient:
    client = APIClient()
    client.force_login(user)
    return client


def key_client(user, scopes=("usage:read",)) -> APIClient:
    with rls.privileged(reason="test: issue an API key"):
        _, secret = accounts_services.api_key_create(user=user, name="usage key", scopes=list(scopes))
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


def assert_error(response, status: int, fragment: str = "") -> dict:
    body = response.json()
    assert response.status_code == status, body
    assert set(body) == {"message", "extra"}, body
    assert body["message"].endswith("."), body  # a sentence
    assert fragment.lower() in body["message"].lower(), body
    return body


def api_totals(row: dict) -> dict:
    return {**{k: row[k] for k in ("input_tokens", "output_tokens", "total_tokens", "calls", "errors")}, "cost": Decimal(row["cost"])}


@pytest.mark.parametrize("period", selectors.PERIODS)
def test_summary_equals_the_ledger_for_each_period(world, period):
    for user, client in ((world.alice, session_client(world.alice)), (world.bob, key_client(world.bob))):
        response = client.get(SUMMARY, {"period": period})
        assert response.status_code == 200, response.json()
        body = response.json()
        start, end = selectors.period_bounds(period=period)
        assert (body["period"], body["period_start"], body["period_end"]) == (period, start.isoformat(), end.isoformat())
        assert isinstance(body["cost"], str) and len(body["cost"].split(".")[1]) == 10  # exact to 1e-10 USD
        expected = ledger_totals(where="user_id = %s AND day BETWEEN %s AND %s", params=[user.pk, start, end])
        assert api_totals(body) == totals_of(expected), user.email


def test_summary_defaults_to_this_month_and_refuses_an_unknown_period(world):
    client = session_client(world.alice)
    assert client.get(SUMMARY).json()["period"] == "month"
    body = assert_error(client.get(SUMMARY, {"period": "year"}), 400, "is not a period")
    assert "period" in body["extra"]["fields"]


@pytest.mark.parametrize("group_by", ["model", "provider"])
def test_daily_equals_the_ledger(world, group_by):
    today = selectors.usage_today()
    start = today - timedelta(days=40)
    response = key_client(world.alice).get(DAILY, {"from": start.isoformat(), "to": today.isoformat(), "group_by": group_by})
    assert response.status_code == 200, response.json()
    expected = ledger(where="user_id = %s AND day BETWEEN %s AND %s", params=[world.alice.pk, start, today], group_by=f"day, {group_by}")
    assert [(r["date"], r["key"], api_totals(r)) for r in response.json()] == [
        (e["day"].isoformat(), e[group_by], totals_of(e)) for e in expected
    ]


def test_daily_defaults_to_the_last_30_days_by_model(world):
    today = selectors.usage_today()
    rows = session_client(world.alice).get(DAILY).json()
    assert {r["date"] for r in rows} <= {(today - timedelta(days=n)).isoformat() for n in range(30)}
    assert min(r["date"] for r in rows) == (today - timedelta(days=28)).isoformat()  # gpt-4o, every other day
    assert {r["key"] for r in rows} == {"gpt-4o", "claude-sonnet", "gpt-4o-mini"}


def test_daily_by_member_for_an_admin(world):
    today = selectors.usage_today()
    start = today - timedelta(days=40)
    response = key_client(world.carol).get(DAILY, {"from": start, "to": today, "group_by": "user", "organization": world.acme.pk})
    assert response.status_code == 200, response.json()
    expected = ledger(where="organization_id = %s AND day BETWEEN %s AND %s", params=[world.acme.pk, start, today], group_by="day, user_id")
    assert [(r["date"], r["key"], api_totals(r)) for r in response.json()] == [
        (e["day"].isoformat(), str(e["user_id"]), totals_of(e)) for e in expected
    ]
    assert {r["label"] for r in response.json()} == {"Alice", "Bob"}


def test_daily_by_member_is_refused_to_a_plain_member(world):
    client = key_client(world.bob)
    assert_error(client.get(DAILY, {"group_by": "user", "organization": world.acme.pk}), 403, "owners and admins")
    body = assert_error(client.get(DAILY, {"group_by": "user"}), 403, "administer none")
    assert body["extra"]["code"] == "not_organization_admin"


@pytest.mark.parametrize(
    "params,fragment,field",
    [
        ({"from": "yesterday"}, "YYYY-MM-DD", "from"),
        ({"to": "2026-13-01"}, "YYYY-MM-DD", "to"),
        ({"from": "2026-03-02", "to": "2026-03-01"}, "on or before", "from"),
        ({"from": "2025-01-01", "to": "2026-01-02"}, "at most 366 days", "to"),
        ({"group_by": "day"}, "is not a grouping", "group_by"),
        ({"group_by": "user", "organization": "acme"}, "UUID", "organization"),
    ],
)
def test_daily_refuses_bad_input(world, params, fragment, field):
    body = assert_error(session_client(world.alice).get(DAILY, params), 400, fragment)
    assert field in body["extra"].get("fields", {}) or body["extra"].get("field") == field


def test_daily_accepts_a_366_day_range(world):
    response = session_client(world.alice).get(DAILY, {"from": "2024-01-01", "to": "2024-12-31"})  # a leap year
    assert response.status_code == 200 and response.json() == []


def test_a_user_sees_only_their_own_usage(world):
    """Bob shares Acme with Alice (row-level security lets him read its rollups), yet his figures are his."""
    for client in (session_client(world.bob), key_client(world.bob)):
        summary = client.get(SUMMARY, {"period": "30d"}).json()
        start, end = selectors.period_bounds(period="30d")
        assert api_totals(summary) == totals_of(
            ledger_totals(where="user_id = %s AND day BETWEEN %s AND %s", params=[world.bob.pk, start, end])
        )
        daily = client.get(DAILY, {"group_by": "model"}).json()
        assert {r["key"] for r in daily} == {"bob-only-model"}
        assert client.get(DAILY, {"group_by": "model", "organization": world.acme.pk}).json() != []
    # Carol sent nothing: zeros, not the organization's usage.
    carol = session_client(world.carol).get(SUMMARY).json()
    assert (carol["total_tokens"], carol["calls"], carol["cost"]) == (0, 0, "0.0000000000")


def test_api_keys_need_the_usage_read_scope(world):
    for url in (SUMMARY, DAILY):
        assert_error(key_client(world.alice, scopes=("account:read",)).get(url), 403, "usage:read")
        assert key_client(world.alice).get(url).status_code == 200
        assert_error(APIClient().get(url), 401)


# An API-key request's own statements: BEGIN, the key and its owner (one query), the context
# setting, COMMIT, RESET ALL.
REQUEST_QUERIES = 5


def test_query_counts_do_not_grow_with_the_data(world, django_assert_num_queries):
    client = key_client(world.alice)
    client.get(SUMMARY)  # a key's first use also records last_used_at
    sizes = []
    for more_data in (False, True):
        if more_data:
            record(
                world.alice, world.alice_personal, [{"model": f"model-{n}", "created_at": world.now - timedelta(days=n)} for n in range(20)]
            )
            record(world.bob, world.acme.pk, [{"model": f"model-{n}", "created_at": world.now - timedelta(days=n)} for n in range(20)])
            services.usage_rollup()
        with django_assert_num_queries(REQUEST_QUERIES + 1):  # the rollups
            client.get(SUMMARY, {"period": "30d"})
        with django_assert_num_queries(REQUEST_QUERIES + 1):  # the rollups
            rows = client.get(DAILY, {"group_by": "model"}).json()
        sizes.append(len(rows))
        with django_assert_num_queries(REQUEST_QUERIES + 3):  # organizations administered, member names, the rollups
            client.get(DAILY, {"group_by": "user"})
    assert sizes[1] >= sizes[0] + 20


def test_the_api_never_reads_the_ledger(world):
    counters.counters_read(scope="user", owner_id=world.alice.pk)  # warm, as every message leaves them
    client = key_client(world.alice)
    with CaptureQueriesContext(connections["default"]) as app, CaptureQueriesContext(connections["privileged"]) as worker:
        for params in ({"period": "month"}, {"period": "day"}):
            assert client.get(SUMMARY, params).status_code == 200
        for group_by in ("model", "provider", "user"):
            assert client.get(DAILY, {"group_by": group_by}).status_code == 200
    statements = [q["sql"] for q in (*app.captured_queries, *worker.captured_queries)]
    assert any("analytics_usagerollup" in sql for sql in statements)
    assert not [sql for sql in statements if "analytics_tokenusage" in sql]


def test_root_and_schema_document_the_usage_endpoints(client):
    endpoints = client.get("/api/v1/").json()["endpoints"]
    assert endpoints["usage-summary"].endswith(SUMMARY) and endpoints["usage-daily"].endswith(DAILY)
    schema = yaml.safe_load(client.get("/api/schema/").content)
    validate(schema)
    summary, daily = schema["paths"][SUMMARY]["get"], schema["paths"][DAILY]["get"]
    assert {p["name"]: sorted(p["schema"].get("enum")) for p in summary["parameters"]} == {"period": sorted(selectors.PERIODS)}
    assert {p["name"] for p in daily["parameters"]} == {"from", "to", "group_by", "organization"}
    assert all(p.get("description") for p in (*summary["parameters"], *daily["parameters"]))
    for operation in (summary, daily):
        assert {"200", "400", "401", "403"} <= set(operation["responses"])
    components = schema["components"]["schemas"]
    assert components["UsageSummaryOut"]["properties"]["cost"]["type"] == "string"
    assert {"date", "key", "label", "total_tokens", "cost"} <= set(components["UsageDailyRowOut"]["properties"])
