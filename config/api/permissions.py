"""Scopes: a view names the scope each method needs; an API key must carry it.

Session-authenticated requests act as the user in the browser and are not limited
by scopes. Views declare e.g. `required_scopes = {"GET": "usage:read"}` or a single
string for every method.
"""

from rest_framework.permissions import BasePermission


class HasRequiredScope(BasePermission):
    message = "This API key lacks the scope this endpoint needs."

    def has_permission(self, request, view):
        granted = getattr(request.auth, "scopes", None)
        if granted is None:
            return True
        required = getattr(view, "required_scopes", None)
        if isinstance(required, dict):
            required = required.get(request.method) or required.get("*")
        if not required:
            return False  # a key may only reach endpoints that name their scope
        if required not in granted:
            self.message = f"This API key lacks the '{required}' scope."
            return False
        return True
