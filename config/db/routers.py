"""Database routing: which role a query runs as, and where migrations run."""

from config.db import rls

OWNER_ALIAS = "owner"


class PrivilegedRouter:
    """The app role by default; the worker role only inside rls.privileged().

    Always names an alias (never None): Django would otherwise fall back to the alias an
    instance was loaded from, and an object read in a privileged block would keep
    writing as the worker role after the block.
    """

    def db_for_read(self, model, **hints):
        return rls.PRIVILEGED_ALIAS if rls.privileged_reason() else rls.APP_ALIAS

    db_for_write = db_for_read

    def allow_relation(self, obj1, obj2, **hints):
        return True  # every alias is the same database

    def allow_migrate(self, db, app_label, model_name=None, **hints):
        return db == OWNER_ALIAS  # DDL belongs to the owner role
