"""Create the owner, app and worker roles and the database (needs DATABASE_ADMIN_URL)."""

import environ
from django.core.management.base import BaseCommand, CommandError

from config.db.roles import database_bootstrap


class Command(BaseCommand):
    help = "Create or update the three database roles and the database. Safe to rerun."

    def handle(self, *args, **options):
        env = environ.Env()
        missing = [k for k in ("DATABASE_ADMIN_URL", "DATABASE_URL", "DATABASE_APP_URL", "DATABASE_WORKER_URL") if not env(k, default="")]
        if missing:
            raise CommandError(f"Set {', '.join(missing)}: db_bootstrap needs a superuser URL and the three role URLs.")
        database_bootstrap(
            admin_url=env("DATABASE_ADMIN_URL"),
            owner_url=env("DATABASE_URL"),
            app_url=env("DATABASE_APP_URL"),
            worker_url=env("DATABASE_WORKER_URL"),
        )
        self.stdout.write(self.style.SUCCESS("Roles and database are in place."))
