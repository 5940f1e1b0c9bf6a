"""Changes made to several rows at once, one row at a time, so each leaves its audit entry."""

from django.db.models import QuerySet


def each_saved(queryset: QuerySet, **fields) -> list:
    """`queryset.update(**fields)`, row by row: analytics writes an audit entry from each save
    (post_save), and a bulk update sends no signal, so a key revoked by a deactivation, or an
    invitation withdrawn by a removal, left no record. The rows are locked first, in id order; a
    caller that also writes the user's row locks these first (user_deactivate, the password reset),
    the order a key minting a key takes. They are few (a user's keys, a member's invitations)."""
    rows = list(queryset.select_for_update().order_by("pk"))
    for row in rows:
        for name, value in fields.items():
            setattr(row, name, value)
        row.save(update_fields=list(fields))
    return rows
