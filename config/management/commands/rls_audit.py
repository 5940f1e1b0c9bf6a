"""List every table's row-level security and fail where a user's data is unprotected."""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import connections

from config.db.routers import OWNER_ALIAS

TABLES_SQL = """
SELECT c.relname,
       c.relkind = 'p' AS partitioned,
       c.relispartition AS is_partition,
       c.relrowsecurity AS rls_enabled,
       c.relforcerowsecurity AS rls_forced,
       EXISTS (SELECT 1 FROM pg_attribute a
               WHERE a.attrelid = c.oid AND NOT a.attisdropped
                 AND a.attname IN ('user_id', 'organization_id')) AS tenant_data,
       COALESCE((SELECT array_agg(p.polname ORDER BY p.polname) FROM pg_policy p WHERE p.polrelid = c.oid), '{}') AS policies,
       has_table_privilege(%s, c.oid, 'SELECT') OR has_table_privilege(%s, c.oid, 'INSERT')
         OR has_table_privilege(%s, c.oid, 'UPDATE') OR has_table_privilege(%s, c.oid, 'DELETE') AS app_granted
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p')
ORDER BY c.relname
"""


def rls_audit_rows(using: str = OWNER_ALIAS) -> list[dict]:
    """Each table with its RLS state and, in `problems`, why it fails the audit."""
    app_role = settings.DATABASES["default"]["USER"]
    with connections[using].cursor() as cur:
        cur.execute(TABLES_SQL, [app_role] * 4)
        columns = [c.name for c in cur.description]
        rows = [dict(zip(columns, r)) for r in cur.fetchall()]
    for row in rows:
        problems = []
        if row["is_partition"]:
            if row["app_granted"]:
                problems.append(f"the {app_role} role has a grant on this partition (it would bypass the parent's policies)")
        else:
            if row["tenant_data"] and not (row["rls_enabled"] and row["rls_forced"]):
                problems.append("holds user/organization data without ENABLE + FORCE ROW LEVEL SECURITY")
            if (row["tenant_data"] or row["rls_enabled"]) and not row["policies"]:
                problems.append("has row-level security but no policy")
        row["problems"] = problems
    return rows


class Command(BaseCommand):
    help = "Show every table's row-level security; exit non-zero when a user's data is unprotected."

    def handle(self, *args, **options):
        rows = rls_audit_rows()
        failures = 0
        for row in rows:
            if row["is_partition"]:
                state = "partition"
            elif row["rls_enabled"] and row["rls_forced"]:
                state = "RLS forced"
            elif row["rls_enabled"]:
                state = "RLS enabled"
            else:
                state = "no RLS"
            policies = ", ".join(row["policies"]) or "-"
            mark = "FAIL" if row["problems"] else "ok"
            self.stdout.write(f"{mark:4}  {row['relname']:<45} {state:<12} {policies}")
            for problem in row["problems"]:
                failures += 1
                self.stdout.write(f"      -> {problem}")
        if failures:
            raise CommandError(f"rls_audit: {failures} problem(s) found; tables holding user data must be protected.")
        self.stdout.write(self.style.SUCCESS(f"rls_audit: {len(rows)} tables checked, all protected."))
