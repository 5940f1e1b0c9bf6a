import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connections

pytestmark = pytest.mark.django_db(transaction=True)


def _count(table):
    with connections["owner"].cursor() as cur:
        cur.execute(
            f"SELECT count(*), COALESCE(sum(total_tokens), 0) FROM {table}" + (" WHERE period = 'day'" if "rollup" in table else "")
        )
        return cur.fetchone()


def test_demo_usage_needs_the_demo_user():
    with pytest.raises(CommandError, match="demo_data"):
        call_command("demo_usage")


def test_demo_usage_is_idempotent_and_rolled_up():
    call_command("demo_data")
    call_command("demo_usage")
    rows, tokens = _count("analytics_tokenusage")
    call_command("demo_usage")
    assert _count("analytics_tokenusage") == (rows, tokens) and rows >= 60
    assert _count("analytics_usagerollup")[1] == tokens
