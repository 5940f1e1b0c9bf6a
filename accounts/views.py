"""Account pages (/accounts/...) and settings pages (/settings/...).

Each view parses input, calls one service and renders. Reads go through selectors under
the request's row-level security context, so another tenant's id is a 404. A service's
refusal lands on the form field it names, with the submitted input kept.
"""
from __future__ import annotations

import uuid

from django.contrib import messages
from django.contrib.auth import login, logout
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import ValidationError
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse, reverse_lazy
from django.utils.cache import add_never_cache_headers
from django.utils.encoding import force_str
from django.utils.http import urlsafe_base64_decode
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from accounts import selectors, services
from accounts.errors import InvitationInvalid
from accounts.forms import (
    AccountPasswordResetForm,
    ApiKeyCreateForm,
    InvitationCreateForm,
    LoginForm,
    MembershipRoleForm,
    OrganizationCreateForm,
    OrganizationUpdateForm,
    PreferencesForm,
    ProfileForm,
    ProviderCredentialForm,
    SignupForm,
    add_service_error,
    rls_context_kept,
)
from accounts.models import ApiKey, Membership
from config.db import rls
from config.errors import ApplicationError

BACKEND = "accounts.backends.EmailBackend"


def _base_url(request) -> str:
    """https://host (no trailing slash), for links in emails."""
    return request.build_absolute_uri("/")[:-1]


def _is_htmx(request) -> bool:
    return request.headers.get("HX-Request") == "true"


def _htmx_redirect(url: str) -> HttpResponse:
    response = HttpResponse(status=204)
    response["HX-Redirect"] = url
    return response


# --- Sign-up, sign-in, password reset ---------------------------------------------------

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


# --- Email verification and invitations ----------------------------------------------------

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


# --- Settings: profile, preferences ---------------------------------------------------------

@login_required
def settings_index(request):
    return redirect("settings:profile")


@login_required
@require_http_methods(["GET", "POST"])
def profile(request):
    user = request.user
    form = ProfileForm(request.POST or None, initial={name: getattr(user, name) for name in ProfileForm.base_fields})
    if request.method == "POST" and form.is_valid():
        try:
            services.user_update(user=user, **form.cleaned_data)
        except (ApplicationError, ValidationError) as exc:
            user.refresh_from_db()  # the service set the refused values on the object
            add_service_error(form, exc)
        else:
            messages.success(request, "Profile saved.")
            return redirect("settings:profile")
    return render(request, "accounts/settings/profile.html", {"form": form}, status=400 if form.errors else 200)


@login_required
@require_http_methods(["GET", "POST"])
def preferences(request):
    current = selectors.preferences_get(user=request.user)
    form = PreferencesForm(request.POST or None, instance=current)
    if request.method == "POST" and form.is_valid():
        try:
            services.preferences_update(user=request.user, **{name: form.cleaned_data[name] for name in PreferencesForm.Meta.fields})
        except (ApplicationError, ValidationError) as exc:
            add_service_error(form, exc)
        else:
            messages.success(request, "Preferences saved.")
            return redirect("settings:preferences")
    return render(request, "accounts/settings/preferences.html", {"form": form}, status=400 if form.errors else 200)


# --- Settings: provider keys ----------------------------------------------------------------

@login_required
@require_http_methods(["GET", "POST"])
def credentials(request):
    form = ProviderCredentialForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            credential = services.provider_credential_set(user=request.user, **form.cleaned_data)
        except (ApplicationError, ValidationError) as exc:
            add_service_error(form, exc)
        else:
            messages.success(request, f"{credential.get_provider_display()} key saved.")
            return redirect("settings:credentials")
    context = {"form": form, "credentials": selectors.provider_credential_list(user=request.user)}
    return render(request, "accounts/settings/credentials.html", context, status=400 if form.errors else 200)


@login_required
@require_POST
def credential_delete(request, credential_id):
    credential = selectors.provider_credential_get(user=request.user, credential_id=credential_id)
    services.provider_credential_delete(user=request.user, credential=credential)
    if _is_htmx(request):
        return HttpResponse("")  # the row is swapped out
    messages.success(request, f"{credential.get_provider_display()} key deleted.")
    return redirect("settings:credentials")


# --- Settings: API keys ---------------------------------------------------------------------

@login_required
@require_http_methods(["GET", "POST"])
def api_keys(request):
    form = ApiKeyCreateForm(request.POST or None, user_timezone=request.user.timezone)
    context = {}
    if request.method == "POST" and form.is_valid():
        try:
            api_key, secret = services.api_key_create(user=request.user, **form.cleaned_data)
        except (ApplicationError, ValidationError) as exc:
            add_service_error(form, exc)
        else:
            # The secret exists in this response only: never stored, never shown again.
            context = {"new_key": api_key, "secret": secret}
            form = ApiKeyCreateForm(user_timezone=request.user.timezone)
    context.update({"form": form, "api_keys": selectors.api_key_list(user=request.user), "scopes": dict(ApiKey.Scope.choices)})
    response = render(request, "accounts/settings/api_keys.html", context, status=400 if form.errors else 200)
    add_never_cache_headers(response)
    return response


@login_required
@require_POST
def api_key_revoke(request, api_key_id):
    api_key = selectors.api_key_get(user=request.user, api_key_id=api_key_id)
    services.api_key_revoke(user=request.user, api_key=api_key)
    if _is_htmx(request):
        return render(request, "accounts/settings/_api_key_row.html", {"key": api_key, "scopes": dict(ApiKey.Scope.choices)})
    messages.success(request, f"API key “{api_key.name}” revoked.")
    return redirect("settings:api_keys")


# --- Settings: sessions ---------------------------------------------------------------------

@login_required
@require_GET
def sessions(request):
    context = {"sessions": selectors.user_session_list(user=request.user), "current_key": request.session.session_key}
    return render(request, "accounts/settings/sessions.html", context)


@login_required
@require_POST
def session_revoke(request, session_id):
    user_session = selectors.user_session_get(user=request.user, user_session_id=session_id)
    current = user_session.session_key == request.session.session_key
    services.user_session_revoke(user=request.user, user_session=user_session)
    if current:
        logout(request)
        messages.info(request, "You signed out of this session.")
        return _htmx_redirect(reverse("accounts:login")) if _is_htmx(request) else redirect("accounts:login")
    if _is_htmx(request):
        return HttpResponse("")
    messages.success(request, "Session signed out.")
    return redirect("settings:sessions")


# --- Settings: organizations ----------------------------------------------------------------

def _organization_url(organization_id) -> str:
    return f"{reverse('settings:organization')}?org={organization_id}"


def _organization_for(request, organization_id=None):
    """One of the user's organizations (404 for any other); default: the personal one."""
    if organization_id is None:
        organization = selectors.organization_list(user=request.user).first()
        if organization is None:
            raise Http404("You belong to no organization.")
        return organization
    try:
        organization_id = uuid.UUID(str(organization_id))
    except ValueError as exc:
        raise Http404("No such organization.") from exc
    return selectors.organization_get(user=request.user, organization_id=organization_id)


def _organization_page(request, organization, *, status: int = 200, error: str | None = None, **forms):
    is_admin = organization.role in (Membership.Role.OWNER, Membership.Role.ADMIN)
    context = {
        "organization": organization,
        "organizations": selectors.organization_list(user=request.user),
        "memberships": selectors.membership_list(organization=organization),
        "invitations": [i for i in selectors.invitation_list(organization=organization) if i.is_pending] if is_admin else [],
        "is_admin": is_admin,
        "role_label": Membership.Role(organization.role).label,
        "roles": Membership.Role.choices,
        "error": error,
        "update_form": forms.get("update_form") or OrganizationUpdateForm(
            initial={"name": organization.name, "auto_join_domain": organization.auto_join_domain}),
        "invite_form": forms.get("invite_form") or InvitationCreateForm(),
        "create_form": forms.get("create_form") or OrganizationCreateForm(),
    }
    return render(request, "accounts/settings/organization.html", context, status=status)


@login_required
@require_GET
def organization(request):
    return _organization_page(request, _organization_for(request, request.GET.get("org")))


@login_required
@require_POST
def organization_create(request):
    form = OrganizationCreateForm(request.POST)
    if form.is_valid():
        try:
            created = services.organization_create(user=request.user, name=form.cleaned_data["name"])
        except ApplicationError as exc:
            add_service_error(form, exc)
        else:
            messages.success(request, f"Organization “{created.name}” created.")
            return redirect(_organization_url(created.pk))
    return _organization_page(request, _organization_for(request), status=400, create_form=form)


@login_required
@require_POST
def organization_update(request, organization_id):
    organization = _organization_for(request, organization_id)
    form = OrganizationUpdateForm(request.POST)
    if form.is_valid():
        try:
            services.organization_update(actor=request.user, organization=organization, **form.cleaned_data)
        except ApplicationError as exc:
            organization.refresh_from_db()
            add_service_error(form, exc)
        else:
            messages.success(request, "Organization saved.")
            return redirect(_organization_url(organization.pk))
    return _organization_page(request, organization, status=400, update_form=form)


@login_required
@require_POST
def organization_leave(request, organization_id):
    organization = _organization_for(request, organization_id)
    try:
        services.organization_leave(user=request.user, organization=organization)
    except ApplicationError as exc:
        return _organization_page(request, organization, status=exc.status_code, error=exc.message)
    messages.success(request, f"You left “{organization.name}”.")
    return redirect("settings:organization")


@login_required
@require_POST
def invitation_create(request, organization_id):
    organization = _organization_for(request, organization_id)
    form = InvitationCreateForm(request.POST)
    if form.is_valid():
        try:
            sent, _token = services.invitation_create(actor=request.user, organization=organization, base_url=_base_url(request),
                                                      **form.cleaned_data)
        except ApplicationError as exc:
            add_service_error(form, exc)
        else:
            messages.success(request, f"Invitation sent to {sent.email}.")
            return redirect(_organization_url(organization.pk))
    return _organization_page(request, organization, status=400, invite_form=form)


@login_required
@require_POST
def invitation_revoke(request, organization_id, invitation_id):
    organization = _organization_for(request, organization_id)
    pending = selectors.invitation_get(organization=organization, invitation_id=invitation_id)
    try:
        services.invitation_revoke(actor=request.user, invitation=pending)
    except ApplicationError as exc:
        if _is_htmx(request):  # htmx swaps no error response: show the refusal on the reloaded page
            messages.error(request, exc.message)
            return _htmx_redirect(_organization_url(organization.pk))
        return _organization_page(request, organization, status=exc.status_code, error=exc.message)
    if _is_htmx(request):
        return HttpResponse("")
    messages.success(request, f"Invitation to {pending.email} withdrawn.")
    return redirect(_organization_url(organization.pk))


@login_required
@require_POST
def membership_role(request, organization_id, membership_id):
    organization = _organization_for(request, organization_id)
    membership = selectors.membership_get(organization=organization, membership_id=membership_id)
    form = MembershipRoleForm(request.POST)
    if not form.is_valid():
        return _organization_page(request, organization, status=400, error="Choose one of the roles.")
    try:
        services.membership_role_change(actor=request.user, membership=membership, role=form.cleaned_data["role"])
    except ApplicationError as exc:
        return _organization_page(request, organization, status=exc.status_code, error=exc.message)
    messages.success(request, f"{membership.user.email} is now {membership.get_role_display().lower()}.")
    return redirect(_organization_url(organization.pk))


@login_required
@require_POST
def membership_remove(request, organization_id, membership_id):
    organization = _organization_for(request, organization_id)
    membership = selectors.membership_get(organization=organization, membership_id=membership_id)
    leaving = membership.user_id == request.user.pk
    try:
        services.membership_remove(actor=request.user, membership=membership)
    except ApplicationError as exc:
        return _organization_page(request, organization, status=exc.status_code, error=exc.message)
    if leaving:
        messages.success(request, f"You left “{organization.name}”.")
        return redirect("settings:organization")
    messages.success(request, f"{membership.user.email} removed from “{organization.name}”.")
    return redirect(_organization_url(organization.pk))
