"""Signed-in sessions keep the SHA-256 of their session key, not the key.

`accounts_usersession.session_key` held each browser's live credential, readable by the
worker role (BYPASSRLS). It becomes `session_key_digest`, the hash the session store
already names sessions by (accounts_session.key_hash), computed in SQL from the old value.
Revoking now deletes a session by that digest: `accounts_session_delete_digest` only for
a digest on one of the context user's own rows (SECURITY DEFINER bypasses row-level
security, so it checks `app.user_id` itself); `accounts_session_delete_digest_staff`, with
no such check, is granted to the worker role alone (staff revoke in admin).

Reversing cannot recover the raw keys: the sessions still listed are deleted from the
store (those browsers are signed out) and their rows ended, with an empty session_key.
"""

from django.db import migrations, models

# config.crypto.token_digest in SQL (a test holds them equal).
HASHED = "encode(sha256(convert_to(session_key, 'UTF8')), 'hex')"
# Deferred foreign-key checks queued by rows written earlier in the same transaction would block the ALTERs.
IMMEDIATE = "SET CONSTRAINTS ALL IMMEDIATE;"
DIGEST = f"""
{IMMEDIATE}
ALTER TABLE accounts_usersession ADD COLUMN session_key_digest varchar(64);
UPDATE accounts_usersession SET session_key_digest = {HASHED};
ALTER TABLE accounts_usersession ALTER COLUMN session_key_digest SET NOT NULL,
    ADD CONSTRAINT accounts_usersession_session_key_digest_hex CHECK (session_key_digest ~ '^[0-9a-f]{{64}}$');
ALTER TABLE accounts_usersession DROP COLUMN session_key;
-- No varchar_pattern_ops twin: a digest is only ever matched whole.
CREATE INDEX accounts_usersession_session_key_digest_4b8545f2 ON accounts_usersession (session_key_digest);
"""
# Back to 0003's column; the keys are gone, so the sessions they named end here.
DIGEST_UNDO = f"""
{IMMEDIATE}
DELETE FROM accounts_session s USING accounts_usersession u
    WHERE s.key_hash = u.session_key_digest AND u.ended_at IS NULL;
ALTER TABLE accounts_usersession ADD COLUMN session_key varchar(40) NOT NULL DEFAULT '';
ALTER TABLE accounts_usersession ALTER COLUMN session_key DROP DEFAULT;
UPDATE accounts_usersession SET ended_at = now() WHERE ended_at IS NULL;
ALTER TABLE accounts_usersession DROP COLUMN session_key_digest;
CREATE INDEX accounts_usersession_session_key_7ce13c12 ON accounts_usersession (session_key);
CREATE INDEX accounts_usersession_session_key_7ce13c12_like ON accounts_usersession (session_key varchar_pattern_ops);
"""

FUNCTIONS = """
CREATE FUNCTION accounts_session_delete_digest(p_digest text) RETURNS boolean
    LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$ WITH deleted AS (
              DELETE FROM accounts_session WHERE key_hash = p_digest AND EXISTS (
                  SELECT 1 FROM accounts_usersession u WHERE u.session_key_digest = p_digest
                  AND u.user_id = NULLIF(current_setting('app.user_id', true), '')::uuid)
              RETURNING 1)
          SELECT EXISTS (SELECT 1 FROM deleted) $$;

-- Staff revoke (admin runs as the worker role, with no user context): granted to that role only.
CREATE FUNCTION accounts_session_delete_digest_staff(p_digest text) RETURNS boolean
    LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$ WITH deleted AS (DELETE FROM accounts_session WHERE key_hash = p_digest RETURNING 1)
          SELECT EXISTS (SELECT 1 FROM deleted) $$;

REVOKE ALL ON FUNCTION accounts_session_delete_digest(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION accounts_session_delete_digest_staff(text) FROM PUBLIC;
"""
DROP_FUNCTIONS = """
DROP FUNCTION IF EXISTS accounts_session_delete_digest_staff(text);
DROP FUNCTION IF EXISTS accounts_session_delete_digest(text);
"""
# alias -> functions its role may execute
GRANTS = {
    "default": ("accounts_session_delete_digest(text)",),
    "privileged": ("accounts_session_delete_digest(text)", "accounts_session_delete_digest_staff(text)"),
}


def grant_functions(apps, schema_editor):
    from django.conf import settings

    for alias, signatures in GRANTS.items():
        role = schema_editor.quote_name(settings.DATABASES[alias]["USER"])
        for signature in signatures:
            schema_editor.execute(f"GRANT EXECUTE ON FUNCTION {signature} TO {role}")


class Migration(migrations.Migration):
    dependencies = [("accounts", "0011_apikey_billing_scopes")]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[migrations.RunSQL(DIGEST, DIGEST_UNDO)],
            state_operations=[
                migrations.RemoveField(model_name="usersession", name="session_key"),
                migrations.AddField(
                    model_name="usersession",
                    name="session_key_digest",
                    field=models.CharField(db_index=True, max_length=64, default=""),
                    preserve_default=False,
                ),
            ],
        ),
        migrations.RunSQL(FUNCTIONS, DROP_FUNCTIONS),
        # Dropping the functions on the way back drops these grants with them.
        migrations.RunPython(grant_functions, migrations.RunPython.noop),
    ]
