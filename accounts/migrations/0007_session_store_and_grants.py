"""Sessions under the SHA-256 of their key, reached only through SECURITY DEFINER functions,
and the app and worker roles narrowed to what they use on Django's own tables.

`accounts_session` keeps no session key: a row is named by the key's hash, which the
functions compute from the key they are given. Neither role has a grant on the table
(and row-level security is forced with no policy), so reading sessions needs a key.
"""

from django.db import migrations

SESSION_STORE = """
CREATE TABLE accounts_session (
    key_hash text PRIMARY KEY CHECK (key_hash ~ '^[0-9a-f]{64}$'),
    session_data text NOT NULL,
    expire_date timestamptz NOT NULL
);
CREATE INDEX accounts_session_expire_date ON accounts_session (expire_date);
ALTER TABLE accounts_session ENABLE ROW LEVEL SECURITY;
ALTER TABLE accounts_session FORCE ROW LEVEL SECURITY;

CREATE FUNCTION accounts_session_key_hash(p_key text) RETURNS text
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    AS $$ SELECT encode(sha256(convert_to(p_key, 'UTF8')), 'hex') $$;

CREATE FUNCTION accounts_session_load(p_key text) RETURNS TABLE (session_data text, expire_date timestamptz)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$ SELECT s.session_data, s.expire_date FROM accounts_session s
          WHERE s.key_hash = accounts_session_key_hash(p_key) AND s.expire_date > now() $$;

CREATE FUNCTION accounts_session_exists(p_key text) RETURNS boolean
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$ SELECT EXISTS (SELECT 1 FROM accounts_session WHERE key_hash = accounts_session_key_hash(p_key)) $$;

-- False when the key is taken (the store then picks another key).
CREATE FUNCTION accounts_session_create(p_key text, p_data text, p_expire timestamptz) RETURNS boolean
    LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$ WITH created AS (
              INSERT INTO accounts_session (key_hash, session_data, expire_date)
              VALUES (accounts_session_key_hash(p_key), p_data, p_expire)
              ON CONFLICT (key_hash) DO NOTHING RETURNING 1)
          SELECT EXISTS (SELECT 1 FROM created) $$;

-- False when the session is gone (revoked or signed out): it is never written back.
CREATE FUNCTION accounts_session_update(p_key text, p_data text, p_expire timestamptz) RETURNS boolean
    LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$ WITH updated AS (
              UPDATE accounts_session SET session_data = p_data, expire_date = p_expire
              WHERE key_hash = accounts_session_key_hash(p_key) RETURNING 1)
          SELECT EXISTS (SELECT 1 FROM updated) $$;

CREATE FUNCTION accounts_session_delete(p_key text) RETURNS boolean
    LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$ WITH deleted AS (DELETE FROM accounts_session WHERE key_hash = accounts_session_key_hash(p_key) RETURNING 1)
          SELECT EXISTS (SELECT 1 FROM deleted) $$;

CREATE FUNCTION accounts_session_clear_expired() RETURNS bigint
    LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$ WITH deleted AS (DELETE FROM accounts_session WHERE expire_date < now() RETURNING 1) SELECT count(*) FROM deleted $$;

REVOKE ALL ON FUNCTION accounts_session_load(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION accounts_session_exists(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION accounts_session_create(text, text, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION accounts_session_update(text, text, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION accounts_session_delete(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION accounts_session_clear_expired() FROM PUBLIC;
"""
DROP_SESSION_STORE = """
DROP FUNCTION IF EXISTS accounts_session_clear_expired();
DROP FUNCTION IF EXISTS accounts_session_delete(text);
DROP FUNCTION IF EXISTS accounts_session_update(text, text, timestamptz);
DROP FUNCTION IF EXISTS accounts_session_create(text, text, timestamptz);
DROP FUNCTION IF EXISTS accounts_session_exists(text);
DROP FUNCTION IF EXISTS accounts_session_load(text);
DROP FUNCTION IF EXISTS accounts_session_key_hash(text);
DROP TABLE IF EXISTS accounts_session;
"""
FUNCTIONS = (
    "accounts_session_load(text)",
    "accounts_session_exists(text)",
    "accounts_session_create(text, text, timestamptz)",
    "accounts_session_update(text, text, timestamptz)",
    "accounts_session_delete(text)",
    "accounts_session_clear_expired()",
)

# Signed-in browsers stay signed in: live sessions move over under their hash, and the
# raw keys leave the database. Going back cannot recover keys: those sessions end.
SESSIONS_MOVE = """
INSERT INTO accounts_session (key_hash, session_data, expire_date)
SELECT accounts_session_key_hash(session_key), session_data, expire_date FROM django_session WHERE expire_date > now()
ON CONFLICT (key_hash) DO NOTHING;
DELETE FROM django_session;
"""

# What each role keeps on Django's own tables (everything else there is revoked).
# Catalogs are written by `migrate` as the owner; groups are edited in admin (worker role).
APP_KEEPS = {
    "django_migrations": "SELECT",  # runserver checks for unapplied migrations as this role
    "django_session": "",
    "django_content_type": "SELECT",
    "auth_permission": "SELECT",
    "auth_group": "SELECT",
    "auth_group_permissions": "SELECT",
}
WORKER_KEEPS = {"django_migrations": "", "django_session": "", "django_content_type": "SELECT", "auth_permission": "SELECT"}
GRANTED_BEFORE = "SELECT, INSERT, UPDATE, DELETE"  # config 0001's default privileges


def _roles(schema_editor):
    from django.conf import settings

    return {alias: schema_editor.quote_name(settings.DATABASES[alias]["USER"]) for alias in ("default", "privileged")}


def grants_narrow(apps, schema_editor):
    roles = _roles(schema_editor)
    for alias, keeps in (("default", APP_KEEPS), ("privileged", WORKER_KEEPS)):
        role = roles[alias]
        schema_editor.execute(f"REVOKE ALL ON accounts_session FROM {role}")
        for signature in FUNCTIONS:
            schema_editor.execute(f"GRANT EXECUTE ON FUNCTION {signature} TO {role}")
        for table, kept in keeps.items():
            schema_editor.execute(f"REVOKE ALL ON {table} FROM {role}")
            if kept:
                schema_editor.execute(f"GRANT {kept} ON {table} TO {role}")


def grants_restore(apps, schema_editor):
    roles = _roles(schema_editor)
    for alias, keeps in (("default", APP_KEEPS), ("privileged", WORKER_KEEPS)):
        for table in keeps:
            schema_editor.execute(f"GRANT {GRANTED_BEFORE} ON {table} TO {roles[alias]}")


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0006_role_write_policies_last_owner"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("sessions", "0001_initial"),
    ]

    operations = [
        migrations.RunSQL(SESSION_STORE, DROP_SESSION_STORE),
        migrations.RunPython(grants_narrow, grants_restore),
        migrations.RunSQL(SESSIONS_MOVE, migrations.RunSQL.noop),
    ]
