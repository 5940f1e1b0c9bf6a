"""Usage test data for the dashboards, written the way the product writes it (ledger rows
through services.usage_record_batch under the user's context, then a rollup), and the
ledger sums the dashboards must equal (read as the owner role, bypassing every policy)."""

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from django.db import connections, transaction

from accounts import services as accounts_services
from accounts.models import Membership
from accounts.tests.factories import make_user
from analytics import services
from analytics.tests.factories import usage_fields
from config.db import rls

COLUMNS = ("input_tokens", "output_tokens", "total_tokens", "calls", "errors", "cost")


@dataclass
class World:
    """Alice owns her workspace and the organizations Acme and Beta; Bob is a member of Acme,
    Carol an admin of Acme who sent nothing; Staff is staff."""

    alice: object
    bob: object
    carol: object
    staff: object
    alice_personal: object
    bob_personal: object
    acme: object
    beta: object
    now: datetime = field(default_factory=lambda: datetime.now(UTC))


def personal_organization_id(user):
    return Membership.objects.using("privileged").get(user=user, organization__is_personal=True).organization_id


def join(organization, user, role="member"):
    with rls.privileged(reason="test: join an organization"):
        _, token = accounts_services.invitation_create(
            actor=organization.created_by, organization=organization, email=user.email, role=role
        )
        accounts_services.invitation_accept(user=user, token=token)


def record(user, organization_id, rows: list[dict]) -> None:
    """Ledger rows for one user in one organization, as the app role under their context."""
    with transaction.atomic():
        rls.context_set(user_id=user.pk)
        services.usage_record_batch(records=[usage_fields(user, organization_id, **row) for row in rows])


def usage_world(*, rollup: bool = True) -> World:
    alice = make_user(email="alice@example.com", display_name="Alice")
    bob = make_user(email="bob@example.com", display_name="Bob")
    carol = make_user(email="carol@example.com", display_name="Carol")
    staff = make_user(email="staff@example.com", role="staff", is_superuser=True)
    with rls.privileged(reason="test: organizations"):
        acme = accounts_services.organization_create(user=alice, name="Acme")
        beta = accounts_services.organization_create(user=alice, name="Beta")
    join(acme, bob)
    join(acme, carol, role="admin")
    world = World(
        alice=alice,
        bob=bob,
        carol=carol,
        staff=staff,
        acme=acme,
        beta=beta,
        alice_personal=personal_organization_id(alice),
        bob_personal=personal_organization_id(bob),
    )
    # `hours` earlier on days before today only: today's rows stay in this month also in its first hour.
    ago = lambda days, hours=0: world.now - timedelta(days=days, hours=hours if days else 0)  # noqa: E731
    record(
        alice,
        world.alice_personal,
        [
            {
                "provider": "openai",
                "model": "gpt-4o",
                "created_at": ago(d),
                "input_tokens": 1000 + d,
                "output_tokens": 300 + 7 * d,
                "input_price": Decimal("2.5"),
                "output_price": Decimal("10"),
                "success": d % 5 != 0,
            }
            for d in range(0, 45, 2)
        ]
        + [
            {
                "provider": "anthropic",
                "model": "claude-sonnet",
                "created_at": ago(d, 1),
                "input_tokens": 2000 + 3 * d,
                "output_tokens": 500 + d,
                "input_price": Decimal("3"),
                "output_price": Decimal("15"),
            }
            for d in range(0, 20, 3)
        ],
    )
    record(
        alice,
        acme.pk,
        [
            {
                "provider": "openai",
                "model": "gpt-4o-mini",
                "created_at": ago(d),
                "input_tokens": 400 + d,
                "output_tokens": 90 + d,
                "input_price": Decimal("0.15"),
                "output_price": Decimal("0.6"),
            }
            for d in range(0, 12)
        ],
    )
    record(
        bob,
        acme.pk,
        [
            {
                "provider": "gemini",
                "model": "bob-only-model",
                "created_at": ago(d),
                "input_tokens": 700 + 11 * d,
                "output_tokens": 123 + d,
                "input_price": Decimal("1.25"),
                "output_price": Decimal("5"),
                "success": d != 3,
            }
            for d in range(0, 35, 2)
        ],
    )
    record(
        bob,
        world.bob_personal,
        [
            {
                "provider": "gemini",
                "model": "bob-only-model",
                "created_at": ago(d),
                "input_tokens": 50,
                "output_tokens": 25,
                "input_price": Decimal("1.25"),
                "output_price": Decimal("5"),
            }
            for d in range(0, 4)
        ],
    )
    if rollup:
        services.usage_rollup()
    return world


def ledger(*, where: str = "TRUE", params=(), group_by: str = "") -> list[dict]:
    """Ledger sums (owner role: every row), optionally grouped; `where` may use `day` (the UTC date)."""
    keys = [g.strip() for g in group_by.split(",") if g.strip()]
    select = ", ".join(
        [
            *keys,
            "sum(input_tokens)",
            "sum(output_tokens)",
            "sum(total_tokens)",
            "count(*)",
            "count(*) FILTER (WHERE NOT success)",
            "sum(cost)",
        ]
    )
    sql = f"SELECT {select} FROM (SELECT *, (created_at AT TIME ZONE 'UTC')::date AS day FROM analytics_tokenusage) t WHERE {where}" + (
        f" GROUP BY {group_by} ORDER BY {group_by}" if keys else ""
    )
    with connections["owner"].cursor() as cur:
        cur.execute(sql, list(params))
        rows = cur.fetchall()
    result = []
    for row in rows:
        values = row[len(keys) :]
        if values[3] == 0:
            continue
        totals = dict(zip(COLUMNS, values))
        totals["cost"] = Decimal(totals["cost"]).quantize(Decimal("0.0000000001"))
        result.append({**dict(zip(keys, row[: len(keys)])), **{k: int(v) if k != "cost" else v for k, v in totals.items()}})
    return result


def ledger_totals(*, where: str = "TRUE", params=()) -> dict:
    rows = ledger(where=where, params=params)
    return rows[0] if rows else {**{c: 0 for c in COLUMNS}, "cost": Decimal("0.000000")}


def totals_of(row: dict) -> dict:
    return {c: row[c] for c in COLUMNS}


def month_start(day: date) -> date:
    return day.replace(day=1)
