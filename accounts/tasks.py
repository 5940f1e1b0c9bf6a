"""Account mail, sent by a Celery worker once the transaction that wrote its data has committed."""

from __future__ import annotations

import logging
import unicodedata

from celery import shared_task
from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from kombu.exceptions import OperationalError as BrokerUnreachable

from config.cache import REDIS_ERRORS
from config.db import rls

logger = logging.getLogger(__name__)


def _one_line(text: str) -> str:
    """A header value: control characters become spaces, runs of spaces one (no header injection)."""
    return " ".join("".join(" " if unicodedata.category(c) == "Cc" else c for c in text).split())


@shared_task(acks_late=True, autoretry_for=(OSError,), retry_backoff=True, max_retries=5)
def mail_send_task(*, subject: str, body: str, recipients: list[str]) -> int:
    return send_mail(_one_line(subject), body, settings.DEFAULT_FROM_EMAIL, recipients)


def _queue_or_send(*, subject: str, body: str, recipients: list[str]) -> None:
    try:
        mail_send_task.delay(subject=subject, body=body, recipients=recipients)
    except (BrokerUnreachable, *REDIS_ERRORS):
        # The data is committed, so sending here is safe; a lost verification mail would strand the user.
        logger.warning("mail broker unreachable; sending %r in the request", subject)
        mail_send_task(subject=subject, body=body, recipients=recipients)


def mail_send_on_commit(*, subject: str, body: str, recipients: list[str]) -> None:
    """Queue the mail when the current transaction commits: a rollback leaves no link to nothing.
    With the broker unreachable the mail is sent in the request instead; a failure there is
    logged (robust), never turned into an error for what was already committed."""
    transaction.on_commit(lambda: _queue_or_send(subject=subject, body=body, recipients=recipients), using=rls.current_alias(), robust=True)
