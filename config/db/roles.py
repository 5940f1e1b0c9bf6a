"""The three database roles (docs/architecture.md) and the database, created idempotently."""

from psycopg import connect, sql
from psycopg.conninfo import conninfo_to_dict

# Role attributes: the owner migrates and owns every table (BYPASSRLS because FORCE
# ROW LEVEL SECURITY binds owners too); `app` serves web requests under the policies;
# `worker` is the privileged role for Celery and staff tools.
OWNER_ATTRS = "LOGIN NOSUPERUSER NOCREATEROLE CREATEDB BYPASSRLS"
APP_ATTRS = "LOGIN NOSUPERUSER NOCREATEROLE NOCREATEDB NOBYPASSRLS"
WORKER_ATTRS = "LOGIN NOSUPERUSER NOCREATEROLE NOCREATEDB BYPASSRLS"


def _role_ensure(cur, user: str, password: str | None, attrs: str) -> None:
    cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [user])
    verb = "ALTER" if cur.fetchone() else "CREATE"
    statement = sql.SQL(f"{verb} ROLE {{}} WITH {attrs}").format(sql.Identifier(user))
    if password:
        statement += sql.SQL(" PASSWORD {}").format(sql.Literal(password))
    cur.execute(statement)
    # UTC as the session default, so RESET ALL never leaves another zone behind.
    cur.execute(sql.SQL("ALTER ROLE {} SET timezone = 'UTC'").format(sql.Identifier(user)))


def database_bootstrap(*, admin_url: str, owner_url: str, app_url: str, worker_url: str) -> None:
    """Create or update the roles and the database. Needs a superuser's URL; safe to rerun."""
    owner, app, worker = (conninfo_to_dict(u) for u in (owner_url, app_url, worker_url))
    dbname = owner["dbname"]
    with connect(admin_url, autocommit=True) as conn, conn.cursor() as cur:
        _role_ensure(cur, owner["user"], owner.get("password"), OWNER_ATTRS)
        _role_ensure(cur, app["user"], app.get("password"), APP_ATTRS)
        _role_ensure(cur, worker["user"], worker.get("password"), WORKER_ATTRS)
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", [dbname])
        if not cur.fetchone():
            cur.execute(
                sql.SQL("CREATE DATABASE {} OWNER {} ENCODING 'UTF8'").format(sql.Identifier(dbname), sql.Identifier(owner["user"]))
            )
    admin_db = {**conninfo_to_dict(admin_url), "dbname": dbname}
    with connect(**admin_db, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("ALTER SCHEMA public OWNER TO {}").format(sql.Identifier(owner["user"])))
        cur.execute(sql.SQL("REVOKE CREATE ON SCHEMA public FROM PUBLIC"))
        for role in (app["user"], worker["user"]):
            cur.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(dbname), sql.Identifier(role)))
            cur.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(sql.Identifier(role)))
