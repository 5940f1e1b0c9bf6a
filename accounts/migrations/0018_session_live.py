"""Whether a listed session still signs its browser in: `accounts_session_live(digest)`.

A session's row in `accounts_session` outlives its expiry (clearsessions deletes it later) and a
UserSession knows neither: the sessions list showed an expired session as signed in forever. The
list now keeps only sessions whose row is there and unexpired. SECURITY DEFINER (neither role may
read the table): it answers yes or no about a digest the caller already holds, nothing more.
Granted to the roles that may load a session (accounts 0007), read from its grants here, so no
role name is written into this migration.
"""

from django.db import migrations

FUNCTION = """
CREATE FUNCTION accounts_session_live(p_digest text) RETURNS boolean
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$ SELECT EXISTS (SELECT 1 FROM accounts_session WHERE key_hash = p_digest AND expire_date > now()) $$;
REVOKE ALL ON FUNCTION accounts_session_live(text) FROM PUBLIC;
DO $$
DECLARE
    grantee regrole;
BEGIN
    FOR grantee IN
        SELECT DISTINCT a.grantee::regrole FROM pg_proc p, aclexplode(p.proacl) a
        WHERE p.oid = 'accounts_session_load(text)'::regprocedure AND a.privilege_type = 'EXECUTE'
          AND a.grantee <> 0 AND a.grantee <> p.proowner
    LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION accounts_session_live(text) TO %s', grantee);
    END LOOP;
END $$;
"""
# Its grants go with it.
DROP_FUNCTION = "DROP FUNCTION IF EXISTS accounts_session_live(text);"


class Migration(migrations.Migration):
    dependencies = [("accounts", "0017_email_domains_spelled_by_idna_2008")]

    operations = [migrations.RunSQL(FUNCTION, DROP_FUNCTION)]
