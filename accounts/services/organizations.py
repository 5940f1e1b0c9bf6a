"""Organizations, invitations and memberships."""

from __future__ import annotations

import re
import secrets
from datetime import timedelta

from disposable_email_domains import blocklist as DISPOSABLE_EMAIL_DOMAINS
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connections, transaction
from django.db.models import Q
from django.utils import timezone
from django.utils.crypto import get_random_string
from django.utils.text import slugify

from accounts.errors import InvitationInvalid, NotAllowed, OrganizationRuleBroken
from accounts.models import Invitation, Membership, Organization, User, email_domain_spelled, validate_name
from accounts.services.changes import each_saved
from accounts.services.throttling import invitation_throttle
from accounts.tasks import mail_send_on_commit
from config.crypto import token_digest
from config.db import rls

INVITATION_LIFETIME = timedelta(days=7)

# Anyone can have an address at these: a domain there proves no tie to an organization.
PUBLIC_EMAIL_DOMAINS = frozenset(
    {
        "gmail.com", "googlemail.com", "outlook.com", "hotmail.com", "live.com", "msn.com", "yahoo.com", "ymail.com",
        "rocketmail.com", "icloud.com", "me.com", "mac.com", "aol.com", "proton.me", "protonmail.com", "pm.me",
        "tutanota.com", "tuta.io", "fastmail.com", "zoho.com", "mail.com", "email.com", "gmx.com", "gmx.net", "web.de",
        "t-online.de", "freenet.de", "mail.ru", "inbox.ru", "list.ru", "bk.ru", "rambler.ru", "yandex.com", "ya.ru",
        "qq.com", "163.com", "126.com", "sina.com", "naver.com", "daum.net", "hanmail.net", "rediffmail.com",
        "libero.it", "orange.fr", "free.fr", "laposte.net", "wp.pl", "o2.pl", "seznam.cz", "hey.com",
    }
)  # fmt: skip
# Providers with one public domain per country (gmx.de, yahoo.co.uk, hotmail.fr, yandex.ru, ...).
PUBLIC_EMAIL_BRANDS = frozenset({"gmail", "outlook", "hotmail", "live", "yahoo", "gmx", "yandex", "aol", "tempmail", "temp-mail"})


def _organization_slug(name: str) -> str:
    return f"{slugify(name)[:200] or 'org'}-{get_random_string(6).lower()}"


def _organization_name(name: str | None) -> str:
    name = (name or "").strip()
    if not name:
        raise OrganizationRuleBroken("Give the organization a name.", {"field": "name"})
    try:
        validate_name(name)
    except ValidationError as exc:
        raise OrganizationRuleBroken(exc.messages[0], {"field": "name"}) from exc
    return name[:200]


def organization_create(*, user: User, name: str, is_personal: bool = False) -> Organization:
    """A new organization owned by `user`; the context then includes it."""
    name = _organization_name(name)
    with rls.atomic():
        return _organization_create(user=user, name=name, is_personal=is_personal)


def _organization_create(*, user: User, name: str, is_personal: bool) -> Organization:
    organization = Organization.objects.create(name=name[:200], slug=_organization_slug(name), is_personal=is_personal, created_by=user)
    Membership.objects.create(organization=organization, user=user, role=Membership.Role.OWNER)
    return organization


ADMIN_ROLES = (Membership.Role.OWNER, Membership.Role.ADMIN)


def _membership_of(user: User, organization: Organization, *, lock: bool = False, target: Membership | None = None) -> Membership:
    """The user's membership; with `lock` (inside the caller's transaction) held to its end, so a
    role that allowed the change cannot be taken away before the change commits. The owners'
    rows are locked with it, and the `target` membership the change is about, in one statement
    and in one order, as _another_owner_remains locks them: two owners or admins acting on each
    other queue instead of deadlocking."""
    if lock:
        rows = Q(organization=organization, role=Membership.Role.OWNER) | Q(organization=organization, user=user)
        if target is not None:
            rows |= Q(pk=target.pk)
        list(Membership.objects.select_for_update().filter(rows).order_by("pk").values_list("pk"))
    membership = Membership.objects.filter(organization=organization, user=user).first()
    if membership is None:
        raise NotAllowed("You are not a member of this organization.")
    return membership


def user_held_active(user_id) -> None:
    """Hold the user's row to the caller's transaction and refuse an account deactivated: a grant
    (an API key, an invitation, a sign-in) and user_deactivate, which updates the row first, then
    queue, so the deactivation revokes what came before it and what comes after sees it."""
    if not User.objects.select_for_update(no_key=True).filter(pk=user_id, is_active=True).exists():
        raise NotAllowed("This account has been deactivated.")


def _require_admin(user: User, organization: Organization, *, lock: bool = False, target: Membership | None = None) -> Membership:
    membership = _membership_of(user, organization, lock=lock, target=target)
    if membership.role not in ADMIN_ROLES:
        raise NotAllowed("Only the organization's owners and admins can do that.")
    return membership


def _email_domain_is_public(domain: str) -> bool:
    labels = domain.split(".")
    parents = {".".join(labels[i:]) for i in range(len(labels) - 1)}  # eu.mailinator.com counts as mailinator.com
    if parents & (PUBLIC_EMAIL_DOMAINS | DISPOSABLE_EMAIL_DOMAINS):
        return True
    country_domain = len(labels) == 2 or (len(labels) == 3 and labels[1] in ("co", "com"))
    return country_domain and labels[0] in PUBLIC_EMAIL_BRANDS


def auto_join_domain_spelled(value: str) -> str:
    """A domain as typed (`@Bücher.test`, `xn--bcher-kva.test`) in the one spelling emails are
    stored in (email_domain_spelled), so the database's join rule compares like with like; as
    typed, lowercased, when it is no domain (auto_join_domain_problem then says so)."""
    domain = value.strip().lstrip("@")
    # IDNA lowercases as domains do; Python's lower() makes a final capital sigma ς, another domain.
    return (email_domain_spelled(domain) or domain.lower()) if domain else ""


def auto_join_domain_problem(organization: Organization, domain: str) -> str | None:
    """Why no one may make `domain` (auto_join_domain_spelled) admit people to this organization
    (staff in admin included), or None: not a domain, a personal workspace, or webmail anyone can
    have an address at."""
    letters = email_domain_spelled(domain, ascii=True) or ""  # an internationalized domain by its punycode
    if not re.fullmatch(r"[a-z0-9-]+(\.[a-z0-9-]+)+", letters.lower()):
        return "Enter a domain like example.com (no @, no spaces)."
    if organization.is_personal:
        return "A personal workspace cannot admit people by domain: create an organization for your team."
    if _email_domain_is_public(domain):
        return f"{domain} is a public or disposable email domain: anyone can have an address there."
    return None


def _auto_join_domain_check(actor: User, organization: Organization, domain: str) -> None:
    """Proof on the organization's side: a verified owner or admin at that very domain, not webmail."""

    def refuse(message: str):
        raise OrganizationRuleBroken(message, {"field": "auto_join_domain"})

    if problem := auto_join_domain_problem(organization, domain):
        refuse(problem)
    if not actor.email_verified:
        refuse("Confirm your email address first: only a verified owner or admin at that domain can turn on auto-join.")
    own_domain = actor.email.rsplit("@", 1)[-1]
    if domain != own_domain:
        refuse(f"You can only set the domain of your own verified email address ({own_domain}).")


def organization_update(
    *, actor: User, organization: Organization, name: str | None = None, auto_join_domain: str | None = None
) -> Organization:
    """Rename, or set the auto-join domain (blank turns it off) under _auto_join_domain_check's rules."""
    with rls.atomic():
        # The role checked and held to the write: an admin demoted meanwhile acts first or not at all.
        _require_admin(actor, organization, lock=True)
        fields = []
        if name is not None:
            organization.name = _organization_name(name)
            fields.append("name")
            transaction.on_commit(lambda: _pending_invitations_renamed(organization), using=rls.current_alias())
        if auto_join_domain is not None:
            domain = auto_join_domain_spelled(auto_join_domain)
            if domain and domain != organization.auto_join_domain:
                _auto_join_domain_check(actor, organization, domain)
            organization.auto_join_domain = domain
            fields.append("auto_join_domain")
        organization.save(update_fields=[*fields, "updated_at"])
    return organization


def _pending_invitations_renamed(organization: Organization) -> None:
    """Pending invitations name the organization as it is now, not as it was when sent: an invitee
    accepted "Join Acme" into what had since become another name. The web role may update only an
    invitation's acceptance and withdrawal (accounts 0006), so this goes privileged, once the
    rename has committed."""
    with rls.privileged(reason="organization renamed: its pending invitations show the new name", audited=False):
        Invitation.objects.filter(organization_id=organization.pk, accepted_at__isnull=True, revoked_at__isnull=True).update(
            organization_name=organization.name
        )


def invitation_create(
    *, actor: User, organization: Organization, email: str, role: str = Membership.Role.MEMBER, base_url: str = ""
) -> tuple[Invitation, str]:
    """Invite by email (mailed once the transaction commits); returns the invitation and its token (only in the email)."""
    try:
        email = User.objects.normalize_email_checked(email)
    except ValidationError as exc:
        raise InvitationInvalid(exc.message_dict["email"][0], {"field": "email"}) from None
    if not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", email):
        raise InvitationInvalid("Enter a valid email address.", {"field": "email"})
    if role not in Membership.Role.values:
        raise InvitationInvalid(f"Unknown role '{role}'.", {"field": "role"})
    token = secrets.token_urlsafe(32)
    with rls.atomic():
        # The role checked and held to the insert: an admin demoted meanwhile invites first or not at all.
        inviter = _require_admin(actor, organization, lock=True)
        user_held_active(actor.pk)  # a deactivation's withdrawal of the inviter's invitations comes before or after this one
        if role == Membership.Role.OWNER and inviter.role != Membership.Role.OWNER:
            raise NotAllowed("Only owners can invite owners.")
        if Membership.objects.filter(organization=organization, user__email=email).exists():
            raise InvitationInvalid(f"{email} is already a member.", {"field": "email"})
        invitation_throttle(inviter=actor, organization_id=organization.pk, email=email)
        # One invitation pending per email: two at once (a double click) queue here, and the second replaces the first.
        with connections[rls.current_alias()].cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", [f"invitation:{organization.pk}:{email}"])
        each_saved(
            Invitation.objects.filter(organization=organization, email=email, accepted_at__isnull=True, revoked_at__isnull=True),
            revoked_at=timezone.now(),
        )
        invitation = Invitation.objects.create(
            organization=organization,
            organization_name=organization.name,
            email=email,
            role=role,
            token_hash=token_digest(token),
            invited_by=actor,
            expires_at=timezone.now() + INVITATION_LIFETIME,
        )
        mail_send_on_commit(
            subject=f"{actor.get_short_name()} invited you to {organization.name} on Confab",
            body=f"Join {organization.name} as {invitation.get_role_display().lower()}:\n\n{base_url}/accounts/invitations/{token}/\n\n"
            f"The invitation expires in {INVITATION_LIFETIME.days} days.",
            recipients=[email],
        )
    return invitation, token


def invitation_revoke(*, actor: User, invitation: Invitation) -> Invitation:
    with rls.atomic():
        _require_admin(actor, invitation.organization, lock=True)
        locked = Invitation.objects.select_for_update().filter(pk=invitation.pk).first()  # queues with its acceptance
        if locked is None or locked.accepted_at:
            raise InvitationInvalid("This invitation has already been accepted.")
        invitation.revoked_at = locked.revoked_at or timezone.now()
        invitation.save(update_fields=["revoked_at"])
    return invitation


def invitation_for_token(*, token: str) -> Invitation:
    """The invitation behind a token, if it is addressed to the context's user."""
    # No join to the organization: the invitee cannot see it (row-level security) until they join.
    invitation = Invitation.objects.filter(token_hash=token_digest(token or "")).first()
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
    already = InvitationInvalid("You are already a member of this organization.")
    if Membership.objects.filter(organization_id=invitation.organization_id, user=user).exists():
        raise already
    try:
        with rls.atomic():
            # Locked and read again: withdrawn since the checks above, the join would break the table's rule (a 500).
            locked = Invitation.objects.select_for_update().filter(pk=invitation.pk).first()
            if locked is None or locked.revoked_at:
                raise InvitationInvalid("This invitation was withdrawn. Ask for a new one.")
            if locked.accepted_at:
                raise InvitationInvalid("This invitation has already been accepted.")
            membership = Membership.objects.create(organization_id=invitation.organization_id, user=user, role=invitation.role)
            invitation.accepted_at = timezone.now()
            invitation.save(update_fields=["accepted_at"])
    except IntegrityError as exc:  # joined in a concurrent request since the check
        raise already from exc
    return membership


def _another_owner_remains(membership: Membership, message: str) -> None:
    """Refuse unless an owner other than `membership` remains; call inside the transaction that writes.

    The organization's owner rows are locked (in one order) before counting, so of two
    owners stepping down at once the second waits and then counts without the first. The
    database's deferred trigger (migration 0006) refuses a zero-owner commit either way.
    """
    owners = Membership.objects.select_for_update().filter(organization_id=membership.organization_id, role=Membership.Role.OWNER)
    if not [pk for pk in owners.order_by("pk").values_list("pk", flat=True) if pk != membership.pk]:
        raise OrganizationRuleBroken(message)


def _as_it_is_now(membership: Membership) -> Membership:
    """The membership read again under the caller's lock (_require_admin's `target`)."""
    current = Membership.objects.select_related("organization").filter(pk=membership.pk).first()
    if current is None:
        raise NotAllowed("That membership has changed; reload and try again.")
    return current


def invitations_sent_withdrawn(membership: Membership, *, new_role: str | None = None) -> None:
    """A member who loses a power (removed or leaving: `new_role` None; or demoted) takes back the
    pending invitations they sent that grant more than they now hold: else a rogue admin removed,
    or an owner demoted, walks back in through one sent to another address of theirs. Called
    wherever a membership is removed or demoted, the admin site's inline included."""
    if new_role is None or new_role not in ADMIN_ROLES:
        granting = None  # every invitation they sent
    elif membership.role == Membership.Role.OWNER and new_role != Membership.Role.OWNER:
        granting = [Membership.Role.OWNER]
    else:
        return
    pending = Invitation.objects.filter(
        organization_id=membership.organization_id, invited_by_id=membership.user_id, accepted_at__isnull=True, revoked_at__isnull=True
    )
    each_saved(pending if granting is None else pending.filter(role__in=granting), revoked_at=timezone.now())


def personal_workspace_keeps_its_user(membership: Membership) -> None:
    """Whoever else is let into a personal workspace, as owner even, cannot take it from the user
    it was made for (who cannot leave it either)."""
    organization = membership.organization
    if organization.is_personal and membership.user_id == organization.created_by_id:
        raise OrganizationRuleBroken("A personal workspace stays its own user's: they remain its owner.")


def membership_role_change(*, actor: User, membership: Membership, role: str) -> Membership:
    """Change a member's role: owners and admins, only owners make or unmake owners, an owner always remains."""
    if role not in Membership.Role.values:
        raise OrganizationRuleBroken(f"Unknown role '{role}'.", {"field": "role"})
    with rls.atomic():
        actor_membership = _require_admin(actor, membership.organization, lock=True, target=membership)
        membership = _as_it_is_now(membership)  # its role may have changed since the caller read it
        if Membership.Role.OWNER in (role, membership.role) and actor_membership.role != Membership.Role.OWNER:
            raise NotAllowed("Only owners can make or unmake owners.")
        if role != Membership.Role.OWNER:
            personal_workspace_keeps_its_user(membership)
        if membership.role == Membership.Role.OWNER and role != Membership.Role.OWNER:
            _another_owner_remains(membership, "An organization needs at least one owner: make someone else owner first.")
        invitations_sent_withdrawn(membership, new_role=role)
        membership.role = role
        membership.save(update_fields=["role"])
    return membership


def membership_remove(*, actor: User, membership: Membership) -> None:
    if membership.user_id == actor.pk:
        organization_leave(user=actor, organization=membership.organization)
        return
    with rls.atomic():
        actor_membership = _require_admin(actor, membership.organization, lock=True, target=membership)
        membership = _as_it_is_now(membership)
        personal_workspace_keeps_its_user(membership)
        if membership.role == Membership.Role.OWNER:
            if actor_membership.role != Membership.Role.OWNER:
                raise NotAllowed("Only owners can remove an owner.")
            _another_owner_remains(membership, "An organization needs at least one owner.")
        invitations_sent_withdrawn(membership)
        if not Membership.objects.filter(pk=membership.pk).delete()[0]:  # gone since it was read: never a 204 for nothing
            raise NotAllowed("That membership has changed; reload and try again.")


def organization_leave(*, user: User, organization: Organization) -> None:
    with rls.atomic():
        membership = _membership_of(user, organization, lock=True)
        if organization.is_personal:
            raise OrganizationRuleBroken("You cannot leave your personal workspace.")
        if membership.role == Membership.Role.OWNER:
            _another_owner_remains(membership, "You are this organization's last owner: make someone else owner before you leave.")
        invitations_sent_withdrawn(membership)
        # Only as the role it was read with: a plain member cannot lock the owners' rows (the row
        # policy lets only owners and admins), so one made owner since, maybe the last, is not
        # deleted on a stale "member" (the database's owner check would fail the commit: a 500).
        if not Membership.objects.filter(pk=membership.pk, role=membership.role).delete()[0]:
            raise OrganizationRuleBroken("Your role in this organization changed as you left: reload and try again.")
