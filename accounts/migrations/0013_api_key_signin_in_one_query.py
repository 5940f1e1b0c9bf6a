"""An API key signs in with one query: the key's row and its owner's, by prefix and hash.

Before, a request paid five round trips (accounts_api_key_user, then BEGIN, the context,
the key joined to its user under row-level security, COMMIT). These two SECURITY DEFINER
functions answer the key's row and its owner's row to whoever presents the key's prefix and
SHA-256, which is exactly who may act as that user; nothing for any other input.
"""

from django.db import migrations

FUNCTIONS = """
CREATE FUNCTION accounts_api_key_row(p_prefix text, p_key_hash text) RETURNS SETOF accounts_apikey
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$ SELECT * FROM accounts_apikey WHERE prefix = p_prefix AND key_hash = p_key_hash $$;
CREATE FUNCTION accounts_api_key_owner(p_prefix text, p_key_hash text) RETURNS SETOF accounts_user
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$ SELECT u.* FROM accounts_user u JOIN accounts_apikey k ON k.user_id = u.id
          WHERE k.prefix = p_prefix AND k.key_hash = p_key_hash $$;
REVOKE ALL ON FUNCTION accounts_api_key_row(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION accounts_api_key_owner(text, text) FROM PUBLIC;
"""
DROP_FUNCTIONS = """
DROP FUNCTION IF EXISTS accounts_api_key_owner(text, text);
DROP FUNCTION IF EXISTS accounts_api_key_row(text, text);
"""
SIGNATURES = ("accounts_api_key_row(text, text)", "accounts_api_key_owner(text, text)")


def grant_functions(apps, schema_editor):
    from django.conf import settings

    role = schema_editor.quote_name(settings.DATABASES["default"]["USER"])
    for signature in SIGNATURES:
        schema_editor.execute(f"GRANT EXECUTE ON FUNCTION {signature} TO {role}")


class Migration(migrations.Migration):
    dependencies = [("accounts", "0012_usersession_key_digest")]

    operations = [migrations.RunSQL(FUNCTIONS, DROP_FUNCTIONS), migrations.RunPython(grant_functions, migrations.RunPython.noop)]
