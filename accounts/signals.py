"""Sign-in and sign-out move the request's row-level security context with the user,
record the browser session, and count failures for throttling."""

from django.contrib.auth.models import update_last_login
from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.db import connections
from django.dispatch import Signal
from django.utils import timezone

from accounts import services
from accounts.models import User
from accounts.session_store import session_digest
from config.db import rls
from config.http import client_ip

# Security events for the audit log (analytics listens): sender=None, kwargs below.
security_event = Signal()  # event: str, user_id, ip, detail: dict


def on_login(sender, request, user, **kwargs):
    # From here on the request acts as this user; last_login is their own row.
    with rls.atomic():
        rls.context_set(user_id=user.pk)
        user.last_login = timezone.now()
        # Only while the account is active, holding its row (as user_held_active): a deactivation
        # committed since the password was checked leaves this sign-in without a session.
        if not User.objects.filter(pk=user.pk, is_active=True).update(last_login=user.last_login):
            if request is not None and hasattr(request, "session"):
                request.session.flush()
            return
        if request is not None and hasattr(request, "session"):
            services.user_session_start(request=request, user=user)
            if getattr(request, "login_attempt_counted", False):
                # Not a sign-up's login, which counted none: each would have bought one more guess.
                services.login_failures_clear(email=user.email, ip=client_ip(request))
    security_event.send(sender=None, event="login", user_id=user.pk, ip=client_ip(request), detail={})


def on_logout(sender, request, user, **kwargs):
    if request is not None and hasattr(request, "session"):
        services.user_session_end(session_key_digest=session_digest(request.session))
    if connections[rls.current_alias()].in_atomic_block:
        rls.context_clear()
    if user is not None:
        security_event.send(sender=None, event="logout", user_id=user.pk, ip=client_ip(request), detail={})


def on_login_failed(sender, credentials, request=None, **kwargs):
    email = credentials.get("email") or credentials.get("username") or ""
    # The attempt was counted before its password was checked (EmailBackend): not again here.
    security_event.send(sender=None, event="login_failed", user_id=None, ip=client_ip(request), detail={"email": email})


def connect():
    user_logged_in.disconnect(update_last_login, dispatch_uid="update_last_login")
    user_logged_in.connect(on_login, dispatch_uid="accounts_login_context")
    user_logged_out.connect(on_logout, dispatch_uid="accounts_logout_context")
    user_login_failed.connect(on_login_failed, dispatch_uid="accounts_login_failed")
