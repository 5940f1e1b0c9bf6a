"""The API key change triggers (0014) fire in every session, replica-role ones too.

PostgreSQL fires a trigger enabled the ordinary way only in sessions whose
session_replication_role is `origin`: a change applied by logical replication, or made by hand
under `replica` (a bulk fix, a restore without triggers), announced nothing, and every web
process kept serving a revoked key, or an owner deactivated, from its memory until it
restarted. ENABLE ALWAYS fires them whatever the role; the cache (accounts/api_key_cache.py)
is used only while all six are so enabled.
"""

from django.db import migrations

# Frozen: accounts migration 0014's triggers, by table.
TRIGGERS = {
    "accounts_apikey": ("accounts_apikey_changed_update", "accounts_apikey_changed_delete", "accounts_apikey_changed_truncate"),
    "accounts_user": ("accounts_user_changed_update", "accounts_user_changed_delete", "accounts_user_changed_truncate"),
}


def _sql(enable: str) -> str:
    return "\n".join(f"ALTER TABLE {table} {enable} TRIGGER {name};" for table, names in TRIGGERS.items() for name in names)


class Migration(migrations.Migration):
    dependencies = [("accounts", "0014_api_key_changed_notify")]

    operations = [migrations.RunSQL(_sql("ENABLE ALWAYS"), _sql("ENABLE"))]
