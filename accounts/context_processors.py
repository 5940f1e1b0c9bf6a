from django.db import DatabaseError, connections

from accounts import selectors
from config.db import rls


def theme(request):
    """`theme`: the signed-in user's light/dark/system choice, read by base.html."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {"theme": "system"}
    try:
        if connections[rls.current_alias()].in_atomic_block:
            return {"theme": selectors.preferences_get(user=user).theme}
        with rls.atomic_as(user.pk):  # a view with its own transactions (own_transactions) holds none while it renders
            return {"theme": selectors.preferences_get(user=user).theme}
    except DatabaseError:  # an error page over a failed transaction still renders
        return {"theme": "system"}
