"""Idempotent demo data for `make run`: a staff user and a demo user, credentials printed."""

import os

from django.core.management.base import BaseCommand

from accounts.models import User
from accounts.services import user_create
from config.db import rls

DEMO_USERS = [
    {
        "email": "admin@confab.local",
        "password": "confab-admin-demo",
        "role": User.Role.STAFF,
        "is_superuser": True,
        "display_name": "Admin",
    },
    {"email": "demo@confab.local", "password": "confab-demo-user", "role": User.Role.MEMBER, "is_superuser": False, "display_name": "Demo"},
]


class Command(BaseCommand):
    help = "Create the demo staff user and demo user if missing, and print their credentials."

    def handle(self, *args, **options):
        with rls.privileged(reason="demo data seed"):
            for spec in DEMO_USERS:
                fields = {k: v for k, v in spec.items() if k not in ("email", "password")}
                if not User.objects.filter(email=spec["email"]).exists():
                    user_create(email=spec["email"], password=spec["password"], email_verified=True, **fields)
        port = os.environ.get("PORT", "8000")  # the port `make run` serves (config/embedded.py reads the same)
        self.stdout.write(f"Demo accounts (log in at http://127.0.0.1:{port}/accounts/login/):")
        for spec in DEMO_USERS:
            self.stdout.write(f"  {spec['role']:<7} {spec['email']}  password: {spec['password']}")
