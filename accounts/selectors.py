"""Account reads. Each runs under the request's row-level security context, so another
tenant's row is simply not there: the `*_get` functions raise Http404 for it."""

from django.core.exceptions import ValidationError
from django.db.models import BooleanField, F, Func, QuerySet
from django.http import Http404
from django.shortcuts import get_object_or_404
from django.utils import timezone

from accounts.errors import NotAllowed
from accounts.models import ApiKey, Invitation, Membership, Organization, Preferences, ProviderCredential, User, UserSession


def preferences_get(*, user: User) -> Preferences:
    """The user's preferences; the defaults (unsaved) if the row is missing."""
    return Preferences.objects.filter(user=user).first() or Preferences(user=user)


def analytics_opted_out(*, user: User) -> bool:
    """Whether the user turned product analytics off (read under the caller's context)."""
    return Preferences.objects.filter(user_id=user.pk, analytics_opt_out=True).exists()


def organization_list(*, user: User) -> QuerySet[Organization]:
    """The user's organizations, each annotated with `role`: the user's role in it."""
    return Organization.objects.filter(memberships__user=user).annotate(role=F("memberships__role")).order_by("-is_personal", "name", "id")


def organization_list_administered(*, user: User) -> QuerySet[Organization]:
    """The shared (not personal) organizations the user is an owner or admin of, annotated with `role`."""
    # On the annotated role: a second memberships__ filter would join another membership, not the user's.
    return organization_list(user=user).filter(is_personal=False, role__in=[Membership.Role.OWNER, Membership.Role.ADMIN])


def member_user_ids(*, organization_id) -> list:
    """The ids of the organization's current members (as the context may see them)."""
    return list(Membership.objects.filter(organization_id=organization_id).values_list("user_id", flat=True))


def member_names(*, organization_ids) -> dict:
    """user id -> display name (or email) of every member of these organizations."""
    rows = Membership.objects.filter(organization_id__in=list(organization_ids)).values_list("user_id", "user__display_name", "user__email")
    return {user_id: display_name or email for user_id, display_name, email in rows}


def organization_get(*, user: User, organization_id) -> Organization:
    return get_object_or_404(organization_list(user=user), pk=organization_id)


def organization_get_or_first(*, user: User, organization_id: str | None = None) -> Organization:
    """The user's organization with this id (Http404 for any other, or for an id that is no
    UUID); without an id, their first one: the personal organization."""
    organizations = organization_list(user=user)
    try:
        organization = organizations.first() if organization_id is None else organizations.filter(pk=organization_id).first()
    except ValidationError:
        organization = None
    if organization is None:
        raise Http404("No such organization.")
    return organization


def organization_get_administered(*, user: User, organization_id) -> Organization:
    """One of the user's organizations that they own or administer: 404 if not theirs, 403 if only a member."""
    organization = organization_get(user=user, organization_id=organization_id)
    if organization.role not in (Membership.Role.OWNER, Membership.Role.ADMIN):
        raise NotAllowed("Only the organization's owners and admins can do that.")
    return organization


def membership_list(*, organization: Organization) -> QuerySet[Membership]:
    return Membership.objects.filter(organization=organization).select_related("user").order_by("created_at", "id")


def membership_get(*, organization: Organization, membership_id) -> Membership:
    return get_object_or_404(Membership.objects.select_related("organization", "user"), organization=organization, pk=membership_id)


def invitation_list(*, organization: Organization) -> QuerySet[Invitation]:
    return Invitation.objects.filter(organization=organization).order_by("-created_at", "id")


def invitation_pending_for(*, user: User) -> QuerySet[Invitation]:
    """Invitations waiting for the user's email (the invitee reads them, not their organization);
    none until the email is confirmed: whoever signs up with an address is not told who invited it."""
    if not user.email_verified:
        return Invitation.objects.none()
    return Invitation.objects.filter(
        email=user.email, accepted_at__isnull=True, revoked_at__isnull=True, expires_at__gt=timezone.now()
    ).order_by("-created_at", "id")


def invitation_get(*, organization: Organization, invitation_id) -> Invitation:
    return get_object_or_404(Invitation.objects.select_related("organization"), organization=organization, pk=invitation_id)


def api_key_list(*, user: User) -> QuerySet[ApiKey]:
    return ApiKey.objects.filter(user=user).order_by("-created_at", "id")


def api_key_get(*, user: User, api_key_id) -> ApiKey:
    return get_object_or_404(ApiKey, user=user, pk=api_key_id)


def provider_credential_list(*, user: User) -> QuerySet[ProviderCredential]:
    return ProviderCredential.objects.filter(user=user).order_by("provider", "id")


def provider_credential_get(*, user: User, credential_id) -> ProviderCredential:
    return get_object_or_404(ProviderCredential, user=user, pk=credential_id)


def provider_credential_exists(*, user: User, provider: str) -> bool:
    return ProviderCredential.objects.filter(user=user, provider=provider).exists()


def user_session_list(*, user: User) -> QuerySet[UserSession]:
    """The user's sessions that still sign a browser in, most recently active first: not ended, and
    not expired (a session runs out with no sign-out, so nothing ends its UserSession)."""
    live = Func(F("session_key_digest"), function="accounts_session_live", output_field=BooleanField())  # accounts 0018
    return UserSession.objects.filter(live, user=user, ended_at__isnull=True).order_by("-last_activity_at", "id")


def user_session_get(*, user: User, user_session_id) -> UserSession:
    return get_object_or_404(UserSession, user=user, pk=user_session_id)
