"""Account mail, sent by a Celery worker once the transaction that wrote its data has committed."""

from __future__ import annotations

import unicodedata

from celery import shared_task
from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction

from config.db import rls


def _one_line(text: str) -> str:
    """A header value: control characters become spaces, runs of spaces one (no header injection)."""
    return " ".join("".join(" " if unicodedata.category(c) == "Cc" else c for c in text).split())


@shared_task(acks_late=True, autoretry_for=(OSError,), retry_backoff=True, max_retries=5)
def mail_send_task(*, subject: str, body: str, recipients: list[str]) -> int:
    return send_mail(_one_line(subject), body, settings.DEFAULT_FROM_EMAIL, recipients)


def mail_send_on_commit(*, subject: str, body: str, recipients: list[str]) -> None:
    """Queue the mail when the current transaction commits: a rollback leaves no link to nothing.
    A broker outage is logged, never turned into an error for what was already committed."""
    transaction.on_commit(
        lambda: mail_send_task.delay(subject=subject, body=body, recipients=recipients), using=rls.current_alias(), robust=True
    )
