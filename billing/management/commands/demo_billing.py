"""`make run`'s demo organization on Pro, as staff would grant it: its 30 days of demo usage
pass the Free plan's monthly tokens, and a newcomer's first message must not be refused."""

from django.core.management.base import BaseCommand, CommandError

from accounts.models import Membership, User
from billing import selectors, services
from config.db import rls

DEMO_EMAIL = "demo@confab.local"
DEMO_PLAN = "pro"


class Command(BaseCommand):
    help = "Put the demo user's personal organization on the Pro plan (idempotent)."

    def handle(self, *args, **options):
        with rls.privileged(reason="demo billing seed"):
            membership = (
                Membership.objects.select_related("organization").filter(user__email=DEMO_EMAIL, organization__is_personal=True).first()
            )
            if membership is None or not User.objects.filter(email=DEMO_EMAIL).exists():
                raise CommandError(f"{DEMO_EMAIL} does not exist: run `manage.py demo_data` first.")
            organization, plan = membership.organization, selectors.plan_get(slug=DEMO_PLAN)
            if plan is None:
                raise CommandError(f"No '{DEMO_PLAN}' plan: run `manage.py migrate` first.")
            current = selectors.subscription_current(organization_id=organization.pk)
            if current is None or current.plan_id != plan.pk:
                services.subscription_plan_set(organization=organization, plan=plan)
        self.stdout.write(f"{DEMO_EMAIL}'s workspace is on the {plan.name} plan.")
