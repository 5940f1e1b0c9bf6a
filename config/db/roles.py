"""The three database roles (docs/architecture.md) and the database, created idempotently."""

from psycopg import ProgrammingError, connect, sql
from psycopg.conninfo import conninfo_to_dict

# Role attributes: the owner migrates and owns every table (BYPASSRLS because FORCE
# ROW LEVEL SECURITY binds owners too); `app` serves web requests under the policies;
# `worker` is the privileged role for Celery and staff tools.
OWNER_ATTRS = "LOGIN NOSUPERUSER NOCREATEROLE CREATEDB BYPASSRLS"
APP_ATTRS = "LOGIN NOSUPERUSER NOCREATEROLE NOCREATEDB NOBYPASSRLS"
WORKER_ATTRS = "LOGIN NOSUPERUSER NOCREATEROLE NOCREATEDB BYPASSRLS"


# What each URL must name, by the variable it is set in: the roles' names and the database's.
URL_NEEDS = {"DATABASE_ADMIN_URL": (), "DATABASE_URL": ("user", "dbname"), "DATABASE_APP_URL": ("user",), "DATABASE_WORKER_URL": ("user",)}
NEEDS_SAID = {"user": "user", "dbname": "database"}


class BootstrapRefused(ValueError):
    """A URL database_bootstrap cannot use; the message names its variable."""


def _url_parts(variable: str, url: str) -> dict:
    try:
        parts = conninfo_to_dict(url)
    except ProgrammingError:
        # Not psycopg's message: it quotes the URL, password and all.
        raise BootstrapRefused(f"{variable} is not a PostgreSQL URL (postgres://user:password@host:port/database).") from None
    missing = [NEEDS_SAID[name] for name in URL_NEEDS[variable] if not parts.get(name)]
    if missing:
        raise BootstrapRefused(
            f"{variable} names no {' and no '.join(missing)}: db_bootstrap creates the roles and the database these URLs name."
        )
    return parts


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
    """Create or update the roles and the database. Needs a superuser's URL; safe to rerun.
    BootstrapRefused: a URL lacks what it must name; psycopg's errors: the server's answer."""
    admin = _url_parts("DATABASE_ADMIN_URL", admin_url)
    owner, app, worker = (
        _url_parts(variable, url)
        for variable, url in (("DATABASE_URL", owner_url), ("DATABASE_APP_URL", app_url), ("DATABASE_WORKER_URL", worker_url))
    )
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
    admin_db = {**admin, "dbname": dbname}
    with connect(**admin_db, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("ALTER SCHEMA public OWNER TO {}").format(sql.Identifier(owner["user"])))
        cur.execute(sql.SQL("REVOKE CREATE ON SCHEMA public FROM PUBLIC"))
        for role in (app["user"], worker["user"]):
            cur.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(dbname), sql.Identifier(role)))
            cur.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(sql.Identifier(role)))
