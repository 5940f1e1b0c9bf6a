"""Settings read from the environment, checked as they are read: a malformed value stops startup
with a sentence naming its variable, not a traceback deep in a library or a server that starts
with a negative pool size."""

from __future__ import annotations

import math
from decimal import Decimal, InvalidOperation
from urllib.parse import parse_qs, urlsplit

import environ
from django.core.exceptions import ImproperlyConfigured

POSTGRES_SCHEMES = ("postgres", "postgresql", "pgsql")


class CheckedEnv(environ.Env):
    """django-environ's Env whose numbers are numbers: whole and 0 or more (`int`), finite and 0
    or more (`float`), or a sentence naming the variable."""

    def int(self, var, default=environ.Env.NOTSET):
        raw = self.str(var, default=str(default) if default is not environ.Env.NOTSET else default)
        try:
            value = int(raw)
        except (TypeError, ValueError):
            raise ImproperlyConfigured(f"{var} must be a whole number, not {raw!r}.") from None
        if value < 0:
            raise ImproperlyConfigured(f"{var} must be 0 or more, not {value}.")
        return value

    def float(self, var, default=environ.Env.NOTSET):
        raw = self.str(var, default=str(default) if default is not environ.Env.NOTSET else default)
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise ImproperlyConfigured(f"{var} must be a number, not {raw!r}.") from None
        if not math.isfinite(value) or value < 0:
            raise ImproperlyConfigured(f"{var} must be a finite number, 0 or more, not {raw!r}.")
        return value

    def decimal(self, var, default: str) -> Decimal:
        raw = self.str(var, default=default)
        try:
            value = Decimal(raw)
        except InvalidOperation:
            raise ImproperlyConfigured(f"{var} must be a number, not {raw!r}.") from None
        if not value.is_finite() or value < 0:
            raise ImproperlyConfigured(f"{var} must be a finite number, 0 or more, not {raw!r}.")
        return value

    def choice(self, var, default: str, choices) -> str:
        value = self.str(var, default=default)
        if value not in choices:
            raise ImproperlyConfigured(f"{var} must be one of {', '.join(choices)}, not {value!r}.")
        return value


def postgres_url(var: str, value: str | None) -> str:
    """`value` if it is a PostgreSQL URL naming a database and a host (or ?host=, a socket directory).
    The refusal never quotes the value: it holds the role's password."""
    try:
        parts = urlsplit(value or "")
        usable = parts.scheme in POSTGRES_SCHEMES and parts.path.strip("/") and (parts.hostname or parse_qs(parts.query).get("host"))
        parts.port  # noqa: B018  (read to check it: a port that is not a number raises here, not in the driver later)
    except ValueError:  # an unclosed IPv6 bracket, a port that is not a number
        usable = False
    if not usable:
        raise ImproperlyConfigured(
            f"{var} must be a PostgreSQL URL naming a host and a database, like postgres://user:password@host:5432/name."
        )
    return value
