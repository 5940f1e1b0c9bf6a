import re
import unicodedata
import uuid
from datetime import UTC
from decimal import Decimal

import idna
from django.contrib.auth.base_user import AbstractBaseUser, BaseUserManager
from django.contrib.auth.models import PermissionsMixin
from django.contrib.postgres.fields import ArrayField
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models.functions import Lower
from django.utils import timezone as django_timezone

# Right-to-left/left-to-right overrides, embeddings, isolates and marks (format characters, Cf).
BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def has_control_characters(value: str) -> bool:
    """Control characters (Cc: line breaks, tabs), Unicode's own line and paragraph separators
    (Zl, Zp: a second, forged line under a shared title) or text-direction marks, which make a
    line of text on a page say something else (U+202E shows "Invoice \u202efdp.exe" as "Invoice exe.pdf")."""
    return any(unicodedata.category(c) in ("Cc", "Zl", "Zp") or c in BIDI_CONTROLS for c in value or "")


# Letters that draw nothing although Unicode files them as letters or symbols: the Hangul fillers
# and the blank braille pattern, favourites for names that look empty.
BLANK_LETTERS = frozenset("\u115f\u1160\u3164\uffa0\u2800")


def shows_nothing(value: str) -> bool:
    """Text of only characters that draw nothing (zero-width spaces and joiners, the byte-order
    mark, spaces of every width, the fillers above, and marks with no letter to sit on: variation
    selectors, the grapheme joiner, combining accents): a name no one can see or click."""
    return bool(value) and all(c in BLANK_LETTERS or unicodedata.category(c) in NOTHING_DRAWN for c in value)


NOTHING_DRAWN = ("Cf", "Cc", "Zs", "Zl", "Zp", "Mn", "Me")  # the categories of characters that draw nothing alone


def expiry_storable(moment):
    """An expiry PostgreSQL stores and Python reads back: the last day of 9999 west of UTC is in
    the year 10000 in UTC, which Python's datetime cannot hold (every later read a 500)."""
    if moment is not None:
        try:
            moment.astimezone(UTC)
        except OverflowError:
            raise ValidationError("Choose an expiry date before the year 9999.", code="too_far") from None
    return moment


def validate_name(value: str) -> None:
    """Names reach mail headers and every page: no control characters (Cc), no bidi controls, and
    not only characters that draw nothing."""
    if has_control_characters(value):
        raise ValidationError(
            "Remove the control characters (line breaks, tabs, text-direction marks) from this name.", code="control_characters"
        )
    if shows_nothing(value):
        raise ValidationError("This name shows nothing: use letters or symbols that can be seen.", code="invisible")


# A BCP 47 language tag, roughly: "en", "fr-CA", "zh-Hant-TW"; "pt_BR" too, the POSIX spelling
# (chat's search reads either separator). ASCII only: nothing else belongs in a tag.
LANGUAGE_TAG = re.compile(r"[A-Za-z]{2,8}([-_][A-Za-z0-9]{1,8})*")


def validate_language_tag(value: str) -> None:
    """A locale or language is a tag (shown on pages, read by search): never free text that could
    carry control characters or text-direction marks."""
    if not LANGUAGE_TAG.fullmatch(value or ""):
        raise ValidationError("Enter a language tag such as en or fr-CA.", code="language_tag")


def email_domain_spelled(domain: str, *, ascii: bool = False) -> str | None:
    """The domain as mail is delivered to it, by IDNA 2008 (UTS 46 non-transitional processing): its
    one Unicode spelling, or with `ascii` its punycode one; None when it is no such domain. Never
    Python's "idna" codec (IDNA 2003), which maps ß to ss: straße.de and strasse.de are two domains
    with two owners."""
    try:
        spelled = idna.encode(domain, uts46=True)
        return spelled.decode("ascii") if ascii else idna.decode(spelled)
    except idna.IDNAError:
        return None


class UserManager(BaseUserManager):
    use_in_migrations = True

    @classmethod
    def normalize_email(cls, email):
        """Emails are the login and compare case-insensitively: stored lowercased, with a non-ASCII
        domain in its one IDNA spelling (email_domain_spelled: fullwidth letters mapped, soft hyphens
        and zero-width spaces dropped): `alice@ｅxample.com` is the mailbox `alice@example.com`,
        which mail reaches under either spelling, so it must not open a second account."""
        email = (email or "").strip()
        local, at, domain = email.rpartition("@")
        if at and domain and (not domain.isascii() or "xn--" in domain.lower()):
            # An ASCII `xn--` label is the same domain's punycode spelling: read back to the one
            # spelling too, so `alice@xn--bcher-kva.com` is `alice@bücher.com`. Spelled as typed,
            # not lowercased first: Python lowercases a final capital Σ to ς, another domain.
            spelled = email_domain_spelled(domain)
            if spelled is not None:
                return f"{local.lower()}@{spelled}"
        return email.lower()  # not a domain IDNA can spell: normalize_email_checked refuses it

    @classmethod
    def normalize_email_checked(cls, email) -> str:
        """normalize_email, refused as the email's error when it names no domain mail can reach
        (IDNA refuses it: a joiner in a word, a symbol) or when its one spelling no longer fits the
        column: a domain can lengthen (each "ﬃ" becomes three letters) after a form checked it."""
        email = cls.normalize_email(email)
        local, _, domain = email.rpartition("@")
        if '"' in local or "@" in local or has_control_characters(email):
            # A quoted local part may hold an "@" (`"x@acme.test@"@attacker.test`: mail goes to
            # attacker.test, a careless reader sees acme.test) or control characters.
            raise ValidationError({"email": ["Use a plain address, without quotes (name@example.com)."]})
        if (not domain.isascii() or "xn--" in domain) and email_domain_spelled(domain) is None:
            raise ValidationError({"email": ["Mail cannot be delivered to this address's domain: check how it is spelled."]})
        limit = User._meta.get_field("email").max_length
        if len(email) > limit:
            raise ValidationError(
                {"email": [f"This address is longer than {limit} characters once its domain is spelled out; use a shorter one."]}
            )
        return email

    def create_user(self, email, password=None, **extra_fields):
        if not email:
            raise ValueError("An email address is required.")
        user = self.model(email=self.normalize_email(email), **extra_fields)
        user.set_password(password)
        user.save(using=self._db)
        return user

    def create_superuser(self, email, password=None, **extra_fields):
        extra_fields.setdefault("role", User.Role.STAFF)
        extra_fields.setdefault("is_superuser", True)
        extra_fields.setdefault("email_verified", True)
        return self.create_user(email, password, **extra_fields)


class User(AbstractBaseUser, PermissionsMixin):
    class Role(models.TextChoices):
        MEMBER = "member", "Member"
        STAFF = "staff", "Staff"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    email = models.EmailField(unique=True)
    first_name = models.CharField(max_length=150, blank=True, validators=[validate_name])
    last_name = models.CharField(max_length=150, blank=True, validators=[validate_name])
    display_name = models.CharField(max_length=150, blank=True, validators=[validate_name])
    avatar_url = models.URLField(blank=True)
    timezone = models.CharField(max_length=64, default="UTC")
    locale = models.CharField(max_length=16, default="en", validators=[validate_language_tag])
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)
    email_verified = models.BooleanField(default=False)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=django_timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)
    deleted_at = models.DateTimeField(null=True, blank=True)
    metadata = models.JSONField(default=dict, blank=True)

    objects = UserManager()

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS = []

    class Meta:
        ordering = ["email"]
        constraints = [models.CheckConstraint(condition=models.Q(email=Lower("email")), name="accounts_user_email_lowercase")]

    def __str__(self):
        return self.email

    @property
    def is_staff(self) -> bool:
        return self.role == self.Role.STAFF

    def get_full_name(self) -> str:
        return " ".join(p for p in (self.first_name, self.last_name) if p) or self.display_name or self.email

    def get_short_name(self) -> str:
        return self.display_name or self.first_name or self.email


class Organization(models.Model):
    """The billing account. Every user gets a personal one at signup."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=200, validators=[validate_name])
    slug = models.SlugField(max_length=220, unique=True)
    is_personal = models.BooleanField(default=False)
    # Users signing up with an email at this domain join as members (e.g. "acme.com").
    auto_join_domain = models.CharField(max_length=253, blank=True, db_index=True)
    created_by = models.ForeignKey(User, on_delete=models.SET_NULL, null=True, related_name="+")
    created_at = models.DateTimeField(default=django_timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name


class Membership(models.Model):
    class Role(models.TextChoices):
        OWNER = "owner", "Owner"
        ADMIN = "admin", "Admin"
        MEMBER = "member", "Member"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)
    created_at = models.DateTimeField(default=django_timezone.now, editable=False)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["organization", "user"], name="accounts_membership_unique")]

    def __str__(self):
        return f"{self.user} in {self.organization} ({self.role})"


class Preferences(models.Model):
    class Theme(models.TextChoices):
        LIGHT = "light", "Light"
        DARK = "dark", "Dark"
        SYSTEM = "system", "System"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.OneToOneField(User, on_delete=models.CASCADE, related_name="preferences")
    preferred_provider = models.CharField(max_length=32, default="echo")
    preferred_model = models.CharField(max_length=100, default="echo-1")
    temperature = models.DecimalField(
        max_digits=3,
        decimal_places=2,
        default=Decimal("0.70"),
        validators=[MinValueValidator(Decimal("0")), MaxValueValidator(Decimal("2"))],
    )
    theme = models.CharField(max_length=8, choices=Theme.choices, default=Theme.SYSTEM)
    language = models.CharField(max_length=16, default="en", validators=[validate_language_tag])
    email_notifications = models.BooleanField(default=True)
    analytics_opt_out = models.BooleanField(default=False)
    default_persona = models.CharField(max_length=100, blank=True, validators=[validate_name])
    extra = models.JSONField(default=dict, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "preferences"

    def __str__(self):
        return f"Preferences of {self.user}"


class Invitation(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="invitations")
    # The name as it was when invited: the invitee cannot read the organization row until they join.
    organization_name = models.CharField(max_length=200, blank=True)
    email = models.EmailField()
    role = models.CharField(max_length=16, choices=Membership.Role.choices, default=Membership.Role.MEMBER)
    token_hash = models.CharField(max_length=64, unique=True)  # sha256 of the emailed token
    invited_by = models.ForeignKey(User, on_delete=models.SET_NULL, null=True, related_name="+")
    expires_at = models.DateTimeField()
    accepted_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=django_timezone.now, editable=False)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "email"],
                condition=models.Q(accepted_at__isnull=True, revoked_at__isnull=True),
                name="accounts_invitation_one_pending",
            )
        ]

    def __str__(self):
        return f"{self.email} to {self.organization}"

    @property
    def is_pending(self) -> bool:
        return self.accepted_at is None and self.revoked_at is None and self.expires_at > django_timezone.now()


class UserSession(models.Model):
    """A signed-in browser session, as the user sees it in settings."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="sessions")
    # The SHA-256 of the browser's session key (token_digest), never the key: it is a credential.
    session_key_digest = models.CharField(max_length=64, db_index=True)
    ip_address = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.TextField(blank=True)
    device_type = models.CharField(max_length=16, blank=True)
    browser = models.CharField(max_length=100, blank=True)
    os = models.CharField(max_length=100, blank=True)
    started_at = models.DateTimeField(default=django_timezone.now)
    last_activity_at = models.DateTimeField(default=django_timezone.now)
    ended_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-last_activity_at"]

    def __str__(self):
        return f"{self.user} on {self.browser or 'unknown browser'} ({self.os or 'unknown OS'})"


class ApiKey(models.Model):
    """`ck_<prefix>_<secret>`: shown once; only the prefix and a hash are kept."""

    class Scope(models.TextChoices):
        ACCOUNT_READ = "account:read", "Read account"
        ACCOUNT_WRITE = "account:write", "Change account"
        CHAT_READ = "chat:read", "Read conversations"
        CHAT_WRITE = "chat:write", "Send messages"
        USAGE_READ = "usage:read", "Read usage"
        BILLING_READ = "billing:read", "Read billing"
        BILLING_WRITE = "billing:write", "Change billing"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, unique=True)
    key_hash = models.CharField(max_length=64)
    scopes = ArrayField(models.CharField(max_length=32, choices=Scope.choices), default=list)
    expires_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    is_active = models.BooleanField(default=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=django_timezone.now, editable=False)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return f"{self.name} (ck_{self.prefix}_…)"

    @property
    def masked(self) -> str:
        return f"ck_{self.prefix}_…"

    @property
    def is_expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= django_timezone.now()


class ProviderCredential(models.Model):
    """A model provider's key (the seeds' ai_provider_configs), encrypted at rest."""

    class AccessType(models.TextChoices):
        USER_API_KEY = "user_api_key", "Your own API key"
        PRO_MANAGED = "pro_managed", "Managed by Confab (paid plans)"
        FREE_TIER = "free_tier", "Free tier"

    class Provider(models.TextChoices):
        OPENAI = "openai", "OpenAI-compatible"
        ANTHROPIC = "anthropic", "Anthropic"
        GEMINI = "gemini", "Google Gemini"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="provider_credentials")
    provider = models.CharField(max_length=32, choices=Provider.choices)
    access_type = models.CharField(max_length=16, choices=AccessType.choices, default=AccessType.USER_API_KEY)
    api_key_encrypted = models.TextField(blank=True)
    api_key_mask = models.CharField(max_length=32, blank=True)
    base_url = models.URLField(blank=True, help_text="For OpenAI-compatible servers (Ollama, vLLM, llama.cpp).")
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=django_timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["provider"]
        constraints = [models.UniqueConstraint(fields=["user", "provider"], name="accounts_providercredential_one_per_provider")]

    def __str__(self):
        return f"{self.get_provider_display()} ({self.api_key_mask or self.get_access_type_display()})"


class Integration(models.Model):
    """A connected outside service (the seeds' mcp_connections), tokens encrypted at rest."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="integrations")
    service = models.CharField(max_length=64)
    access_token_encrypted = models.TextField(blank=True)
    refresh_token_encrypted = models.TextField(blank=True)
    access_token_mask = models.CharField(max_length=32, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    is_connected = models.BooleanField(default=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=django_timezone.now, editable=False)

    class Meta:
        ordering = ["service"]
        constraints = [models.UniqueConstraint(fields=["user", "service"], name="accounts_integration_one_per_service")]

    def __str__(self):
        return f"{self.service} for {self.user}"
