"""Start-up check: the configured keys open the secrets already stored (run by migrate)."""

from django.core import checks


@checks.register(checks.Tags.database)
def encryption_keys_open_stored_secrets(app_configs, databases=None, **kwargs):
    if not databases:
        return []
    from django.db import DatabaseError

    from accounts.models import ProviderCredential
    from config.crypto import SecretUndecryptable, secret_decrypt
    from config.db import rls

    try:
        with rls.privileged(reason="start-up check: encryption keys open stored secrets"):
            sample = ProviderCredential.objects.exclude(api_key_encrypted="").values_list("api_key_encrypted", flat=True).first()
    except DatabaseError:
        return []  # not migrated yet
    if sample is None:
        return []
    try:
        secret_decrypt(sample)
    except SecretUndecryptable:
        return [
            checks.Error(
                "FIELD_ENCRYPTION_KEYS cannot decrypt the stored provider keys.",
                hint="Add the key they were encrypted with (after the newest), then run rotate_encryption_keys.",
                id="accounts.E001",
            )
        ]
    return []
