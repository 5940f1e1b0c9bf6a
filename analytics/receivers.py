"""Signal receivers: the audit log listens to accounts and the privileged context."""

from django.apps import apps
from django.conf import settings
from django.db.models.signals import post_delete, post_init, post_save

from accounts.signals import security_event
from analytics import audit
from config.db.rls import privileged_entered


def on_privileged_entered(sender, reason: str, audited: bool = True, **kwargs) -> None:
    if not audited:  # a scheduled system job: logged by rls, not audited
        return
    audit.audit_record(action="privileged_access", user_id=audit.actor_id(), detail={"reason": reason})


def on_security_event(sender, event: str, user_id=None, ip=None, detail=None, **kwargs) -> None:
    audit.audit_record(action=event, user_id=user_id or audit.actor_id(), ip=ip, detail=detail or {})


privileged_entered.connect(on_privileged_entered, dispatch_uid="analytics_audit_privileged")
security_event.connect(on_security_event, dispatch_uid="analytics_audit_security")

for _label in settings.AUDITED_MODELS:
    _model = apps.get_model(_label)
    post_init.connect(audit.snapshot_take, sender=_model, dispatch_uid=f"analytics_audit_init:{_label}")
    post_save.connect(audit.change_saved, sender=_model, dispatch_uid=f"analytics_audit_save:{_label}")
    post_delete.connect(audit.change_deleted, sender=_model, dispatch_uid=f"analytics_audit_delete:{_label}")
