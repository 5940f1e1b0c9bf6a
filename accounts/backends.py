"""Sign-in by email through one narrow path.

Before sign-in there is no context, so the user's row is invisible to the app role.
`accounts_user_id_for_login(email)` (SECURITY DEFINER, owned by the owner role) answers
one question — which id has this email — and nothing else; the row itself is then read
under that user's own context and the password checked.
"""

from django.contrib.auth.backends import BaseBackend
from django.core.exceptions import PermissionDenied
from django.db import connection

from accounts.models import User
from config.db import rls
from config.http import client_ip


def user_id_for_login(email: str):
    with connection.cursor() as cur:
        cur.execute("SELECT accounts_user_id_for_login(%s)", [User.objects.normalize_email(email)])
        return cur.fetchone()[0]


class EmailBackend(BaseBackend):
    def authenticate(self, request, email=None, password=None, username=None, **kwargs):
        email = email or username
        if not email or password is None:
            return None
        # Every password path (pages, admin, any later API login) is throttled here; the
        # sign-in form checks first only to show the sentence.
        from accounts.errors import LoginThrottled
        from accounts.services import login_attempt_take

        try:
            login_attempt_take(email=email, ip=client_ip(request))  # counted before the password is checked
        except LoginThrottled as exc:
            raise PermissionDenied(exc.message) from exc
        if request is not None:
            request.login_attempt_counted = True  # a success takes back only an attempt it counted (signals.on_login)
        user_id = user_id_for_login(email)
        if user_id is None:
            User().set_password(password)  # same work as a real check: no timing oracle for unknown emails
            return None
        rls.context_set(user_id=user_id)
        user = User.objects.filter(pk=user_id).first()
        if user and user.check_password(password) and self.user_can_authenticate(user):
            return user
        rls.context_clear()
        return None

    def user_can_authenticate(self, user) -> bool:
        return user.is_active and user.deleted_at is None

    def get_user(self, user_id):
        # Called once the request's context names this user (RLSContextMiddleware).
        user = User.objects.filter(pk=user_id).first()
        return user if user and self.user_can_authenticate(user) else None

    def get_user_permissions(self, user_obj, obj=None):
        return set()

    def has_perm(self, user_obj, perm, obj=None):
        # Staff run the business from admin; finer permissions are not used.
        return user_obj.is_active and (user_obj.is_superuser or user_obj.is_staff)

    def has_module_perms(self, user_obj, app_label):
        return user_obj.is_active and (user_obj.is_superuser or user_obj.is_staff)
