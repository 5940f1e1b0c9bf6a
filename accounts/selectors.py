from accounts.models import Membership


def organization_ids_for_user(user) -> list:
    """The organizations the user belongs to (read under the user's own context)."""
    return list(Membership.objects.filter(user_id=user.pk).values_list("organization_id", flat=True))
