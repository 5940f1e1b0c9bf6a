"""Create the owner, app and worker roles and the database (needs DATABASE_ADMIN_URL)."""

import environ
import psycopg
from django.core.management.base import BaseCommand, CommandError

from config.db.roles import URL_NEEDS, BootstrapRefused, database_bootstrap


def _reason(exc: Exception) -> str:
    said = str(exc).strip()
    return said.splitlines()[0] if said else type(exc).__name__


class Command(BaseCommand):
    help = "Create or update the three database roles and the database. Safe to rerun."

    def handle(self, *args, **options):
        env = environ.Env()
        missing = [k for k in URL_NEEDS if not env(k, default="")]
        if missing:
            raise CommandError(f"Set {', '.join(missing)}: db_bootstrap needs a superuser URL and the three role URLs.")
        try:
            database_bootstrap(
                admin_url=env("DATABASE_ADMIN_URL"),
                owner_url=env("DATABASE_URL"),
                app_url=env("DATABASE_APP_URL"),
                worker_url=env("DATABASE_WORKER_URL"),
            )
        except BootstrapRefused as exc:
            raise CommandError(str(exc)) from None
        except psycopg.OperationalError as exc:
            raise CommandError(f"DATABASE_ADMIN_URL does not answer ({_reason(exc)}): start that server, or fix the URL.") from None
        except psycopg.Error as exc:  # it answered, and refused: most often a role that is no superuser
            raise CommandError(f"DATABASE_ADMIN_URL's server refused the bootstrap ({_reason(exc)}): it needs a superuser's URL.") from None
        self.stdout.write(self.style.SUCCESS("Roles and database are in place."))
