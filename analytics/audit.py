"""The audit log's entries: security events, privileged access, and changes to the models
named in settings.AUDITED_MODELS with their old and new values.

Entries go to the log buffer (kind "audit"), never to the table from the request's role.
The actor, IP and user agent come from the request being served (AuditContextMiddleware);
work outside a request (Celery, shell) has no actor. Secrets never reach the log: a field
whose name says it holds one is written as "[redacted]".
"""

from __future__ import annotations

import copy
import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from django.db import transaction
from django.utils import timezone
from django.utils.functional import empty

from analytics.buffer import buffer_push
from config.http import client_ip

logger = logging.getLogger("confab.analytics.audit")

REDACTED = "[redacted]"
SECRET_MARKERS = ("password", "encrypted", "hash", "token", "secret")
# Bookkeeping that changes on every save or sign-in: the login event already says it.
IGNORED_FIELDS = frozenset({"updated_at", "last_login", "last_used_at"})
SNAPSHOT = "_audit_snapshot"

_request: ContextVar = ContextVar("audit_request", default=None)


@contextmanager
def request_bound(request) -> Iterator[None]:
    """Entries recorded inside this block name the request's user, IP and user agent."""
    token = _request.set(request)
    try:
        yield
    finally:
        _request.reset(token)


def request_user_id(request):
    """The authenticated user's id, without loading a user nobody has asked for yet."""
    user = request.__dict__.get("user") if request is not None else None
    if user is None or getattr(user, "_wrapped", None) is empty:
        return None
    return user.pk if user.is_authenticated else None


def request_user_agent(request) -> str:
    return request.META.get("HTTP_USER_AGENT", "")[:1000] if request is not None else ""


def audit_record(
    *,
    action: str,
    user_id=None,
    organization_id=None,
    table_name: str = "",
    record_id: str = "",
    old_values: dict | None = None,
    new_values: dict | None = None,
    detail: dict | None = None,
    ip: str | None = None,
    on_commit_of: str | None = None,
) -> None:
    """Queue one entry. With `on_commit_of` (an alias) it is queued only if that transaction commits."""
    request = _request.get()
    row = {
        "entry_uuid": str(uuid.uuid4()),
        "created_at": timezone.now().isoformat(),
        "user_id": str(user_id) if user_id else None,
        "organization_id": str(organization_id) if organization_id else None,
        "action": action,
        "table_name": table_name,
        "record_id": record_id,
        "old_values": old_values,
        "new_values": new_values,
        "detail": detail or {},
        "ip": ip or client_ip(request),
        "user_agent": request_user_agent(request),
    }

    def push():
        try:
            buffer_push("audit", row)
        except Exception:  # Redis down: say so loudly, do not fail the change that was made
            logger.exception("audit entry lost: %s %s %s", action, table_name, record_id)

    if on_commit_of:
        transaction.on_commit(push, using=on_commit_of)
    else:
        push()


def actor_id():
    return request_user_id(_request.get())


# --- Model changes -------------------------------------------------------------------


def _is_secret(name: str) -> bool:
    name = name.lower()
    return any(marker in name for marker in SECRET_MARKERS)


def _values(instance) -> dict:
    loaded = instance.__dict__
    return {
        f.attname: copy.deepcopy(loaded[f.attname]) if isinstance(loaded[f.attname], (dict, list)) else loaded[f.attname]
        for f in instance._meta.concrete_fields
        if f.attname in loaded  # deferred fields are not known
    }


def _shown(name: str, value):
    return REDACTED if _is_secret(name) else value


def _organization_of(instance):
    if instance._meta.label == "accounts.Organization":
        return instance.pk
    return getattr(instance, "organization_id", None)


def snapshot_take(sender, instance, **kwargs) -> None:
    """post_init: remember the values as loaded, to diff against on save."""
    setattr(instance, SNAPSHOT, _values(instance))


def change_saved(sender, instance, created: bool, using: str, update_fields=None, raw: bool = False, **kwargs) -> None:
    """post_save: a create with every value, or an update with the fields that changed."""
    if raw:
        return  # fixtures loading
    current = _values(instance)
    before = getattr(instance, SNAPSHOT, None) or {}
    setattr(instance, SNAPSHOT, current)
    if created:
        old, new = None, {k: _shown(k, v) for k, v in current.items() if k not in IGNORED_FIELDS}
    else:
        names = {instance._meta.get_field(f).attname for f in update_fields} if update_fields else current.keys()
        changed = [k for k in names if k in before and k in current and k not in IGNORED_FIELDS and before[k] != current[k]]
        if not changed:
            return
        old = {k: _shown(k, before[k]) for k in sorted(changed)}
        new = {k: _shown(k, current[k]) for k in sorted(changed)}
    audit_record(
        action="create" if created else "update",
        user_id=actor_id(),
        organization_id=_organization_of(instance),
        table_name=instance._meta.db_table,
        record_id=str(instance.pk),
        old_values=old,
        new_values=new,
        on_commit_of=using,
    )


def change_deleted(sender, instance, using: str, **kwargs) -> None:
    """post_delete: the values the row had."""
    values = getattr(instance, SNAPSHOT, None) or _values(instance)
    audit_record(
        action="delete",
        user_id=actor_id(),
        organization_id=_organization_of(instance),
        table_name=instance._meta.db_table,
        record_id=str(instance.pk),
        old_values={k: _shown(k, v) for k, v in values.items() if k not in IGNORED_FIELDS},
        on_commit_of=using,
    )
