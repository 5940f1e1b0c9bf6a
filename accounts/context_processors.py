from django.db import DatabaseError

from accounts import selectors


def theme(request):
    """`theme`: the signed-in user's light/dark/system choice, read by base.html."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {"theme": "system"}
    try:
        return {"theme": selectors.preferences_get(user=user).theme}
    except DatabaseError:  # an error page over a failed transaction still renders
        return {"theme": "system"}
