"""Users: sign-up, profile, preferences, deactivation, email verification."""

from __future__ import annotations

from django.contrib.auth import password_validation
from django.core import signing
from django.core.exceptions import ValidationError
from django.db import IntegrityError, ProgrammingError, connections, transaction
from django.utils import timezone

from accounts.catalog import model_catalog, preferred_model_problem
from accounts.errors import EmailTaken, InvitationInvalid
from accounts.models import ApiKey, Invitation, Membership, Preferences, ProviderCredential, User, validate_name
from accounts.services.changes import each_saved
from accounts.services.organizations import _organization_create
from accounts.services.sessions import user_sessions_end_all
from accounts.tasks import mail_send_on_commit
from config.db import rls

EMAIL_VERIFICATION_MAX_AGE = 3 * 24 * 3600


def user_create(*, email: str, password: str | None, **fields) -> User:
    """A user, their preferences and personal organization, written under their own context.

    Refuses a taken email (EmailTaken) and, when a password is given, a weak one
    (django ValidationError with the validators' sentences), and names with control
    characters. A user created with a verified email joins the organizations that admit
    its domain; others join when they verify it (email_verify).
    """
    email = User.objects.normalize_email_checked(email)
    user = User(email=email, **fields)
    _names_check(user)
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
            if user.email_verified:
                _auto_join(user)
    except IntegrityError as exc:
        if "email" in str(exc):
            raise EmailTaken() from exc
        raise
    return user


def _names_check(user: User) -> None:
    errors = {}
    for name in ("first_name", "last_name", "display_name"):
        try:
            validate_name(getattr(user, name))
        except ValidationError as exc:
            errors[name] = exc.messages
    if errors:
        raise ValidationError(errors)


def _email_registered(email: str) -> bool:
    from accounts.backends import user_id_for_login

    return user_id_for_login(email) is not None


def _auto_join(user: User) -> None:
    """Join the organizations that admit the user's verified email domain (they cannot see them yet);
    the database's function and join policy hold the rules (migration 0008)."""
    with connections[rls.current_alias()].cursor() as cur:
        cur.execute("SELECT unnest(accounts_auto_join_organizations())")
        organization_ids = [row[0] for row in cur.fetchall()]
    for organization_id in organization_ids:
        try:
            with transaction.atomic(using=rls.current_alias()):  # a savepoint: a refused join is skipped alone
                Membership.objects.create(organization_id=organization_id, user=user, role=Membership.Role.MEMBER)
        except ProgrammingError as exc:
            # The organization stopped admitting the domain since it was listed: its join policy
            # refuses the row (insufficient_privilege), as it would have a moment later.
            if not rls.refused_by_policy(exc):
                raise


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
    if {"preferred_provider", "preferred_model"} & fields.keys():
        # The pair as it will be stored, a field changed alone included.
        problem = preferred_model_problem(model_catalog(), preferences.preferred_provider, preferences.preferred_model)
        if problem:
            raise ValidationError(problem)
    with rls.atomic():
        preferences.save(update_fields=[*fields, "updated_at"])
    return preferences


def user_deactivate(*, user: User) -> User:
    """Staff action: the user can no longer sign in; their API keys stop working and every session
    ends (its data deleted, its record ended), so reactivating the account later lets none back in.
    The invitations they sent and nobody has taken are withdrawn, as when a member is removed
    (`invitations_sent_withdrawn`): a banned admin does not walk back in through another address."""
    with rls.atomic():
        now = timezone.now()
        user.is_active = False
        # The user's keys, then the user's row: the order a grant made with a key locks them (the
        # key as it authenticates or is held, then user_held_active); the other order deadlocked.
        list(ApiKey.objects.select_for_update().filter(user=user).order_by("pk").values_list("pk"))
        # The row's lock makes a grant in flight (user_held_active) commit before the statements
        # below read, or wait and see the account deactivated.
        user.save(update_fields=["is_active", "updated_at"])
        each_saved(ApiKey.objects.filter(user=user, is_active=True), is_active=False, revoked_at=now)
        each_saved(Invitation.objects.filter(invited_by=user, accepted_at__isnull=True, revoked_at__isnull=True), revoked_at=now)
    user_sessions_end_all(user=user)
    return user


def unproven_access_revoked(*, user: User) -> None:
    """A password reset of an account whose email was never confirmed: whoever signed up with the
    address need not be its owner, who has just proven the mailbox. What the account's earlier
    holder could have left goes: its API keys are revoked (a reset ends sessions only) and its
    provider keys switched off (a base URL of theirs would receive the owner's prompts)."""
    with rls.atomic_as(user.pk):
        now = timezone.now()
        each_saved(ApiKey.objects.filter(user=user, is_active=True), is_active=False, revoked_at=now)
        each_saved(ProviderCredential.objects.filter(user=user, is_active=True), is_active=False, updated_at=now)


def email_verification_token(*, user: User) -> str:
    return signing.dumps({"u": str(user.pk), "e": user.email}, salt="accounts.email-verify")


def email_verification_send(*, user: User, base_url: str) -> None:
    """Mail the verification link once the current transaction commits."""
    token = email_verification_token(user=user)
    mail_send_on_commit(
        subject="Confirm your email for Confab",
        body=f"Confirm your email address by opening this link:\n\n{base_url}/accounts/verify-email/{token}/\n\nThe link works for 3 days.",
        recipients=[user.email],
    )


def email_verify(*, token: str) -> User:
    """Mark the email verified and join the organizations that admit its domain;
    refuses expired, tampered or outdated links."""
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
        if not user.is_active or user.deleted_at is not None:  # else a deactivated account joined organizations by its domain
            raise InvitationInvalid("This verification link is for an account that is no longer active.")
        if user.email_verified:
            # Used already: joining by domain happens once, or a member removed from an
            # organization that admits their domain walked back in by opening the link again.
            return user
        user.email_verified = True
        user.save(update_fields=["email_verified", "updated_at"])
        _auto_join(user)
    return user
