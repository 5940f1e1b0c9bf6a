"""make run's demo data in a test: the catalog and plans seeded again (an earlier transactional
test's flush removed them), then the demo commands; the demo member returned."""

from django.core.management import call_command

from accounts.models import User
from billing.tests.factories import make_plans
from chat.tests.factories import make_catalog
from config.db import rls


def demo_member() -> User:
    make_catalog()
    make_plans()
    for command in ("demo_data", "demo_usage", "demo_billing"):
        call_command(command, verbosity=0)
    with rls.privileged(reason="test: the demo member"):
        return User.objects.get(email="demo@confab.local")
