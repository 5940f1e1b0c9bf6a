"""Test data, written the way the product writes it (services, under the right context)."""

import itertools
import time

from django.core import mail

from accounts.services import user_create
from config.db import rls

_seq = itertools.count(1)
PASSWORD = "correct-horse-battery-9"


def make_user(*, email: str | None = None, password: str = PASSWORD, **fields):
    """A committed-or-not user with a personal organization (privileged: no context needed)."""
    email = email or f"user{next(_seq)}@example.com"
    with rls.privileged(reason="test factory"):
        return user_create(email=email, password=password, **fields)


def mail_arrives(count: int = 1, timeout: float = 20.0) -> list:
    """The outbox once `count` mails are in it: a Celery worker sends them after commit."""
    deadline = time.monotonic() + timeout
    while len(mail.outbox) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return list(mail.outbox)
