"""Staff admin for accounts. Every view runs in ConfabAdminSite's audited privileged context.

Secrets never reach a page: provider keys and integration tokens show their masks,
API keys their prefix, and no hash (password, API key, invitation token) or session key
is rendered. Writes with rules attached (creating users, deactivating them, revoking
keys and sessions, setting provider keys) go through accounts.services.
"""

from django import forms
from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.contrib.auth.forms import AdminPasswordChangeForm, AdminUserCreationForm
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Count, Q
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html

from accounts import services
from accounts.errors import MalformedProviderKey, OrganizationRuleBroken
from accounts.models import ApiKey, Integration, Invitation, Membership, Organization, Preferences, ProviderCredential, User, UserSession
from accounts.services.organizations import invitations_sent_withdrawn, personal_workspace_keeps_its_user
from config.admin import ChangedColumnsAdmin, ReadOnlyAdmin, StorableJSONForm
from config.outbound import base_url_refusal

# Django 6 assumes https for scheme-less URLs; say so now (merged with the admin's URL widget).
URL_FIELDS = {models.URLField: {"assume_scheme": "https"}}


# --- Users -----------------------------------------------------------------------


class UserCreationAdminForm(AdminUserCreationForm):
    class Meta:
        model = User
        fields = ("email", "display_name", "first_name", "last_name", "role", "email_verified")

    def clean_email(self):
        # Lowercased before the uniqueness check, as the service stores it.
        try:
            return User.objects.normalize_email_checked(self.cleaned_data["email"])
        except ValidationError as exc:
            raise ValidationError(exc.message_dict["email"]) from None


class UserChangeAdminForm(StorableJSONForm):
    class Meta:
        model = User
        fields = ["email"]  # the admin's fieldsets name the rest (never the password hash)

    def clean_email(self):
        if "email" not in self.changed_data:  # the stored address, kept as it is (it may predate today's spelling rules)
            return self.instance.email
        try:
            return User.objects.normalize_email_checked(self.cleaned_data["email"])
        except ValidationError as exc:
            raise ValidationError(exc.message_dict["email"]) from None


class UserPasswordAdminForm(AdminPasswordChangeForm):
    def save(self, commit=True):
        user = super().save(commit)
        # As a reset does: every session ends, so none (an intruder's, say) is still listed as signed in.
        services.user_sessions_end_all(user=user)
        return user


@admin.register(User)
class UserAdmin(DjangoUserAdmin):
    form = UserChangeAdminForm
    add_form = UserCreationAdminForm
    change_password_form = UserPasswordAdminForm
    list_display = ("email", "display_name", "role", "is_active", "email_verified", "created_at", "last_login")
    list_filter = ("role", "is_active", "email_verified", "is_superuser")
    search_fields = ("email", "display_name", "first_name", "last_name")
    ordering = ("email",)
    date_hierarchy = "created_at"
    readonly_fields = ("id", "password_status", "last_login", "created_at", "updated_at", "deleted_at")
    filter_horizontal = ()
    fieldsets = (
        (None, {"fields": ("id", "email", "password_status")}),
        ("Profile", {"fields": ("display_name", "first_name", "last_name", "avatar_url", "timezone", "locale")}),
        ("Access", {"fields": ("role", "is_active", "email_verified", "is_superuser")}),
        ("Dates", {"fields": ("last_login", "created_at", "updated_at", "deleted_at")}),
        ("Other", {"classes": ("collapse",), "fields": ("metadata",)}),
    )
    add_fieldsets = (
        (
            None,
            {
                "classes": ("wide",),
                "fields": (
                    "email",
                    "display_name",
                    "first_name",
                    "last_name",
                    "role",
                    "email_verified",
                    "usable_password",
                    "password1",
                    "password2",
                ),
            },
        ),
    )
    formfield_overrides = URL_FIELDS
    actions = ["deactivate_users"]

    @admin.display(description="Password")
    def password_status(self, user):
        # Never the hash, not even its summary: whether one is set, and where to set one.
        if not user.pk:
            return "-"
        state = "Set." if user.has_usable_password() else "Not set: this user cannot sign in with a password."
        url = reverse("admin:auth_user_password_change", args=[user.pk])
        return format_html('{} <a href="{}">Set a new password</a>', state, url)

    def has_delete_permission(self, request, obj=None):
        return False  # deactivate instead; erasure has its own path

    def save_model(self, request, obj, form, change):
        if change:
            if "email" in form.changed_data and "email_verified" not in form.changed_data and obj.email_verified:
                # A new address no one has confirmed: a typo fixed to a stranger's mailbox, or an
                # owner's moved to a company's domain, would otherwise pass as proven (auto-join).
                obj.email_verified = False
                self.message_user(request, f"{obj.email} is not confirmed yet: tick “email verified” to vouch for it.", messages.WARNING)
            super().save_model(request, obj, form, change)
            if "is_active" in form.changed_data and not obj.is_active:
                services.user_deactivate(user=obj)  # unticking "active" also revokes the keys
            return
        fields = {name: form.cleaned_data[name] for name in ("display_name", "first_name", "last_name", "role", "email_verified")}
        password = form.cleaned_data.get("password1") if form.cleaned_data.get("set_usable_password") else None
        created = services.user_create(email=form.cleaned_data["email"], password=password, **fields)
        # The admin logs and redirects to `obj`: make it the row the service wrote.
        obj.pk = created.pk
        obj.refresh_from_db()
        obj._state.adding = False

    @admin.action(description="Deactivate selected users", permissions=["change"])
    def deactivate_users(self, request, queryset):
        deactivated = 0
        for user in queryset:
            if user.pk == request.user.pk:
                self.message_user(request, "You cannot deactivate your own account here.", messages.WARNING)
                continue
            services.user_deactivate(user=user)
            deactivated += 1
        self.message_user(request, f"Deactivated {deactivated} user(s) and revoked their API keys.", messages.SUCCESS)


@admin.register(Preferences)
class PreferencesAdmin(admin.ModelAdmin):
    form = StorableJSONForm
    list_display = (
        "user",
        "preferred_provider",
        "preferred_model",
        "temperature",
        "theme",
        "language",
        "email_notifications",
        "analytics_opt_out",
        "updated_at",
    )
    list_filter = ("theme", "preferred_provider", "email_notifications", "analytics_opt_out")
    list_select_related = ("user",)
    search_fields = ("user__email", "preferred_model", "default_persona")
    ordering = ("user__email",)
    autocomplete_fields = ("user",)
    readonly_fields = ("updated_at",)


# --- Organizations ---------------------------------------------------------------


class MembershipFormSet(forms.BaseInlineFormSet):
    def clean(self):
        """An organization that has an owner keeps one: a form error, not the database's deferred
        check failing the save (a 500) when staff demote or remove its last owner."""
        super().clean()
        if any(self.errors):
            return
        owner = Membership.Role.OWNER
        had_owner = any(form.initial.get("role") == owner for form in self.initial_forms)
        kept = [form.cleaned_data for form in self.forms if form.cleaned_data and not form.cleaned_data.get("DELETE")]
        if had_owner and not any(data.get("role") == owner for data in kept):
            raise forms.ValidationError("An organization needs at least one owner: make another member owner first.")
        for form in self.initial_forms:
            data = form.cleaned_data
            if data.get("DELETE") or "user" in form.changed_data or ("role" in form.changed_data and data.get("role") != owner):
                # Removed, given to someone else or demoted: refused for a personal workspace's own user, as the services do.
                try:
                    personal_workspace_keeps_its_user(Membership(organization=self.instance, user_id=form.initial.get("user")))
                except OrganizationRuleBroken as exc:
                    raise forms.ValidationError(exc.message) from None

    def save(self, commit=True):
        """Removing or demoting someone here takes back their pending invitations, as the
        organization pages do (invitations_sent_withdrawn)."""
        for form in self.initial_forms:
            data = form.cleaned_data
            before = Membership(organization_id=self.instance.pk, user_id=form.initial.get("user"), role=form.initial.get("role"))
            if data.get("DELETE") or (data.get("user") is not None and data["user"].pk != before.user_id):
                invitations_sent_withdrawn(before)
            elif data.get("role") != before.role:
                invitations_sent_withdrawn(before, new_role=data.get("role"))
        return super().save(commit)


class MembershipInline(admin.TabularInline):
    model = Membership
    formset = MembershipFormSet
    fields = ("user", "role", "created_at")
    readonly_fields = ("created_at",)
    autocomplete_fields = ("user",)
    extra = 0


class OrganizationAdminForm(forms.ModelForm):
    def clean(self):
        cleaned = super().clean()
        domain = services.auto_join_domain_spelled(cleaned.get("auto_join_domain") or "")
        if domain and domain != self.instance.auto_join_domain:
            # Staff need not be at the domain, but webmail admits anyone for staff too.
            is_personal = cleaned.get("is_personal", self.instance.is_personal)
            problem = services.auto_join_domain_problem(Organization(is_personal=is_personal), domain)
            if problem:
                self.add_error("auto_join_domain", problem)
        if "auto_join_domain" in cleaned:
            cleaned["auto_join_domain"] = domain
        return cleaned


@admin.register(Organization)
class OrganizationAdmin(admin.ModelAdmin):
    form = OrganizationAdminForm
    list_display = ("name", "slug", "is_personal", "auto_join_domain", "member_count", "created_by", "created_at")
    list_filter = ("is_personal", "created_at")
    list_select_related = ("created_by",)
    search_fields = ("name", "slug", "auto_join_domain", "created_by__email")
    ordering = ("name",)
    date_hierarchy = "created_at"
    autocomplete_fields = ("created_by",)
    # A personal workspace is made with its user (user_create) and found by both: new conversations are billed to it.
    readonly_fields = ("id", "is_personal", "created_at", "updated_at")
    fields = ("id", "name", "slug", "is_personal", "auto_join_domain", "created_by", "created_at", "updated_at")
    inlines = [MembershipInline]

    def get_readonly_fields(self, request, obj=None):
        return (*self.readonly_fields, "created_by") if obj and obj.is_personal else self.readonly_fields

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(member_count=Count("memberships"))

    @admin.display(description="Members", ordering="member_count")
    def member_count(self, organization):
        return organization.member_count


class InvitationStatusFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "status"

    def lookups(self, request, model_admin):
        return [(s, s.capitalize()) for s in ("pending", "accepted", "revoked", "expired")]

    def queryset(self, request, queryset):
        open_ = Q(accepted_at__isnull=True, revoked_at__isnull=True)
        now = timezone.now()
        return {
            "pending": queryset.filter(open_, expires_at__gt=now),
            "accepted": queryset.filter(accepted_at__isnull=False),
            "revoked": queryset.filter(accepted_at__isnull=True, revoked_at__isnull=False),
            "expired": queryset.filter(open_, expires_at__lte=now),
        }.get(self.value(), queryset)


@admin.register(Invitation)
class InvitationAdmin(admin.ModelAdmin):
    list_display = ("email", "organization", "role", "status", "invited_by", "expires_at", "created_at")
    list_filter = (InvitationStatusFilter, "role")
    list_select_related = ("organization", "invited_by")
    search_fields = ("email", "organization__name", "invited_by__email")
    ordering = ("-created_at",)
    date_hierarchy = "created_at"
    # Invitations carry an emailed token: they are made (and revoked) by organization admins.
    fields = ("email", "organization", "role", "status", "invited_by", "expires_at", "accepted_at", "revoked_at", "created_at")
    readonly_fields = fields

    def has_add_permission(self, request):
        return False

    @admin.display(description="Status")
    def status(self, invitation):
        if invitation.accepted_at:
            return "accepted"
        if invitation.revoked_at:
            return "revoked"
        return "pending" if invitation.expires_at > timezone.now() else "expired"


# --- Sessions and API keys ---------------------------------------------------------


@admin.register(UserSession)
class UserSessionAdmin(ReadOnlyAdmin):
    list_display = ("user", "device_type", "browser", "os", "ip_address", "started_at", "last_activity_at", "ended_at")
    list_filter = ("device_type", ("ended_at", admin.EmptyFieldListFilter), "started_at")
    list_select_related = ("user",)
    search_fields = ("user__email", "ip_address", "browser", "os")
    ordering = ("-last_activity_at",)
    date_hierarchy = "started_at"
    # No session_key: it is the browser's credential.
    fields = ("user", "ip_address", "device_type", "browser", "os", "user_agent", "started_at", "last_activity_at", "ended_at")
    readonly_fields = fields
    actions = ["revoke_sessions"]

    def has_revoke_permission(self, request):
        return request.user.has_perm("accounts.change_usersession")

    @admin.action(description="Revoke selected sessions", permissions=["revoke"])
    def revoke_sessions(self, request, queryset):
        revoked = 0
        for user_session in queryset.filter(ended_at__isnull=True).select_related("user"):
            services.user_session_revoke(user=user_session.user, user_session=user_session)
            revoked += 1
        self.message_user(request, f"Revoked {revoked} session(s).", messages.SUCCESS)


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ("name", "masked", "user", "scope_list", "is_active", "expires_at", "last_used_at", "created_at")
    list_filter = ("is_active", ("revoked_at", admin.EmptyFieldListFilter), "created_at")
    list_select_related = ("user",)
    search_fields = ("name", "prefix", "user__email")
    ordering = ("-created_at",)
    date_hierarchy = "created_at"
    fields = ("name", "user", "prefix", "scopes", "expires_at", "is_active", "revoked_at", "last_used_at", "created_at")
    readonly_fields = ("user", "prefix", "scopes", "is_active", "revoked_at", "last_used_at", "created_at")
    actions = ["revoke_keys"]

    def has_add_permission(self, request):
        return False  # keys are created by their users, who alone see the secret

    def has_delete_permission(self, request, obj=None):
        return False  # revoke instead: the row stays for the record

    @admin.display(description="Key")
    def masked(self, api_key):
        return api_key.masked

    @admin.display(description="Scopes")
    def scope_list(self, api_key):
        return ", ".join(api_key.scopes)

    @admin.action(description="Revoke selected API keys", permissions=["change"])
    def revoke_keys(self, request, queryset):
        revoked = 0
        for api_key in queryset.filter(is_active=True).select_related("user"):
            services.api_key_revoke(user=api_key.user, api_key=api_key)
            revoked += 1
        self.message_user(request, f"Revoked {revoked} API key(s).", messages.SUCCESS)


# --- Provider credentials and integrations -------------------------------------------


class ProviderCredentialAdminForm(forms.ModelForm):
    replace_key = forms.CharField(
        label="Replace key",
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
        help_text="Write-only: the stored key is never shown. Leave empty to keep it.",
    )

    class Meta:
        model = ProviderCredential
        fields = ["user", "provider", "access_type", "is_active"]  # the admin's `fields` add base_url; never the ciphertext

    def clean(self):
        cleaned = super().clean()
        key = cleaned.get("replace_key", "")
        instance = self.instance
        provider = cleaned.get("provider") or instance.provider
        access_type = cleaned.get("access_type") or instance.access_type
        # The rule every other door applies when a base URL is saved (the service raised it from
        # save_model, a 500; a change of the URL alone skipped the service and stored it).
        if (base_url := cleaned.get("base_url")) and (refusal := base_url_refusal(base_url)):
            self.add_error("base_url", refusal)
        if key:
            try:
                cleaned["replace_key"] = services.provider_key_validate(
                    provider=provider, api_key=key, base_url=cleaned.get("base_url", "")
                )
            except MalformedProviderKey as exc:
                self.add_error("replace_key", str(exc))
        elif access_type == ProviderCredential.AccessType.USER_API_KEY and not instance.api_key_encrypted:
            self.add_error("replace_key", "This access type needs the user's API key.")
        return cleaned


@admin.register(ProviderCredential)
class ProviderCredentialAdmin(ChangedColumnsAdmin):
    form = ProviderCredentialAdminForm
    list_display = ("provider", "user", "access_type", "api_key_mask", "base_url", "is_active", "updated_at")
    list_filter = ("provider", "access_type", "is_active")
    list_select_related = ("user",)
    search_fields = ("user__email", "base_url")
    ordering = ("user__email", "provider")
    autocomplete_fields = ("user",)
    fields = ("user", "provider", "access_type", "api_key_mask", "replace_key", "base_url", "is_active", "created_at", "updated_at")
    readonly_fields = ("api_key_mask", "created_at", "updated_at")
    formfield_overrides = URL_FIELDS

    def get_readonly_fields(self, request, obj=None):
        # One credential per user and provider: a different pair is a different row.
        return (*self.readonly_fields, "user", "provider") if obj else self.readonly_fields

    def save_model(self, request, obj, form, change):
        key = form.cleaned_data.get("replace_key", "")
        key_changes = (
            key or not change or ("access_type" in form.changed_data and obj.access_type != ProviderCredential.AccessType.USER_API_KEY)
        )
        if not key_changes:
            super().save_model(request, obj, form, change)
            return
        credential = services.provider_credential_set(
            user=obj.user, provider=obj.provider, api_key=key, access_type=obj.access_type, base_url=obj.base_url
        )
        if not obj.is_active:
            credential.is_active = False
            credential.save(update_fields=["is_active", "updated_at"])
        obj.pk = credential.pk
        obj.refresh_from_db()
        obj._state.adding = False


@admin.register(Integration)
class IntegrationAdmin(ChangedColumnsAdmin):
    list_display = ("service", "user", "access_token_mask", "is_connected", "expires_at", "last_used_at", "created_at")
    list_filter = ("is_connected", "service")
    list_select_related = ("user",)
    search_fields = ("service", "user__email")
    ordering = ("user__email", "service")
    date_hierarchy = "created_at"
    fields = ("user", "service", "access_token_mask", "expires_at", "is_connected", "last_used_at", "created_at")
    readonly_fields = ("user", "service", "access_token_mask", "last_used_at", "created_at")

    def has_add_permission(self, request):
        return False  # tokens come from the user connecting the service
