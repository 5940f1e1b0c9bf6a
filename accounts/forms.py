"""Forms of the account pages. They parse and validate input only: views call the services."""

from __future__ import annotations

import zoneinfo
from contextlib import contextmanager
from datetime import UTC, datetime, time, timedelta
from urllib.parse import urlsplit

from django import forms
from django.conf import settings
from django.contrib.auth import authenticate, password_validation
from django.contrib.auth.forms import AuthenticationForm, PasswordResetForm
from django.core.exceptions import ValidationError
from django.template import loader

from accounts import services
from accounts.backends import user_id_for_login
from accounts.catalog import model_catalog, preferred_model_problem
from accounts.errors import LoginThrottled
from accounts.models import ApiKey, Membership, Preferences, ProviderCredential, User, expiry_storable, validate_language_tag, validate_name
from accounts.tasks import mail_send_on_commit
from config.db import rls
from config.errors import ApplicationError
from config.http import client_ip


def add_service_error(form: forms.Form, exc: Exception, *, field: str | None = None) -> None:
    """Put a service's refusal on the form field it is about (else on the form as a whole)."""
    if isinstance(exc, ApplicationError):
        name = exc.extra.get("field") or field
        form.add_error(name if name in form.fields else None, exc.message)
    elif isinstance(exc, ValidationError) and hasattr(exc, "error_dict"):
        for name, messages in exc.message_dict.items():
            form.add_error(name if name in form.fields else field, messages)
    elif isinstance(exc, ValidationError):
        form.add_error(field if field in form.fields else None, exc.messages)
    else:
        raise exc


@contextmanager
def rls_context_kept():
    """Restore the request's row-level security context after a block that switches it."""
    user_id = rls.context_get(using=rls.current_alias())
    try:
        yield
    finally:
        rls.context_set(user_id=user_id or None)


# --- Sign-up and sign-in --------------------------------------------------------------


class SignupForm(forms.Form):
    email = forms.EmailField(max_length=254, widget=forms.EmailInput(attrs={"autocomplete": "email", "autofocus": True}))
    display_name = forms.CharField(
        label="Display name",
        max_length=150,
        required=False,
        validators=[validate_name],
        widget=forms.TextInput(attrs={"autocomplete": "nickname"}),
        help_text="How Confab greets you. Optional.",
    )
    password = forms.CharField(
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
        help_text="At least 10 characters; not a common password, not only digits.",
    )
    password_confirm = forms.CharField(
        label="Confirm password", strip=False, widget=forms.PasswordInput(attrs={"autocomplete": "new-password"})
    )
    next = forms.CharField(required=False, widget=forms.HiddenInput)  # where an invitation link was headed

    def clean(self):
        # Every password problem at once: each validator's sentence and a mismatch together.
        data = super().clean()
        password = data.get("password")
        if password:
            try:
                password_validation.validate_password(
                    password, User(email=data.get("email") or "", display_name=data.get("display_name") or "")
                )
            except ValidationError as exc:
                self.add_error("password", exc)
        if password and data.get("password_confirm") and password != data["password_confirm"]:
            self.add_error("password_confirm", "The two passwords do not match.")
        return data


class LoginForm(AuthenticationForm):
    """Email and password; throttled per email and IP before any password is checked."""

    username = forms.EmailField(label="Email", max_length=254, widget=forms.EmailInput(attrs={"autocomplete": "email", "autofocus": True}))
    error_messages = {"invalid_login": "Email or password is incorrect.", "inactive": "This account is deactivated."}

    def clean(self):
        email = self.cleaned_data.get("username")
        password = self.cleaned_data.get("password")
        if email and password:
            try:
                services.login_throttle_check(email=email, ip=client_ip(self.request))
            except LoginThrottled as exc:
                raise ValidationError(exc.message, code="throttled") from exc
            self.user_cache = authenticate(self.request, email=email, password=password)
            if self.user_cache is None:
                raise self.get_invalid_login_error()
            self.confirm_login_allowed(self.user_cache)
        return self.cleaned_data


class AccountPasswordResetForm(PasswordResetForm):
    """Finds the user through the sign-in lookup: without a context the user table is empty."""

    email = forms.EmailField(label="Email", max_length=254, widget=forms.EmailInput(attrs={"autocomplete": "email", "autofocus": True}))

    def get_users(self, email):
        user_id = user_id_for_login(email)
        if user_id is None:
            return
        rls.context_set(user_id=user_id)
        user = User.objects.filter(pk=user_id, is_active=True, deleted_at__isnull=True).first()
        if user is not None and user.has_usable_password():
            yield user

    def save(self, **kwargs):
        if settings.SITE_URL:  # the link's host is the site's, not the Host the request came with
            origin = urlsplit(settings.SITE_URL)
            kwargs.update(domain_override=origin.netloc, use_https=origin.scheme == "https")
        with rls_context_kept():  # get_users switched to the user's context to read their row
            return super().save(**kwargs)

    def send_mail(self, subject_template_name, email_template_name, context, from_email, to_email, html_email_template_name=None):
        """Queued for the worker, as every other mail (retried there): sent over SMTP in the
        request, a known address answered as slowly as the mail server and an unknown one at once,
        which told anyone which addresses have an account, and a failure there was lost."""
        subject = "".join(loader.render_to_string(subject_template_name, context).splitlines())
        mail_send_on_commit(subject=subject, body=loader.render_to_string(email_template_name, context), recipients=[to_email])


# --- Settings ----------------------------------------------------------------------------


def _timezone_choices():
    return [(name, name) for name in sorted(zoneinfo.available_timezones())]


class ProfileForm(forms.Form):
    display_name = forms.CharField(label="Display name", max_length=150, required=False, validators=[validate_name])
    first_name = forms.CharField(label="First name", max_length=150, required=False, validators=[validate_name])
    last_name = forms.CharField(label="Last name", max_length=150, required=False, validators=[validate_name])
    avatar_url = forms.URLField(label="Avatar URL", required=False, assume_scheme="https")
    timezone = forms.ChoiceField(choices=_timezone_choices)
    locale = forms.CharField(max_length=16, validators=[validate_language_tag], help_text="A language tag such as en or fr-CA.")


class PreferencesForm(forms.ModelForm):
    """With a registered catalog, the provider and model are choices from it, and must belong together."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # No catalog (chat not installed, or not seeded yet): the fields stay free text.
        self.catalog = model_catalog()
        if self.catalog is not None:
            providers = dict.fromkeys(provider for provider, _, _ in self.catalog)
            models: dict[str, list[tuple[str, str]]] = {}
            for provider, model, name in self.catalog:
                models.setdefault(provider, []).append((model, name))
            self.fields["preferred_provider"] = forms.ChoiceField(label="Preferred provider", choices=[(p, p) for p in providers])
            self.fields["preferred_model"] = forms.ChoiceField(label="Preferred model", choices=list(models.items()))

    def clean(self):
        cleaned = super().clean()
        provider, model = cleaned.get("preferred_provider"), cleaned.get("preferred_model")
        if provider and model and (problem := preferred_model_problem(self.catalog, provider, model)):
            for name, sentence in problem.items():
                self.add_error(name, sentence)
        return cleaned

    class Meta:
        model = Preferences
        fields = [
            "theme",
            "preferred_provider",
            "preferred_model",
            "temperature",
            "language",
            "default_persona",
            "email_notifications",
            "analytics_opt_out",
        ]
        widgets = {
            "theme": forms.Select(attrs={"data-theme-preview": ""}),
            "temperature": forms.NumberInput(attrs={"step": "0.05", "min": "0", "max": "2"}),
        }
        labels = {"analytics_opt_out": "Opt out of product analytics"}


class ProviderCredentialForm(forms.Form):
    provider = forms.ChoiceField(choices=ProviderCredential.Provider.choices)
    access_type = forms.ChoiceField(
        label="Access type", choices=ProviderCredential.AccessType.choices, initial=ProviderCredential.AccessType.USER_API_KEY
    )
    # Never rendered back: a bad submission asks for the key again.
    api_key = forms.CharField(
        label="API key",
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off", "spellcheck": "false"}),
        help_text="Stored encrypted; only its last characters are ever shown again.",
    )
    base_url = forms.URLField(
        label="Base URL",
        max_length=ProviderCredential._meta.get_field("base_url").max_length,
        required=False,
        assume_scheme="https",
        help_text="Only for OpenAI-compatible servers (Ollama, vLLM, llama.cpp).",
    )


class ApiKeyCreateForm(forms.Form):
    name = forms.CharField(max_length=100, validators=[validate_name])
    scopes = forms.MultipleChoiceField(
        choices=ApiKey.Scope.choices, widget=forms.CheckboxSelectMultiple, error_messages={"required": "Choose at least one scope."}
    )
    expires_at = forms.DateField(
        label="Expires on",
        required=False,
        widget=forms.DateInput(attrs={"type": "date"}),
        help_text="Optional. The key stops working at the end of this day.",
    )

    def __init__(self, *args, user_timezone: str = "UTC", **kwargs):
        super().__init__(*args, **kwargs)
        self.user_timezone = user_timezone

    def clean_expires_at(self):
        day = self.cleaned_data.get("expires_at")
        if day is None:
            return None
        try:
            tz = zoneinfo.ZoneInfo(self.user_timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            tz = zoneinfo.ZoneInfo("UTC")
        try:
            next_day = datetime.combine(day + timedelta(days=1), time(0), tzinfo=tz)
        except OverflowError:  # 31 December 9999 has no next day
            return expiry_storable(datetime.combine(day, time(23, 59, 59), tzinfo=tz))
        # The second before the next day starts, counted in UTC: where the day's last hour happens
        # twice (Cairo's summer time ends at midnight), its first 23:59:59 came an hour early.
        return expiry_storable(next_day.astimezone(UTC) - timedelta(seconds=1))


class OrganizationCreateForm(forms.Form):
    name = forms.CharField(label="Organization name", max_length=200, validators=[validate_name])


class OrganizationUpdateForm(forms.Form):
    name = forms.CharField(max_length=200, validators=[validate_name])
    auto_join_domain = forms.CharField(
        label="Auto-join domain",
        max_length=253,
        required=False,
        help_text="People who confirm an email at this domain join as members. It must be your own verified email's domain, "
        "not a public one like gmail.com.",
    )


class InvitationCreateForm(forms.Form):
    email = forms.EmailField(max_length=254)
    role = forms.ChoiceField(choices=Membership.Role.choices, initial=Membership.Role.MEMBER)


class MembershipRoleForm(forms.Form):
    role = forms.ChoiceField(choices=Membership.Role.choices)
