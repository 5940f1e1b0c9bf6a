"""Re-encrypt every stored secret under the newest FIELD_ENCRYPTION_KEYS key."""

from django.core.management.base import BaseCommand, CommandError

from accounts.services import secrets_rotate
from config.crypto import SecretUndecryptable


class Command(BaseCommand):
    help = "Re-encrypt provider keys and integration tokens under the newest key (first in FIELD_ENCRYPTION_KEYS). Safe to rerun."

    def handle(self, *args, **options):
        try:
            count = secrets_rotate()
        except SecretUndecryptable as exc:
            raise CommandError(
                f"{exc} Nothing was changed: put the old key back in FIELD_ENCRYPTION_KEYS (after the new one) and rerun."
            ) from exc
        self.stdout.write(self.style.SUCCESS(f"Re-encrypted {count} secret(s) under the newest key."))
