"""The accounts API's shapes: `*In` parse a request body, `*Out` render a response.
Secrets never have an output field: an API key's secret appears once, in ApiKeyCreatedOut."""

import zoneinfo

from django.db import models
from rest_framework import serializers

from accounts.models import (
    ApiKey,
    Invitation,
    Membership,
    Organization,
    Preferences,
    ProviderCredential,
    User,
    UserSession,
    expiry_storable,
    validate_language_tag,
    validate_name,
)
from config.api.inputs import StrictBooleanField, StringField, ZonedDateTimeField
from config.text import json_clean

# --- Me and preferences ------------------------------------------------------------


class MeOut(serializers.ModelSerializer):
    class Meta:
        model = User
        fields = [
            "id",
            "email",
            "first_name",
            "last_name",
            "display_name",
            "avatar_url",
            "timezone",
            "locale",
            "role",
            "email_verified",
            "created_at",
        ]
        read_only_fields = ["id", "email", "role", "email_verified", "created_at"]


class MeIn(serializers.Serializer):
    first_name = StringField(max_length=150, required=False, allow_blank=True, validators=[validate_name])
    last_name = StringField(max_length=150, required=False, allow_blank=True, validators=[validate_name])
    display_name = StringField(max_length=150, required=False, allow_blank=True, validators=[validate_name])
    avatar_url = serializers.URLField(max_length=200, required=False, allow_blank=True)
    timezone = StringField(max_length=64, required=False, help_text="An IANA time zone, e.g. Europe/Paris.")
    locale = StringField(max_length=16, required=False, validators=[validate_language_tag], help_text="A language tag, e.g. en or fr-CA.")

    def validate_timezone(self, value):
        if value not in zoneinfo.available_timezones():
            raise serializers.ValidationError(f"Unknown time zone '{value}'; use an IANA name like Europe/Paris.")
        return value


class PreferencesSerializer(serializers.ModelSerializer):
    """Read and partial update: every field is optional on PATCH."""

    # Its text and flags as JSON strings and booleans only (config/api/inputs.py).
    serializer_field_mapping = {
        **serializers.ModelSerializer.serializer_field_mapping,
        models.CharField: StringField,
        models.BooleanField: StrictBooleanField,
    }

    class Meta:
        model = Preferences
        fields = [
            "preferred_provider",
            "preferred_model",
            "temperature",
            "theme",
            "language",
            "email_notifications",
            "analytics_opt_out",
            "default_persona",
            "extra",
            "updated_at",
        ]
        read_only_fields = ["updated_at"]
        extra_kwargs = {
            "temperature": {"help_text": "0.00 to 2.00."},
            "preferred_provider": {"help_text": "A provider of /api/v1/models, paired with `preferred_model`."},
            "preferred_model": {"help_text": "One of that provider's models in /api/v1/models."},
        }

    def validate_extra(self, value):
        if not isinstance(value, dict):
            raise serializers.ValidationError("Must be a JSON object.")
        if json_clean(value) != value:  # PostgreSQL would refuse it: a 500
            raise serializers.ValidationError("Text in it cannot contain NUL characters or unpaired surrogates (\\u0000, \\ud800).")
        return value


# --- Organizations -------------------------------------------------------------------


class OrganizationOut(serializers.ModelSerializer):
    role = serializers.ChoiceField(choices=Membership.Role.choices, read_only=True, help_text="Your role in it.")

    class Meta:
        model = Organization
        fields = ["id", "name", "slug", "is_personal", "auto_join_domain", "role", "created_at", "updated_at"]
        read_only_fields = fields


class OrganizationCreateIn(serializers.Serializer):
    name = StringField(max_length=200, validators=[validate_name])


class OrganizationUpdateIn(serializers.Serializer):
    name = StringField(max_length=200, required=False, validators=[validate_name])
    auto_join_domain = StringField(
        max_length=253,
        required=False,
        allow_blank=True,
        help_text="People who confirm an email at this domain join as members; blank turns it off. Only a verified owner "
        "or admin may set the domain of their own email, never a public or disposable one; not on a personal workspace.",
    )


class MemberUserOut(serializers.ModelSerializer):
    class Meta:
        model = User
        fields = ["id", "email", "first_name", "last_name", "display_name"]
        read_only_fields = fields


class MembershipOut(serializers.ModelSerializer):
    user = MemberUserOut(read_only=True)

    class Meta:
        model = Membership
        fields = ["id", "user", "role", "created_at"]
        read_only_fields = fields


class MembershipRoleIn(serializers.Serializer):
    role = serializers.ChoiceField(choices=Membership.Role.choices)


class InvitationOut(serializers.ModelSerializer):
    status = serializers.SerializerMethodField()

    class Meta:
        model = Invitation
        fields = ["id", "email", "role", "status", "invited_by", "expires_at", "accepted_at", "revoked_at", "created_at"]
        read_only_fields = fields

    def get_status(self, invitation) -> str:
        if invitation.accepted_at:
            return "accepted"
        if invitation.revoked_at:
            return "revoked"
        return "pending" if invitation.is_pending else "expired"


class InvitationCreateIn(serializers.Serializer):
    email = serializers.EmailField(max_length=Invitation._meta.get_field("email").max_length)
    role = serializers.ChoiceField(choices=Membership.Role.choices, default=Membership.Role.MEMBER)


class InvitationAcceptIn(serializers.Serializer):
    token = StringField(max_length=200, help_text="The token from the invitation email's link.")


# --- API keys ------------------------------------------------------------------------


class ApiKeyOut(serializers.ModelSerializer):
    scopes = serializers.ListField(child=serializers.ChoiceField(choices=ApiKey.Scope.choices), read_only=True)
    masked = serializers.CharField(read_only=True, help_text="The key's public part, e.g. `ck_abc…`; the secret is never shown again.")

    class Meta:
        model = ApiKey
        fields = ["id", "name", "prefix", "masked", "scopes", "expires_at", "last_used_at", "is_active", "revoked_at", "created_at"]
        read_only_fields = fields


class ApiKeyCreatedOut(ApiKeyOut):
    key = serializers.CharField(
        read_only=True, help_text="The secret: shown in this response only. Send it as `Authorization: Bearer <key>`."
    )

    class Meta(ApiKeyOut.Meta):
        fields = [*ApiKeyOut.Meta.fields, "key"]
        read_only_fields = fields


class ApiKeyCreateIn(serializers.Serializer):
    name = StringField(max_length=100, validators=[validate_name])
    scopes = serializers.ListField(child=serializers.ChoiceField(choices=ApiKey.Scope.choices), allow_empty=False, min_length=1)
    expires_at = ZonedDateTimeField(required=False, allow_null=True, default=None, validators=[expiry_storable])


# --- Provider credentials ---------------------------------------------------------------


class ProviderCredentialOut(serializers.ModelSerializer):
    # Text, not a URL field: blank (the provider's own endpoint) is not a URI, and the schema must say so.
    base_url = serializers.CharField(
        read_only=True, help_text="For OpenAI-compatible servers (Ollama, vLLM, llama.cpp); blank for the provider's own endpoint."
    )

    class Meta:
        model = ProviderCredential
        fields = ["id", "provider", "access_type", "api_key_mask", "base_url", "is_active", "created_at", "updated_at"]
        read_only_fields = fields


class ProviderCredentialIn(serializers.Serializer):
    provider = serializers.ChoiceField(choices=ProviderCredential.Provider.choices)
    access_type = serializers.ChoiceField(choices=ProviderCredential.AccessType.choices, default=ProviderCredential.AccessType.USER_API_KEY)
    # Checked by the service, which says what is wrong without echoing the key.
    api_key = StringField(
        write_only=True,
        required=False,
        allow_blank=True,
        trim_whitespace=False,
        default="",
        help_text="Required for `user_api_key`; stored encrypted, never returned.",
    )
    base_url = serializers.URLField(
        max_length=ProviderCredential._meta.get_field("base_url").max_length,
        required=False,
        allow_blank=True,
        default="",
        help_text="For OpenAI-compatible servers (Ollama, vLLM, llama.cpp).",
    )


# --- Sessions -----------------------------------------------------------------------------


class UserSessionOut(serializers.ModelSerializer):
    current = serializers.SerializerMethodField(help_text="True for the session making this request.")

    class Meta:
        model = UserSession
        fields = ["id", "current", "ip_address", "user_agent", "device_type", "browser", "os", "started_at", "last_activity_at", "ended_at"]
        read_only_fields = fields

    def get_current(self, user_session) -> bool:
        current_digest = self.context.get("session_key_digest")
        return bool(current_digest) and user_session.session_key_digest == current_digest
