"""Every committed change to an API key or its owner is announced on `accounts_api_key_changed`.

Web processes remember the keys they read (accounts/api_key_cache.py) and drop an owner's as
soon as this notification names them: a key's update or delete, its owner's update or delete
(the payload is the owner's id), a truncate of either table ('*': everything). PostgreSQL
delivers a notification when its transaction commits, never for one rolled back. Updates that
change only when a key was last used or its owner last signed in leave the remembered rows
right and announce nothing (they would empty the cache every few minutes per key).
"""

from django.db import migrations

SQL = """
CREATE FUNCTION accounts_api_key_changed_notify() RETURNS trigger
    LANGUAGE plpgsql SET search_path = public, pg_temp
    AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        PERFORM pg_notify('accounts_api_key_changed', '*');
    ELSIF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('accounts_api_key_changed', to_jsonb(OLD) ->> TG_ARGV[0]);
    ELSE
        PERFORM pg_notify('accounts_api_key_changed', to_jsonb(NEW) ->> TG_ARGV[0]);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER accounts_apikey_changed_update AFTER UPDATE ON accounts_apikey FOR EACH ROW
    WHEN ((to_jsonb(OLD) - 'last_used_at') IS DISTINCT FROM (to_jsonb(NEW) - 'last_used_at'))
    EXECUTE FUNCTION accounts_api_key_changed_notify('user_id');
CREATE TRIGGER accounts_apikey_changed_delete AFTER DELETE ON accounts_apikey FOR EACH ROW
    EXECUTE FUNCTION accounts_api_key_changed_notify('user_id');
CREATE TRIGGER accounts_apikey_changed_truncate AFTER TRUNCATE ON accounts_apikey FOR EACH STATEMENT
    EXECUTE FUNCTION accounts_api_key_changed_notify();

CREATE TRIGGER accounts_user_changed_update AFTER UPDATE ON accounts_user FOR EACH ROW
    WHEN ((to_jsonb(OLD) - 'last_login') IS DISTINCT FROM (to_jsonb(NEW) - 'last_login'))
    EXECUTE FUNCTION accounts_api_key_changed_notify('id');
CREATE TRIGGER accounts_user_changed_delete AFTER DELETE ON accounts_user FOR EACH ROW
    EXECUTE FUNCTION accounts_api_key_changed_notify('id');
CREATE TRIGGER accounts_user_changed_truncate AFTER TRUNCATE ON accounts_user FOR EACH STATEMENT
    EXECUTE FUNCTION accounts_api_key_changed_notify();
"""

REVERSE_SQL = """
DROP TRIGGER IF EXISTS accounts_user_changed_truncate ON accounts_user;
DROP TRIGGER IF EXISTS accounts_user_changed_delete ON accounts_user;
DROP TRIGGER IF EXISTS accounts_user_changed_update ON accounts_user;
DROP TRIGGER IF EXISTS accounts_apikey_changed_truncate ON accounts_apikey;
DROP TRIGGER IF EXISTS accounts_apikey_changed_delete ON accounts_apikey;
DROP TRIGGER IF EXISTS accounts_apikey_changed_update ON accounts_apikey;
DROP FUNCTION IF EXISTS accounts_api_key_changed_notify();
"""


class Migration(migrations.Migration):
    dependencies = [("accounts", "0013_api_key_signin_in_one_query")]

    operations = [migrations.RunSQL(SQL, REVERSE_SQL)]
