"""Account writes. Each runs in a transaction on the current alias and keeps the
row-level security context right (a new user's rows are written under their own id)."""
from __future__ import annotations

import hashlib
import re
import secrets
from datetime import datetime, timedelta

import user_agents
from django.conf import settings
from django.contrib.auth import password_validation
from django.contrib.sessions.backends.base import SessionBase
from django.core import signing
from django.core.cache import cache
from django.core.mail import send_mail
from django.db import IntegrityError, connections
from django.utils import timezone
from django.utils.crypto import get_random_string
from django.utils.module_loading import import_string
from django.utils.text import slugify

from accounts.errors import (
    EmailTaken,
    InvalidScopes,
    InvitationInvalid,
    LoginThrottled,
    MalformedProviderKey,
    NotAllowed,
    OrganizationRuleBroken,
)
from accounts.models import (
    ApiKey,
    Integration,
    Invitation,
    Membership,
    Organization,
    Preferences,
    ProviderCredential,
    User,
    UserSession,
)
from config.crypto import secret_encrypt, secret_mask, secret_rotate
from config.errors import ApplicationError
from config.db import rls

API_KEY_PREFIX = "ck_"
INVITATION_LIFETIME = timedelta(days=7)
EMAIL_VERIFICATION_MAX_AGE = 3 * 24 * 3600
LOGIN_FAILURE_LIMIT_EMAIL = 5
LOGIN_FAILURE_LIMIT_IP = 20
LOGIN_FAILURE_WINDOW = 15 * 60
ACTIVITY_WRITE_INTERVAL = 60  # seconds: last_used_at / last_activity_at are written at most this often


def _sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


# --- Users ---------------------------------------------------------------------

def user_create(*, email: str, password: str | None, **fields) -> User:
    """A user, their preferences and personal organization, written under their own context.

    Refuses a taken email (EmailTaken) and, when a password is given, a weak one
    (django ValidationError with the validators' sentences). Joins any organization
    whose auto-join domain matches the email.
    """
    email = User.objects.normalize_email(email)
    user = User(email=email, **fields)
    if password is not None:
        password_validation.validate_password(password, user)
    user.set_password(password)
    if password is None:
        user.set_unusable_password()
    if _email_registered(email):
        raise EmailTaken()
    try:
        with rls.atomic():
            rls.context_set(user_id=user.pk)  # the row being inserted is the context's own
            user.save(force_insert=True)
            Preferences.objects.create(user=user)
            _organization_create(user=user, name=f"{user.get_short_name()}'s workspace", is_personal=True)
            _auto_join(user)
    except IntegrityError as exc:
        if "email" in str(exc):
            raise EmailTaken() from exc
        raise
    return user


def _email_registered(email: str) -> bool:
    from accounts.backends import user_id_for_login

    return user_id_for_login(email) is not None


def _auto_join(user: User) -> None:
    """Join the organizations that admit the user's email domain (they cannot see them yet)."""
    with connections[rls.current_alias()].cursor() as cur:
        cur.execute("SELECT unnest(accounts_auto_join_organizations())")
        organization_ids = [row[0] for row in cur.fetchall()]
    for organization_id in organization_ids:
        Membership.objects.create(organization_id=organization_id, user=user, role=Membership.Role.MEMBER)
    rls.context_set_for_user(user)


def user_update(*, user: User, **fields) -> User:
    allowed = {"first_name", "last_name", "display_name", "avatar_url", "timezone", "locale"}
    unknown = set(fields) - allowed
    if unknown:
        raise ValueError(f"Not editable: {', '.join(sorted(unknown))}")
    for name, value in fields.items():
        setattr(user, name, value)
    user.full_clean(exclude=["password", "email"])
    with rls.atomic():
        user.save(update_fields=[*fields, "updated_at"])
    return user


def preferences_update(*, user: User, **fields) -> Preferences:
    preferences, _ = Preferences.objects.get_or_create(user=user)
    for name, value in fields.items():
        setattr(preferences, name, value)
    preferences.full_clean(exclude=["user"])
    with rls.atomic():
        preferences.save(update_fields=[*fields, "updated_at"])
    return preferences


def user_deactivate(*, user: User) -> User:
    """Staff action: the user can no longer sign in; their API keys stop working."""
    with rls.atomic():
        user.is_active = False
        user.save(update_fields=["is_active", "updated_at"])
        ApiKey.objects.filter(user=user, is_active=True).update(is_active=False, revoked_at=timezone.now())
    return user


# --- Email verification ----------------------------------------------------------

def email_verification_token(*, user: User) -> str:
    return signing.dumps({"u": str(user.pk), "e": user.email}, salt="accounts.email-verify")


def email_verification_send(*, user: User, base_url: str) -> None:
    token = email_verification_token(user=user)
    send_mail(
        "Confirm your email for Confab",
        f"Confirm your email address by opening this link:\n\n{base_url}/accounts/verify-email/{token}/\n\nThe link works for 3 days.",
        settings.DEFAULT_FROM_EMAIL,
        [user.email],
    )


def email_verify(*, token: str) -> User:
    """Mark the email verified; refuses expired, tampered or outdated links."""
    try:
        data = signing.loads(token, salt="accounts.email-verify", max_age=EMAIL_VERIFICATION_MAX_AGE)
    except signing.SignatureExpired as exc:
        raise InvitationInvalid("This verification link has expired. Ask for a new one from your profile.") from exc
    except signing.BadSignature as exc:
        raise InvitationInvalid("This verification link is not valid.") from exc
    with rls.atomic():
        rls.context_set(user_id=data["u"])
        user = User.objects.filter(pk=data["u"], email=data["e"]).first()
        if user is None:
            raise InvitationInvalid("This verification link is for an email address that has since changed.")
        user.email_verified = True
        user.save(update_fields=["email_verified", "updated_at"])
    return user


# --- Login throttling ------------------------------------------------------------

def _throttle_keys(email: str, ip: str | None) -> list[tuple[str, int]]:
    keys = [(f"login-fail:email:{_sha256(User.objects.normalize_email(email))}", LOGIN_FAILURE_LIMIT_EMAIL)]
    if ip:
        keys.append((f"login-fail:ip:{ip}", LOGIN_FAILURE_LIMIT_IP))
    return keys


def login_throttle_check(*, email: str, ip: str | None) -> None:
    """Refuse (LoginThrottled) while an email or IP has too many recent failures."""
    for key, limit in _throttle_keys(email or "", ip):
        if (cache.get(key) or 0) >= limit:
            ttl = cache.ttl(key) if hasattr(cache, "ttl") else LOGIN_FAILURE_WINDOW
            raise LoginThrottled(retry_after=int(ttl or LOGIN_FAILURE_WINDOW))


def login_failure_record(*, email: str, ip: str | None) -> None:
    for key, _ in _throttle_keys(email or "", ip):
        cache.add(key, 0, LOGIN_FAILURE_WINDOW)  # the window starts at the first failure
        cache.incr(key)


def login_failures_clear(*, email: str) -> None:
    cache.delete(_throttle_keys(email, None)[0][0])


# --- Sessions --------------------------------------------------------------------

def _client_ip(request) -> str | None:
    return request.META.get("REMOTE_ADDR") or None


def user_session_start(*, request, user: User) -> UserSession:
    """Record the browser session a sign-in opened (device, browser, OS from the user agent)."""
    ua_string = request.META.get("HTTP_USER_AGENT", "")[:1000]
    ua = user_agents.parse(ua_string)
    device = "mobile" if ua.is_mobile else "tablet" if ua.is_tablet else "bot" if ua.is_bot else "desktop" if ua.is_pc else "other"
    if not request.session.session_key:
        request.session.save()
    with rls.atomic():
        return UserSession.objects.create(
            user=user,
            session_key=request.session.session_key,
            ip_address=_client_ip(request),
            user_agent=ua_string,
            device_type=device,
            browser=f"{ua.browser.family} {ua.browser.version_string}".strip(),
            os=f"{ua.os.family} {ua.os.version_string}".strip(),
        )


def user_session_touch(*, request) -> None:
    """Last activity, written at most once a minute per session."""
    key = request.session.session_key
    if not key or not cache.add(f"session-touch:{_sha256(key)}", 1, ACTIVITY_WRITE_INTERVAL):
        return
    UserSession.objects.filter(session_key=key, ended_at__isnull=True).update(last_activity_at=timezone.now())


def user_session_end(*, session_key: str | None) -> None:
    if session_key:
        UserSession.objects.filter(session_key=session_key, ended_at__isnull=True).update(ended_at=timezone.now())


def user_session_revoke(*, user: User, user_session: UserSession) -> None:
    """End a session at once: its data is deleted, so its browser is signed out."""
    if user_session.user_id != user.pk:
        raise NotAllowed("That session is not yours.")
    engine = import_string(f"{settings.SESSION_ENGINE}.SessionStore")
    store: SessionBase = engine(session_key=user_session.session_key)
    store.delete()
    with rls.atomic():
        user_session.ended_at = user_session.ended_at or timezone.now()
        user_session.save(update_fields=["ended_at"])


# --- API keys --------------------------------------------------------------------

def api_key_create(*, user: User, name: str, scopes: list[str], expires_at: datetime | None = None) -> tuple[ApiKey, str]:
    """A new key; the returned secret is the only time it exists outside the caller."""
    name = (name or "").strip()
    if not name:
        raise ApplicationError("Give the key a name, so you can tell it apart later.", {"field": "name"})
    valid = set(ApiKey.Scope.values)
    unknown = sorted(set(scopes) - valid)
    if unknown:
        raise InvalidScopes(unknown)
    if not scopes:
        raise ApplicationError("Choose at least one scope.", {"field": "scopes"})
    if expires_at is not None and expires_at <= timezone.now():
        raise ApplicationError("The expiry date must be in the future.", {"field": "expires_at"})
    prefix = get_random_string(10, allowed_chars="abcdefghijkmnopqrstuvwxyz23456789")
    secret = f"{API_KEY_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
    with rls.atomic():
        key = ApiKey.objects.create(user=user, name=name[:100], prefix=prefix, key_hash=_sha256(secret),
                                    scopes=sorted(set(scopes)), expires_at=expires_at)
    _security_event("api_key_created", user_id=user.pk, detail={"api_key_id": str(key.pk), "name": key.name, "scopes": key.scopes})
    return key, secret


def api_key_revoke(*, user: User, api_key: ApiKey) -> ApiKey:
    if api_key.user_id != user.pk:
        raise NotAllowed("That API key is not yours.")
    with rls.atomic():
        api_key.is_active = False
        api_key.revoked_at = api_key.revoked_at or timezone.now()
        api_key.save(update_fields=["is_active", "revoked_at"])
    _security_event("api_key_revoked", user_id=user.pk, detail={"api_key_id": str(api_key.pk), "name": api_key.name})
    return api_key


def _security_event(event: str, *, user_id, detail: dict) -> None:
    from accounts.signals import security_event  # signals imports this module

    security_event.send(sender=None, event=event, user_id=user_id, ip=None, detail=detail)


API_KEY_PATTERN = re.compile(r"^ck_([a-z0-9]{10})_[A-Za-z0-9_\-]{20,}$")


class ApiKeyRejected(Exception):
    """Why a presented key does not sign anyone in (a sentence for the 401)."""


def api_key_authenticate(*, raw_key: str) -> tuple[User, ApiKey]:
    """The user and key behind `ck_...`, under that user's context; ApiKeyRejected otherwise."""
    match = API_KEY_PATTERN.match(raw_key or "")
    if not match:
        raise ApiKeyRejected("Malformed API key: expected 'Authorization: Bearer ck_...'.")
    with connections[rls.current_alias()].cursor() as cur:
        cur.execute("SELECT accounts_api_key_user(%s, %s)", [match.group(1), _sha256(raw_key)])
        user_id = cur.fetchone()[0]
    if user_id is None:
        raise ApiKeyRejected("Unknown API key.")
    rls.context_set(user_id=user_id)
    key = ApiKey.objects.select_related("user").get(prefix=match.group(1))
    problem = None
    if not key.is_active or key.revoked_at:
        problem = "This API key has been revoked."
    elif key.is_expired:
        problem = "This API key has expired."
    elif not (key.user.is_active and key.user.deleted_at is None):
        problem = "The account that owns this API key is deactivated."
    if problem:
        rls.context_clear()
        raise ApiKeyRejected(problem)
    rls.context_set_for_user(key.user)
    if cache.add(f"apikey-used:{key.pk}", 1, ACTIVITY_WRITE_INTERVAL):
        ApiKey.objects.filter(pk=key.pk).update(last_used_at=timezone.now())
    return key.user, key


# --- Provider credentials and integrations ----------------------------------------

PROVIDER_KEY_RULES = {
    ProviderCredential.Provider.ANTHROPIC: (re.compile(r"^sk-ant-[A-Za-z0-9_\-]{20,}$"), "Anthropic keys start with 'sk-ant-'."),
    ProviderCredential.Provider.GEMINI: (re.compile(r"^AIza[A-Za-z0-9_\-]{35}$"), "Gemini keys start with 'AIza' and are 39 characters long."),
    ProviderCredential.Provider.OPENAI: (re.compile(r"^sk-[A-Za-z0-9_\-]{20,}$"), "OpenAI keys start with 'sk-'."),
}


def provider_key_validate(*, provider: str, api_key: str, base_url: str = "") -> str:
    """The key, stripped; MalformedProviderKey with a sentence saying what is wrong."""
    key = (api_key or "").strip()
    if not key:
        raise MalformedProviderKey("Paste the API key from your provider's dashboard.")
    if any(c.isspace() for c in key) or not key.isascii() or not key.isprintable():
        raise MalformedProviderKey("The key contains spaces or characters that API keys never have; check the copy.")
    if len(key) > 400:
        raise MalformedProviderKey("The key is longer than any provider issues (400 characters at most).")
    rule = PROVIDER_KEY_RULES.get(provider)
    # A self-hosted OpenAI-compatible server (base_url) may use any token.
    if rule and not (provider == ProviderCredential.Provider.OPENAI and base_url) and not rule[0].match(key):
        raise MalformedProviderKey(f"That does not look like a {ProviderCredential.Provider(provider).label} key: {rule[1]}")
    return key


def provider_credential_set(*, user: User, provider: str, api_key: str = "", access_type: str = ProviderCredential.AccessType.USER_API_KEY,
                            base_url: str = "") -> ProviderCredential:
    """Add or replace the user's credential for a provider; the key is encrypted and masked."""
    if provider not in ProviderCredential.Provider.values:
        raise MalformedProviderKey(f"Unknown provider '{provider}'.")
    if access_type not in ProviderCredential.AccessType.values:
        raise MalformedProviderKey(f"Unknown access type '{access_type}'.")
    ciphertext = mask = ""
    if access_type == ProviderCredential.AccessType.USER_API_KEY:
        key = provider_key_validate(provider=provider, api_key=api_key, base_url=base_url)
        ciphertext, mask = secret_encrypt(key), secret_mask(key)
    with rls.atomic():
        credential, _ = ProviderCredential.objects.update_or_create(
            user=user, provider=provider,
            defaults={"access_type": access_type, "api_key_encrypted": ciphertext, "api_key_mask": mask,
                      "base_url": base_url, "is_active": True},
        )
    return credential


def provider_credential_delete(*, user: User, credential: ProviderCredential) -> None:
    if credential.user_id != user.pk:
        raise NotAllowed("That credential is not yours.")
    with rls.atomic():
        credential.delete()


def integration_connect(*, user: User, service: str, access_token: str, refresh_token: str = "", expires_at: datetime | None = None) -> Integration:
    service = (service or "").strip().lower()
    if not service or not access_token:
        raise MalformedProviderKey("An integration needs a service name and an access token.")
    with rls.atomic():
        integration, _ = Integration.objects.update_or_create(
            user=user, service=service,
            defaults={"access_token_encrypted": secret_encrypt(access_token),
                      "refresh_token_encrypted": secret_encrypt(refresh_token) if refresh_token else "",
                      "access_token_mask": secret_mask(access_token), "expires_at": expires_at, "is_connected": True},
        )
    return integration


def secrets_rotate() -> int:
    """Re-encrypt every stored secret under the newest key. Safe to rerun; returns values rewritten."""
    rewritten = 0
    with rls.privileged(reason="rotate encryption keys"):
        for credential in ProviderCredential.objects.exclude(api_key_encrypted="").select_for_update():
            credential.api_key_encrypted = secret_rotate(credential.api_key_encrypted)
            credential.save(update_fields=["api_key_encrypted"])
            rewritten += 1
        for integration in Integration.objects.select_for_update():
            fields = []
            for name in ("access_token_encrypted", "refresh_token_encrypted"):
                if getattr(integration, name):
                    setattr(integration, name, secret_rotate(getattr(integration, name)))
                    fields.append(name)
                    rewritten += 1
            if fields:
                integration.save(update_fields=fields)
    return rewritten


# --- Organizations -----------------------------------------------------------------

def _organization_slug(name: str) -> str:
    return f"{slugify(name)[:200] or 'org'}-{get_random_string(6).lower()}"


def organization_create(*, user: User, name: str, is_personal: bool = False) -> Organization:
    """A new organization owned by `user`; the context then includes it."""
    name = (name or "").strip()
    if not name:
        raise OrganizationRuleBroken("Give the organization a name.", {"field": "name"})
    with rls.atomic():
        return _organization_create(user=user, name=name, is_personal=is_personal)


def _organization_create(*, user: User, name: str, is_personal: bool) -> Organization:
    organization = Organization.objects.create(name=name[:200], slug=_organization_slug(name), is_personal=is_personal, created_by=user)
    rls.context_set(user_id=user.pk, organization_ids=[*rls.organization_ids_for(user), organization.pk])
    Membership.objects.create(organization=organization, user=user, role=Membership.Role.OWNER)
    return organization


def _membership_of(user: User, organization: Organization) -> Membership:
    membership = Membership.objects.filter(organization=organization, user=user).first()
    if membership is None:
        raise NotAllowed("You are not a member of this organization.")
    return membership


def _require_admin(user: User, organization: Organization) -> Membership:
    membership = _membership_of(user, organization)
    if membership.role not in (Membership.Role.OWNER, Membership.Role.ADMIN):
        raise NotAllowed("Only the organization's owners and admins can do that.")
    return membership


def organization_update(*, actor: User, organization: Organization, name: str | None = None, auto_join_domain: str | None = None) -> Organization:
    _require_admin(actor, organization)
    fields = []
    if name is not None:
        if not name.strip():
            raise OrganizationRuleBroken("Give the organization a name.", {"field": "name"})
        organization.name = name.strip()[:200]
        fields.append("name")
    if auto_join_domain is not None:
        domain = auto_join_domain.strip().lower().lstrip("@")
        if domain and not re.fullmatch(r"[a-z0-9-]+(\.[a-z0-9-]+)+", domain):
            raise OrganizationRuleBroken("Enter a domain like example.com (no @, no spaces).", {"field": "auto_join_domain"})
        organization.auto_join_domain = domain
        fields.append("auto_join_domain")
    with rls.atomic():
        organization.save(update_fields=[*fields, "updated_at"])
    return organization


def invitation_create(*, actor: User, organization: Organization, email: str, role: str = Membership.Role.MEMBER,
                      base_url: str = "") -> tuple[Invitation, str]:
    """Invite by email (sent now); returns the invitation and its token (only in the email)."""
    inviter = _require_admin(actor, organization)
    email = User.objects.normalize_email(email)
    if not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", email):
        raise InvitationInvalid("Enter a valid email address.", {"field": "email"})
    if role not in Membership.Role.values:
        raise InvitationInvalid(f"Unknown role '{role}'.", {"field": "role"})
    if role == Membership.Role.OWNER and inviter.role != Membership.Role.OWNER:
        raise NotAllowed("Only owners can invite owners.")
    if Membership.objects.filter(organization=organization, user__email=email).exists():
        raise InvitationInvalid(f"{email} is already a member.", {"field": "email"})
    token = secrets.token_urlsafe(32)
    with rls.atomic():
        Invitation.objects.filter(organization=organization, email=email, accepted_at__isnull=True, revoked_at__isnull=True).update(revoked_at=timezone.now())
        invitation = Invitation.objects.create(organization=organization, organization_name=organization.name, email=email,
                                               role=role, token_hash=_sha256(token),
                                               invited_by=actor, expires_at=timezone.now() + INVITATION_LIFETIME)
    send_mail(
        f"{actor.get_short_name()} invited you to {organization.name} on Confab",
        f"Join {organization.name} as {invitation.get_role_display().lower()}:\n\n{base_url}/accounts/invitations/{token}/\n\n"
        f"The invitation expires in {INVITATION_LIFETIME.days} days.",
        settings.DEFAULT_FROM_EMAIL,
        [email],
    )
    return invitation, token


def invitation_revoke(*, actor: User, invitation: Invitation) -> Invitation:
    _require_admin(actor, invitation.organization)
    with rls.atomic():
        invitation.revoked_at = invitation.revoked_at or timezone.now()
        invitation.save(update_fields=["revoked_at"])
    return invitation


def invitation_for_token(*, token: str) -> Invitation:
    """The invitation behind a token, if it is addressed to the context's user."""
    # No join to the organization: the invitee cannot see it (row-level security) until they join.
    invitation = Invitation.objects.filter(token_hash=_sha256(token or "")).first()
    if invitation is None:
        raise InvitationInvalid("This invitation does not exist or is addressed to another email address.", status_code=404)
    return invitation


def invitation_accept(*, user: User, token: str) -> Membership:
    invitation = invitation_for_token(token=token)
    if invitation.accepted_at:
        raise InvitationInvalid("This invitation has already been accepted.")
    if invitation.revoked_at:
        raise InvitationInvalid("This invitation was withdrawn. Ask for a new one.")
    if invitation.expires_at <= timezone.now():
        raise InvitationInvalid("This invitation has expired. Ask the organization for a new one.")
    if invitation.email != user.email:
        raise InvitationInvalid("This invitation is addressed to another email address.", status_code=404)
    with rls.atomic():
        membership = Membership.objects.create(organization_id=invitation.organization_id, user=user, role=invitation.role)
        invitation.accepted_at = timezone.now()
        invitation.save(update_fields=["accepted_at"])
        rls.context_set_for_user(user)
    return membership


def _owners(organization: Organization) -> int:
    return Membership.objects.filter(organization=organization, role=Membership.Role.OWNER).count()


def membership_role_change(*, actor: User, membership: Membership, role: str) -> Membership:
    actor_membership = _require_admin(actor, membership.organization)
    if role not in Membership.Role.values:
        raise OrganizationRuleBroken(f"Unknown role '{role}'.", {"field": "role"})
    if Membership.Role.OWNER in (role, membership.role) and actor_membership.role != Membership.Role.OWNER:
        raise NotAllowed("Only owners can make or unmake owners.")
    if membership.role == Membership.Role.OWNER and role != Membership.Role.OWNER and _owners(membership.organization) == 1:
        raise OrganizationRuleBroken("An organization needs at least one owner: make someone else owner first.")
    with rls.atomic():
        membership.role = role
        membership.save(update_fields=["role"])
    return membership


def membership_remove(*, actor: User, membership: Membership) -> None:
    if membership.user_id == actor.pk:
        organization_leave(user=actor, organization=membership.organization)
        return
    actor_membership = _require_admin(actor, membership.organization)
    if membership.role == Membership.Role.OWNER and actor_membership.role != Membership.Role.OWNER:
        raise NotAllowed("Only owners can remove an owner.")
    if membership.role == Membership.Role.OWNER and _owners(membership.organization) == 1:
        raise OrganizationRuleBroken("An organization needs at least one owner.")
    with rls.atomic():
        membership.delete()


def organization_leave(*, user: User, organization: Organization) -> None:
    membership = _membership_of(user, organization)
    if organization.is_personal:
        raise OrganizationRuleBroken("You cannot leave your personal workspace.")
    if membership.role == Membership.Role.OWNER and _owners(organization) == 1:
        raise OrganizationRuleBroken("You are this organization's last owner: make someone else owner before you leave.")
    with rls.atomic():
        membership.delete()
        rls.context_set_for_user(user)
