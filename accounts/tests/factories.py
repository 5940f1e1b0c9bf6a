"""Test data, written the way the product writes it (services, under the right context)."""

import itertools

from accounts.services import user_create
from config.db import rls

_seq = itertools.count(1)
PASSWORD = "correct-horse-battery-9"


def make_user(*, email: str | None = None, password: str = PASSWORD, **fields):
    """A committed-or-not user with a personal organization (privileged: no context needed)."""
    email = email or f"user{next(_seq)}@example.com"
    with rls.privileged(reason="test factory"):
        return user_create(email=email, password=password, **fields)
