"""Every table, view and partition in the schema: protected by row-level security, or on
the allowlist below with a reason and the most the app role may hold on it. Anything
else fails the audit (`make test` runs it before pytest)."""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import connections

from config.db.routers import OWNER_ALIAS

# Tables without a policy of their own: why each is safe, and the app role's most privileges.
ALLOWLIST = {
    "django_migrations": ("schema history, written by `migrate` as the owner; read by runserver's check", ("SELECT",)),
    "django_content_type": ("read-only catalog of models, written by `migrate`", ("SELECT",)),
    "auth_permission": ("read-only catalog of permissions, written by `migrate`", ("SELECT",)),
    "auth_group": ("staff-defined groups, no user data; edited in admin under the worker role", ("SELECT",)),
    "auth_group_permissions": ("which permissions a group has, no user data; edited in admin under the worker role", ("SELECT",)),
    "django_session": ("Django's session table, unused since sessions moved to accounts_session (accounts 0007)", ()),
    "accounts_session": ("sessions by key hash; forced RLS with no policy, reached only through accounts_session_* functions", ()),
    "analytics_rollupwatermark": ("rollup bookkeeping written by the worker role; no user data", ()),
    "analytics_usagerequest": ("metered request ids (once-only); forced RLS, no policy, no app grant; the ledger trigger writes them", ()),
    "analytics_reconciliationreport": ("staff-only platform data (provider bill vs ledger); forced RLS, no policy, no app grant", ()),
    "analytics_reconciliationline": ("staff-only platform data (a reconciliation report's lines); forced RLS, no policy, no app grant", ()),
}
PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")

TABLES_SQL = """
SELECT c.relname,
       c.relkind,
       c.relispartition AS is_partition,
       c.relrowsecurity AS rls_enabled,
       c.relforcerowsecurity AS rls_forced,
       COALESCE('security_invoker=true' = ANY (c.reloptions), false) AS security_invoker,
       COALESCE((SELECT array_agg(p.polname ORDER BY p.polname) FROM pg_policy p WHERE p.polrelid = c.oid), '{}') AS policies,
       ARRAY(SELECT priv FROM unnest(%s::text[]) AS priv WHERE has_table_privilege(%s, c.oid, priv)) AS app_privileges
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p', 'v', 'm')
ORDER BY c.relname
"""


def _problems(row: dict, app_role: str) -> list[str]:
    granted = row["app_privileges"]
    if row["is_partition"]:
        # Partitions do not inherit their parent's policies.
        return (
            [f"the {app_role} role has {', '.join(granted)} on this partition, which would bypass the parent's policies"] if granted else []
        )
    if row["relkind"] in ("r", "p") and row["rls_enabled"] and row["rls_forced"] and row["policies"]:
        return []
    if row["relkind"] == "v" and row["security_invoker"]:
        return []  # the view reads its tables under the caller's policies
    if row["relname"] in ALLOWLIST:
        _, allowed = ALLOWLIST[row["relname"]]
        excess = [p for p in granted if p not in allowed]
        if excess:
            most = ", ".join(allowed) or "no grant"
            return [f"allowlisted for the {app_role} role with {most}, but it holds {', '.join(excess)}: revoke that in a migration"]
        return []
    if row["relkind"] in ("v", "m"):
        if not granted:
            return []
        return [f"a view the {app_role} role can read without row-level security: make it security_invoker, revoke, or allowlist it"]
    if row["rls_enabled"] and row["rls_forced"]:
        return ["has row-level security but no policy, and is not on rls_audit's ALLOWLIST"]
    return ["has no row-level security (ENABLE + FORCE with a policy) and is not on rls_audit's ALLOWLIST with a reason"]


def rls_audit_rows(using: str = OWNER_ALIAS) -> list[dict]:
    """Each table with its RLS state and, in `problems`, why it fails the audit."""
    app_role = settings.DATABASES["default"]["USER"]
    with connections[using].cursor() as cur:
        cur.execute(TABLES_SQL, [list(PRIVILEGES), app_role])
        columns = [c.name for c in cur.description]
        rows = [dict(zip(columns, r)) for r in cur.fetchall()]
    for row in rows:
        row["problems"] = _problems(row, app_role)
    return rows


def _state(row: dict) -> str:
    if row["is_partition"]:
        return "partition"
    if row["relkind"] in ("v", "m"):
        return "view (invoker)" if row["security_invoker"] else "view"
    if row["rls_enabled"] and row["rls_forced"]:
        return "RLS forced"
    return "RLS enabled" if row["rls_enabled"] else "no RLS"


class Command(BaseCommand):
    help = "Show every table's row-level security; exit non-zero on a table neither protected nor allowlisted."

    def handle(self, *args, **options):
        rows = rls_audit_rows()
        failures = 0
        for row in rows:
            mark = "FAIL" if row["problems"] else "ok"
            detail = ", ".join(row["policies"]) or (f"allowlist: {ALLOWLIST[row['relname']][0]}" if row["relname"] in ALLOWLIST else "-")
            self.stdout.write(f"{mark:4}  {row['relname']:<45} {_state(row):<14} {detail}")
            for problem in row["problems"]:
                failures += 1
                self.stdout.write(f"      -> {row['relname']} {problem}")
        if failures:
            raise CommandError(f"rls_audit: {failures} problem(s) found; protect each table or allowlist it with a reason.")
        self.stdout.write(self.style.SUCCESS(f"rls_audit: {len(rows)} tables checked, all protected or allowlisted."))
