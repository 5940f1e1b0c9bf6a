"""Model instances from one raw query that reads several tables (a hot path's single round trip)."""

from __future__ import annotations

from django.db import connections


def columns_of(model, table_alias: str) -> str:
    """`alias.col, ...` for every concrete field, in the order `model_from_row` expects."""
    return ", ".join(f"{table_alias}.{f.column}" for f in model._meta.concrete_fields)


def model_from_row(model, alias: str, values):
    """An instance from the values `columns_of(model)` selected, through each field's database converter (JSON)."""
    connection = connections[alias]
    fields = model._meta.concrete_fields
    values = [f.from_db_value(v, None, connection) if hasattr(f, "from_db_value") else v for f, v in zip(fields, values, strict=True)]
    return model.from_db(alias, [f.attname for f in fields], values)
