"""Account mail, sent by a Celery worker once the transaction that wrote its data has committed."""

from __future__ import annotations

import logging
import unicodedata

from celery import shared_task
from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from kombu.exceptions import OperationalError as BrokerUnreachable

from accounts.models import email_domain_spelled
from config.cache import REDIS_ERRORS
from config.db import rls

logger = logging.getLogger(__name__)


def _one_line(text: str) -> str:
    """A header value: control characters become spaces, runs of spaces one (no header injection)."""
    return " ".join("".join(" " if unicodedata.category(c) == "Cc" else c for c in text).split())


def _deliverable(address: str) -> str:
    """The address with a non-ASCII domain in its punycode, by IDNA 2008: Django's mail would spell
    it with Python's IDNA 2003 codec, sending anna@straße.de's mail to anna@strasse.de, another
    domain's owner."""
    local, at, domain = address.rpartition("@")
    spelled = email_domain_spelled(domain, ascii=True) if at and not domain.isascii() else None
    return f"{local}@{spelled}" if spelled else address


@shared_task(acks_late=True, autoretry_for=(OSError,), retry_backoff=True, max_retries=5)
def mail_send_task(*, subject: str, body: str, recipients: list[str]) -> int:
    return send_mail(_one_line(subject), body, settings.DEFAULT_FROM_EMAIL, [_deliverable(r) for r in recipients])


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
