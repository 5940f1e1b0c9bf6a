"""The admin site: staff work through the audited privileged context."""

from functools import wraps

from django.contrib import admin

from config.db import rls


class ConfabAdminSite(admin.AdminSite):
    site_header = "Confab administration"
    site_title = "Confab admin"
    index_title = "Run the business"

    def admin_view(self, view, cacheable=False):
        guarded = super().admin_view(view, cacheable)

        @wraps(guarded)
        def privileged_view(request, *args, **kwargs):
            if not (request.user.is_active and request.user.is_staff):
                return guarded(request, *args, **kwargs)
            with rls.privileged(reason=f"admin {request.method} {request.path} by {request.user.pk}"):
                response = guarded(request, *args, **kwargs)
                if hasattr(response, "render") and not response.is_rendered:
                    response.render()  # templates query lazily: render inside the context
                return response

        return privileged_view


class ReadOnlyAdmin(admin.ModelAdmin):
    """Facts written by the product and its workers (ledgers, logs, sessions): staff look, never edit."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
