from django.apps import AppConfig
from django.contrib.admin.apps import AdminConfig


class ConfigAppConfig(AppConfig):
    """Project infrastructure: role grants, RLS helpers, rls_audit, db_bootstrap."""

    name = "config"
    verbose_name = "Infrastructure"

    def ready(self):
        from django.conf import settings
        from django.core.signals import request_finished

        from config.crypto import keys_load

        keys_load(settings.FIELD_ENCRYPTION_KEYS)  # a missing or malformed key stops start-up here

        from config.db.rls import connections_reset

        request_finished.connect(lambda **kwargs: connections_reset(), weak=False, dispatch_uid="rls_reset")


class ConfabAdminConfig(AdminConfig):
    default_site = "config.admin.ConfabAdminSite"
