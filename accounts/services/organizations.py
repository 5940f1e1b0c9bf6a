"""Organizations, invitations and memberships."""

from __future__ import annotations

import re
import secrets
from datetime import timedelta

from django.conf import settings
from django.core.mail import send_mail
from django.utils import timezone
from django.utils.crypto import get_random_string
from django.utils.text import slugify

from accounts.errors import InvitationInvalid, NotAllowed, OrganizationRuleBroken
from accounts.models import Invitation, Membership, Organization, User
from config.crypto import token_digest
from config.db import rls

INVITATION_LIFETIME = timedelta(days=7)


def _organization_slug(name: str) -> str:
    return f"{slugify(name)[:200] or 'org'}-{get_random_string(6).lower()}"


def organization_create(*, user: User, name: str, is_personal: bool = False) -> Organization:
    """A new organization owned by `user`; the context sees it once the owner's membership exists."""
    name = (name or "").strip()
    if not name:
        raise OrganizationRuleBroken("Give the organization a name.", {"field": "name"})
    with rls.atomic():
        return _organization_create(user=user, name=name, is_personal=is_personal)


def _organization_create(*, user: User, name: str, is_personal: bool) -> Organization:
    organization = Organization.objects.create(name=name[:200], slug=_organization_slug(name), is_personal=is_personal, created_by=user)
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


def organization_update(
    *, actor: User, organization: Organization, name: str | None = None, auto_join_domain: str | None = None
) -> Organization:
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


def invitation_create(
    *, actor: User, organization: Organization, email: str, role: str = Membership.Role.MEMBER, base_url: str = ""
) -> tuple[Invitation, str]:
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
        Invitation.objects.filter(organization=organization, email=email, accepted_at__isnull=True, revoked_at__isnull=True).update(
            revoked_at=timezone.now()
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
    with rls.atomic():
        membership = Membership.objects.create(organization_id=invitation.organization_id, user=user, role=invitation.role)
        invitation.accepted_at = timezone.now()
        invitation.save(update_fields=["accepted_at"])
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


def membership_role_change(*, actor: User, membership: Membership, role: str) -> Membership:
    """Change a member's role: owners and admins, only owners make or unmake owners, an owner always remains."""
    if role not in Membership.Role.values:
        raise OrganizationRuleBroken(f"Unknown role '{role}'.", {"field": "role"})
    with rls.atomic():
        actor_membership = _require_admin(actor, membership.organization)
        if Membership.Role.OWNER in (role, membership.role) and actor_membership.role != Membership.Role.OWNER:
            raise NotAllowed("Only owners can make or unmake owners.")
        if membership.role == Membership.Role.OWNER and role != Membership.Role.OWNER:
            _another_owner_remains(membership, "An organization needs at least one owner: make someone else owner first.")
        membership.role = role
        membership.save(update_fields=["role"])
    return membership


def membership_remove(*, actor: User, membership: Membership) -> None:
    if membership.user_id == actor.pk:
        organization_leave(user=actor, organization=membership.organization)
        return
    with rls.atomic():
        actor_membership = _require_admin(actor, membership.organization)
        if membership.role == Membership.Role.OWNER:
            if actor_membership.role != Membership.Role.OWNER:
                raise NotAllowed("Only owners can remove an owner.")
            _another_owner_remains(membership, "An organization needs at least one owner.")
        membership.delete()


def organization_leave(*, user: User, organization: Organization) -> None:
    with rls.atomic():
        membership = _membership_of(user, organization)
        if organization.is_personal:
            raise OrganizationRuleBroken("You cannot leave your personal workspace.")
        if membership.role == Membership.Role.OWNER:
            _another_owner_remains(membership, "You are this organization's last owner: make someone else owner before you leave.")
        membership.delete()
