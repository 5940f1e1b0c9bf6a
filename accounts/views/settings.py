"""Settings pages (/settings/...): profile, preferences, provider keys, API keys, sessions."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth import logout
from django.core.exceptions import ValidationError
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.cache import add_never_cache_headers
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from accounts import selectors, services
from accounts.decorators import login_required
from accounts.forms import ApiKeyCreateForm, PreferencesForm, ProfileForm, ProviderCredentialForm, add_service_error
from accounts.models import ApiKey
from accounts.session_store import session_digest
from accounts.views._common import _htmx_redirect, _is_htmx
from config.db import rls
from config.errors import ApplicationError


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


@rls.own_transactions("POST")  # a base URL's host is looked up (config.outbound), perhaps slowly: no transaction held across it
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
    with rls.atomic_as(request.user.pk):  # a POST holds no request transaction (own_transactions)
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


@login_required
@require_GET
def sessions(request):
    context = {"sessions": selectors.user_session_list(user=request.user), "current_digest": session_digest(request.session)}
    return render(request, "accounts/settings/sessions.html", context)


@login_required
@require_POST
def session_revoke(request, session_id):
    user_session = selectors.user_session_get(user=request.user, user_session_id=session_id)
    current = user_session.session_key_digest == session_digest(request.session)
    services.user_session_revoke(user=request.user, user_session=user_session)
    if current:
        logout(request)
        messages.info(request, "You signed out of this session.")
        return _htmx_redirect(reverse("accounts:login")) if _is_htmx(request) else redirect("accounts:login")
    if _is_htmx(request):
        return HttpResponse("")
    messages.success(request, "Session signed out.")
    return redirect("settings:sessions")
