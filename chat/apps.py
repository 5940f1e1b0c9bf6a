from django.apps import AppConfig


class ChatConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "chat"
    verbose_name = "Chat"

    def ready(self):
        from accounts.catalog import model_catalog_register
        from chat.forms import model_catalog

        # Preferences offer the catalog's models; accounts, below chat, cannot import it.
        model_catalog_register(model_catalog)
