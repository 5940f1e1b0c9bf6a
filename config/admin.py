"""The admin site: staff work through the audited privileged context."""

from datetime import date
from functools import wraps

from django import forms
from django.contrib import admin
from django.contrib.admin.views.main import ERROR_FLAG
from django.forms.fields import InvalidJSONInput
from django.http import HttpResponseRedirect

from config.api.parsers import MAX_DEPTH, json_nested_deeper_than
from config.db import rls
from config.text import json_storable


class BoundedJSONFormField(forms.JSONField):
    """Django's, refusing JSON nested deeper than the API takes: its parser recurses, and a few
    thousand levels raise RecursionError, which Django's field does not catch (a 500)."""

    def _too_deep(self, value) -> bool:
        return isinstance(value, str) and json_nested_deeper_than(value, MAX_DEPTH)

    def to_python(self, value):
        if self._too_deep(value):
            raise forms.ValidationError(f"Enter JSON nested at most {MAX_DEPTH} levels deep.", code="too_deep")
        return super().to_python(value)

    def bound_data(self, data, initial):
        return InvalidJSONInput(data) if self._too_deep(data) else super().bound_data(data, initial)


class StorableJSONForm(forms.ModelForm):
    """An admin change form whose JSON fields refuse what PostgreSQL's jsonb cannot store (NaN,
    Infinity, a NUL character or a lone surrogate) and JSON nested too deep to parse: a form
    error, not a 500 at save."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for field in self.fields.values():
            if type(field) is forms.JSONField:
                field.__class__ = BoundedJSONFormField  # the same field, its parsing bounded

    def clean(self):
        cleaned = super().clean()
        for name, field in self.fields.items():
            if isinstance(field, forms.JSONField) and name in cleaned and not json_storable(cleaned[name]):
                self.add_error(name, "Enter JSON the database can store: no NaN or Infinity, no NUL character.")
        return cleaned


class ConfabAdminSite(admin.AdminSite):
    site_header = "Confab administration"
    site_title = "Confab admin"
    index_title = "Run the business"

    def admin_view(self, view, cacheable=False):
        guarded = super().admin_view(view, cacheable)

        @wraps(guarded)
        def privileged_view(request, *args, **kwargs):
            if not (request.user.is_active and request.user.is_staff):
                return guarded(request, *args, **kwargs)
            if _drilldown_past_the_last_year(request):
                # Django computes the drill-down's end (the next year, month or day) outside its own
                # check and raises: answered as it answers any lookup it cannot take.
                return HttpResponseRedirect(f"{request.path}?{ERROR_FLAG}=1")
            with rls.privileged(reason=f"admin {request.method} {request.path} by {request.user.pk}"):
                response = guarded(request, *args, **kwargs)
                if hasattr(response, "render") and not response.is_rendered:
                    response.render()  # templates query lazily: render inside the context
                return response

        return privileged_view

    def password_change(self, request, extra_context=None):
        """Django's own page; on success every other session of the staff member ends with its
        record (it no longer matched the password, but stayed listed as signed in)."""
        from accounts.models import UserSession  # accounts' admin imports this module
        from accounts.services import user_sessions_end_all
        from accounts.session_store import session_digest

        before = session_digest(request.session)
        response = super().password_change(request, extra_context)
        if request.method == "POST" and response.status_code == 302:
            # Django gave this session a new key (update_session_auth_hash): its record follows it.
            kept = session_digest(request.session)
            # In the request's own transaction, which holds this record (its activity was written there).
            UserSession.objects.using(rls.APP_ALIAS).filter(
                user_id=request.user.pk, session_key_digest=before, ended_at__isnull=True
            ).update(session_key_digest=kept)
            with rls.privileged(reason=f"admin password change by {request.user.pk}: end the other sessions"):
                # Both digests kept: this transaction does not see the request's (uncommitted) changes.
                user_sessions_end_all(user=request.user, keep=(before, kept))
        return response


def _drilldown_past_the_last_year(request) -> bool:
    """A date drill-down (`<field>__year=`) in the last year a date holds, or past it. Every such
    parameter is checked: which one is the date hierarchy's is the model admin's to say."""
    for name, value in request.GET.items():
        if name.endswith("__year"):
            try:
                if int(value) >= date.max.year:
                    return True
            except ValueError:
                continue  # Django refuses it itself
    return False


def changed_columns(obj, form) -> list[str]:
    """The model fields an admin form changed, with the row's auto_now stamps: what an edit
    saves. Saving every column would write back the page's copy of the ones it did not show or
    change, over what another writer stored since it was read (a secret re-encrypted by
    rotate_encryption_keys meanwhile, left under a key about to be retired)."""
    concrete = {field.name: field for field in obj._meta.concrete_fields}
    stamps = [name for name, field in concrete.items() if getattr(field, "auto_now", False)]
    return [name for name in form.changed_data if name in concrete and name not in stamps] + stamps


class ChangedColumnsAdmin(admin.ModelAdmin):
    """An edit saves only the columns its form changed (changed_columns)."""

    def save_model(self, request, obj, form, change):
        if change:
            obj.save(update_fields=changed_columns(obj, form))
        else:
            super().save_model(request, obj, form, change)


class ReadOnlyAdmin(admin.ModelAdmin):
    """Facts written by the product and its workers (ledgers, logs, sessions): staff look, never edit."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
