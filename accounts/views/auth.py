"""Account pages (/accounts/...): sign-up, sign-in, password reset, email verification, invitations."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth import views as auth_views
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import ValidationError
from django.shortcuts import redirect, render
from django.urls import reverse, reverse_lazy
from django.utils.encoding import force_str
from django.utils.http import url_has_allowed_host_and_scheme, urlsafe_base64_decode
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from accounts import selectors, services
from accounts.decorators import login_required
from accounts.errors import InvitationInvalid, MailThrottled, PasswordResetThrottled
from accounts.forms import AccountPasswordResetForm, LoginForm, SignupForm, add_service_error, rls_context_kept
from accounts.session_store import session_digest
from accounts.views._common import BACKEND, _base_url
from config.db import rls
from config.errors import ApplicationError
from config.http import client_ip


def _safe_next(request, url: str | None) -> str | None:
    if url and url_has_allowed_host_and_scheme(url, allowed_hosts={request.get_host()}, require_https=request.is_secure()):
        return url
    return None


@require_http_methods(["GET", "POST"])
def signup(request):
    if request.user.is_authenticated:
        return redirect("/")
    form = SignupForm(request.POST or None, initial={"next": request.GET.get("next", "")})
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            user = services.user_create(email=data["email"], password=data["password"], display_name=data["display_name"])
        except (ApplicationError, ValidationError) as exc:
            add_service_error(form, exc, field="password")
        else:
            login(request, user, backend=BACKEND)
            request.session["new_account"] = True  # the home page greets a newcomer, not a returning user
            services.email_verification_send(user=user, base_url=_base_url(request))
            messages.success(request, f"Welcome to Confab! We sent a link to {user.email} to confirm your address.")
            next_url = _safe_next(request, data["next"] or request.GET.get("next"))
            if next_url:
                return redirect(next_url)
            _pending_invitations_say(request)
            return redirect("/")
    return render(request, "accounts/signup.html", {"form": form}, status=400 if form.errors else 200)


def _pending_invitations_say(request) -> None:
    names = [i.organization_name or "an organization" for i in selectors.invitation_pending_for(user=request.user)]
    if names:
        messages.info(
            request, f"You are invited to join {', '.join(names)}: open the link in the invitation email, or see Settings → Organization."
        )


class LoginView(auth_views.LoginView):
    # A refused sign-in re-renders the form with 200, Django's default (config/tests/test_rls.py
    # relies on it); a signed-in user may sign in as someone else.
    form_class = LoginForm
    template_name = "accounts/login.html"

    def form_valid(self, form):
        previous = self.request.user
        if previous.is_authenticated and previous.pk != form.get_user().pk:
            # Django flushes the browser's session for the new user without a logout signal: the
            # first user's record of it would stay listed as signed in.
            # Under the first user's context, in the request's own transaction (which holds that
            # record's row: a privileged connection would wait on it for good).
            rls.context_set(user_id=previous.pk)
            services.user_session_end(session_key_digest=session_digest(self.request.session))
            rls.context_set(user_id=form.get_user().pk)
        response = super().form_valid(form)
        if not self.get_redirect_url():
            _pending_invitations_say(self.request)
        return response


def _duration_words(seconds: int) -> str:
    """3 days, 1 day, 12 hours, 1 hour: how long a link works, as its mail says."""
    if seconds < 3600:
        minutes = max(1, int(seconds) // 60)
        return f"{minutes} minute{'s' if minutes != 1 else ''}"
    days, hours = divmod(int(seconds) // 3600, 24)
    if days and not hours:
        return f"{days} day{'s' if days != 1 else ''}"
    hours += days * 24
    return f"{hours} hour{'s' if hours != 1 else ''}"


class PasswordResetView(auth_views.PasswordResetView):
    form_class = AccountPasswordResetForm
    template_name = "accounts/password_reset_form.html"
    email_template_name = "accounts/password_reset_email.txt"
    subject_template_name = "accounts/password_reset_subject.txt"
    success_url = reverse_lazy("accounts:password_reset_done")

    def form_valid(self, form):
        # Counted for every address asked, known or not: the refusal reveals no account.
        try:
            services.password_reset_throttle(email=form.cleaned_data["email"], ip=client_ip(self.request))
        except PasswordResetThrottled as exc:
            form.add_error(None, exc.message)
            response = self.form_invalid(form)
            response.status_code = exc.status_code
            response["Retry-After"] = str(exc.retry_after)
            return response
        self.extra_email_context = {"link_lifetime": _duration_words(settings.PASSWORD_RESET_TIMEOUT)}
        return super().form_valid(form)


class PasswordResetDoneView(auth_views.PasswordResetDoneView):
    template_name = "accounts/password_reset_done.html"


class PasswordResetConfirmView(auth_views.PasswordResetConfirmView):
    """Reads the user under the link's own id: without a context the user table is empty."""

    def form_valid(self, form):
        unproven = not form.user.email_verified
        if unproven:
            # The address's owner taking back an account someone else opened. Its keys are locked
            # before the user's row (the new password), the order a key minting a key takes (the
            # key, then user_held_active); the other order deadlocked and the reset failed.
            services.unproven_access_revoked(user=form.user)
        response = super().form_valid(form)
        if unproven:
            # Again, now the user's row is held: a key minted while the first pass waited for the
            # minting key committed after that pass had read the keys.
            services.unproven_access_revoked(user=form.user)
        # Every browser signed in is signed out (their auth hash no longer matches), and the
        # sessions page must say so: whoever reset because of an intruder sees the intruder gone.
        services.user_sessions_end_all(user=form.user)
        return response

    template_name = "accounts/password_reset_confirm.html"
    success_url = reverse_lazy("accounts:password_reset_complete")

    def dispatch(self, *args, **kwargs):
        with rls_context_kept():  # the link's user is this request's context only while it is handled
            return super().dispatch(*args, **kwargs)

    def get_user(self, uidb64):
        try:
            user_id = uuid.UUID(force_str(urlsafe_base64_decode(uidb64)))
        except (TypeError, ValueError, OverflowError):
            return None
        rls.context_set(user_id=user_id)
        return super().get_user(uidb64)


class PasswordResetCompleteView(auth_views.PasswordResetCompleteView):
    template_name = "accounts/password_reset_complete.html"


@require_GET
def verify_email(request, token: str):
    try:
        with rls_context_kept():  # the service reads the link's user under their own id
            services.email_verify(token=token)
    except InvitationInvalid as exc:
        return render(request, "accounts/verify_email.html", {"error": exc.message}, status=exc.status_code)
    messages.success(request, "Your email address is confirmed.")
    return redirect("settings:profile" if request.user.is_authenticated else "accounts:login")


@login_required
@require_POST
def verify_email_resend(request):
    if request.user.email_verified:
        messages.info(request, "Your email address is already confirmed.")
    else:
        try:
            services.verification_email_throttle(user_id=request.user.pk)
        except MailThrottled as exc:
            messages.error(request, exc.message)
            return redirect("settings:profile")
        services.email_verification_send(user=request.user, base_url=_base_url(request))
        messages.success(request, f"We sent a new confirmation link to {request.user.email}.")
    return redirect("settings:profile")


@require_http_methods(["GET", "POST"])
def invitation(request, token: str):
    if not request.user.is_authenticated:
        _invitation_sign_in_say(request, token)
        return redirect_to_login(request.get_full_path())
    if request.method == "POST":
        try:
            membership = services.invitation_accept(user=request.user, token=token)
        except InvitationInvalid as exc:
            return _invitation_page(request, token, error=exc.message, status=exc.status_code)
        messages.success(request, "You joined the organization.")
        return redirect(f"{reverse('settings:organization')}?org={membership.organization_id}")
    return _invitation_page(request, token)


def _invitation_sign_in_say(request, token: str) -> None:
    """Signed out, the invitee cannot read the invitation (no context): read it by its token, audited."""
    try:
        with rls.privileged(reason="invitation link opened signed out"):
            invitation = services.invitation_for_token(token=token)
    except InvitationInvalid:
        return
    if invitation.is_pending:
        messages.info(
            request,
            f"You are invited to join {invitation.organization_name or 'an organization'} on Confab. "
            f"Log in, or create an account, with {invitation.email} to accept.",
        )


def _invitation_page(request, token: str, *, error: str | None = None, status: int = 200):
    try:
        invitation = services.invitation_for_token(token=token)
    except InvitationInvalid as exc:
        return render(request, "accounts/invitation.html", {"error": exc.message}, status=exc.status_code)
    return render(request, "accounts/invitation.html", {"invitation": invitation, "error": error}, status=status)
