"""`manage.py import_conversations FILE --user EMAIL`: import an export (ChatGPT's ZIP or
conversations.json, Claude's ZIP or conversations.json, or Confab's JSON) into a user's
conversations and print the report. A malformed or oversized file imports nothing and exits
non-zero with the reason, as does an unknown user."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from accounts.models import User
from chat.porting.base import ImportRejected
from chat.porting.importer import conversations_import
from config.db import rls
from config.text import text_clean


class Command(BaseCommand):
    help = "Import a ChatGPT, Claude or Confab export file into a user's conversations and print the report."

    def add_arguments(self, parser):
        parser.add_argument("file", help="the export: a ZIP as downloaded, or one of its JSON files")
        parser.add_argument("--user", required=True, help="the email of the user who receives the conversations")

    def handle(self, *args, file: str, user: str, **options):
        path = Path(file)
        try:
            size = path.stat().st_size if path.is_file() else None
        except (OSError, ValueError) as exc:  # no permission on its folder; a NUL in the name
            raise CommandError(f"{file!r} cannot be read: {_reason(exc)}.") from None
        if size is None:
            raise CommandError(f"{file} is not a file.")
        if size > settings.CHAT_IMPORT_MAX_BYTES:
            raise CommandError(
                f"{file} is larger than the {settings.CHAT_IMPORT_MAX_BYTES} bytes an import may be (CHAT_IMPORT_MAX_BYTES)."
            )
        if text_clean(user) != user or any(ord(c) < 32 for c in user):
            raise CommandError("The --user email contains control characters or invalid Unicode.")
        # Finding the user by email is an operator's look-up (audited); the import runs under their own context.
        with rls.privileged(reason=f"import_conversations: find {user}"):
            owner = User.objects.filter(email=User.objects.normalize_email(user), is_active=True).first()
        if owner is None:
            raise CommandError(f"There is no active user with the email {user}.")
        try:
            with path.open("rb") as stream:
                report = conversations_import(user=owner, file=stream)
        except ImportRejected as exc:
            raise CommandError(f"{file}: {exc.message}") from None
        except OSError as exc:  # the file is there but this user may not read it
            raise CommandError(f"{file} cannot be read: {_reason(exc)}.") from None
        for line in report.lines():
            self.stdout.write(line)


def _reason(exc: Exception) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
