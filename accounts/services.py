"""Account writes. Each runs inside the caller's transaction and keeps the RLS context right."""
from django.utils.text import slugify
from django.utils.crypto import get_random_string

from accounts.models import Membership, Organization, User
from config.db import rls


def _organization_slug(name: str) -> str:
    return f"{slugify(name)[:200] or 'org'}-{get_random_string(6).lower()}"


def organization_create(*, user: User, name: str, is_personal: bool = False) -> Organization:
    """A new organization owned by `user`; the context then includes it."""
    with rls.atomic():
        return _organization_create(user=user, name=name, is_personal=is_personal)


def _organization_create(*, user: User, name: str, is_personal: bool) -> Organization:
    organization = Organization.objects.create(name=name, slug=_organization_slug(name), is_personal=is_personal, created_by=user)
    rls.context_set(user_id=user.pk, organization_ids=[*rls.organization_ids_for(user), organization.pk])
    Membership.objects.create(organization=organization, user=user, role=Membership.Role.OWNER)
    return organization


def user_create(*, email: str, password: str | None, **fields) -> User:
    """A user and their personal organization, written under the new user's own context."""
    user = User(email=User.objects.normalize_email(email), **fields)
    user.set_password(password)
    with rls.atomic():
        rls.context_set(user_id=user.pk)  # the row being inserted is the context's own
        user.save()
        _organization_create(user=user, name=f"{user.get_short_name()}'s workspace", is_personal=True)
    return user
