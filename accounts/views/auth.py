"""Account pages (/accounts/...): sign-up, sign-in, password reset, email verification, invitations."""

from __future__ import annotations

import uuid

from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import ValidationError
from django.shortcuts import redirect, render
from django.urls import reverse, reverse_lazy
from django.utils.encoding import force_str
from django.utils.http import urlsafe_base64_decode
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from accounts import services
from accounts.errors import InvitationInvalid, PasswordResetThrottled
from accounts.forms import AccountPasswordResetForm, LoginForm, SignupForm, add_service_error, rls_context_kept
from accounts.views._common import BACKEND, _base_url
from config.db import rls
from config.errors import ApplicationError
from config.http import client_ip


@require_http_methods(["GET", "POST"])
def signup(request):
    if request.user.is_authenticated:
        return redirect("/")
    form = SignupForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            user = services.user_create(email=data["email"], password=data["password"], display_name=data["display_name"])
        except (ApplicationError, ValidationError) as exc:
            add_service_error(form, exc, field="password")
        else:
            login(request, user, backend=BACKEND)
            services.email_verification_send(user=user, base_url=_base_url(request))
            messages.success(request, f"Welcome to Confab! We sent a link to {user.email} to confirm your address.")
            return redirect("/")
    return render(request, "accounts/signup.html", {"form": form}, status=400 if form.errors else 200)


class LoginView(auth_views.LoginView):
    # A refused sign-in re-renders the form with 200, Django's default (config/tests/test_rls.py
    # relies on it); a signed-in user may sign in as someone else.
    form_class = LoginForm
    template_name = "accounts/login.html"


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
        return super().form_valid(form)


class PasswordResetDoneView(auth_views.PasswordResetDoneView):
    template_name = "accounts/password_reset_done.html"


class PasswordResetConfirmView(auth_views.PasswordResetConfirmView):
    """Reads the user under the link's own id: without a context the user table is empty."""

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
        services.email_verification_send(user=request.user, base_url=_base_url(request))
        messages.success(request, f"We sent a new confirmation link to {request.user.email}.")
    return redirect("settings:profile")


@require_http_methods(["GET", "POST"])
def invitation(request, token: str):
    if not request.user.is_authenticated:
        return redirect_to_login(request.get_full_path())
    if request.method == "POST":
        try:
            membership = services.invitation_accept(user=request.user, token=token)
        except InvitationInvalid as exc:
            return _invitation_page(request, token, error=exc.message, status=exc.status_code)
        messages.success(request, "You joined the organization.")
        return redirect(f"{reverse('settings:organization')}?org={membership.organization_id}")
    return _invitation_page(request, token)


def _invitation_page(request, token: str, *, error: str | None = None, status: int = 200):
    try:
        invitation = services.invitation_for_token(token=token)
    except InvitationInvalid as exc:
        return render(request, "accounts/invitation.html", {"error": exc.message}, status=exc.status_code)
    return render(request, "accounts/invitation.html", {"invitation": invitation, "error": error}, status=status)
