"""Sign-in and sign-out move the request's row-level security context with the user."""
from django.contrib.auth.models import update_last_login
from django.contrib.auth.signals import user_logged_in, user_logged_out
from django.db import connections
from django.utils import timezone

from config.db import rls


def on_login(sender, request, user, **kwargs):
    # From here on the request acts as this user; last_login is their own row.
    with rls.atomic():
        rls.context_set_for_user(user)
        user.last_login = timezone.now()
        user.save(update_fields=["last_login"])


def on_logout(sender, request, user, **kwargs):
    if connections[rls.current_alias()].in_atomic_block:
        rls.context_clear()


def connect():
    user_logged_in.disconnect(update_last_login, dispatch_uid="update_last_login")
    user_logged_in.connect(on_login, dispatch_uid="accounts_login_context")
    user_logged_out.connect(on_logout, dispatch_uid="accounts_logout_context")
