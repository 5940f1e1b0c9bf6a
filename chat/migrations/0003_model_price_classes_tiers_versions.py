"""The catalog prices every token class: cache read, cache writes (5 minutes, 1 hour) and a
long-context tier (above a threshold of input tokens the tier's prices apply to the whole
call). The seeded models get their list prices (USD per million, frozen here, as published
when this was written). A price never changes in place: a trigger refuses an UPDATE of any
price column (staff add a new version; only `effective_to`, `is_active` and display fields change).
"""

from datetime import UTC, datetime
from decimal import Decimal

from django.db import migrations, models

EFFECTIVE_FROM = datetime(2026, 11, 1, tzinfo=UTC)  # migration 0002's seeded versions
CLASS_COLUMNS = ("cache_read_price", "cache_write_5m_price", "cache_write_1h_price")
TIER_COLUMNS = (
    "long_context_threshold",
    "long_context_input_price",
    "long_context_output_price",
    "long_context_cache_read_price",
    "long_context_cache_write_5m_price",
    "long_context_cache_write_1h_price",
)
# model: (cache read, cache write 5m, cache write 1h). OpenAI bills a cache write as ordinary
# input; Anthropic's writes are 1.25x (5 minutes) and 2x (1 hour) input, reads 0.1x; Gemini
# has no per-call write (explicit caches are billed apart).
CLASS_PRICES = {
    "gpt-5": ("0.125", "1.25", None),
    "gpt-5-mini": ("0.025", "0.25", None),
    "gpt-5-nano": ("0.005", "0.05", None),
    "gpt-4.1": ("0.50", "2.00", None),
    "gpt-4.1-mini": ("0.10", "0.40", None),
    "gpt-4.1-nano": ("0.025", "0.10", None),
    "gpt-4o": ("1.25", "2.50", None),
    "gpt-4o-mini": ("0.075", "0.15", None),
    "o3": ("0.50", "2.00", None),
    "o4-mini": ("0.275", "1.10", None),
    "claude-opus-4-1": ("1.50", "18.75", "30.00"),
    "claude-sonnet-4-5": ("0.30", "3.75", "6.00"),
    "claude-sonnet-4-0": ("0.30", "3.75", "6.00"),
    "claude-haiku-4-5": ("0.10", "1.25", "2.00"),
    "claude-3-5-haiku-latest": ("0.08", "1.00", "1.60"),
    "gemini-2.5-pro": ("0.125", None, None),
    "gemini-2.5-flash": ("0.03", None, None),
    "gemini-2.5-flash-lite": ("0.01", None, None),
    "gemini-2.0-flash": ("0.025", None, None),
}
# model: (threshold, input, output, cache read, cache write 5m, cache write 1h) above the threshold.
TIERS = {
    "claude-sonnet-4-5": (200_000, "6.00", "22.50", "0.60", "7.50", "12.00"),
    "claude-sonnet-4-0": (200_000, "6.00", "22.50", "0.60", "7.50", "12.00"),
    "gemini-2.5-pro": (200_000, "2.50", "15.00", "0.25", None, None),
}
PRICE_COLUMNS = ("provider", "model", "effective_from", "input_price", "output_price", *CLASS_COLUMNS, *TIER_COLUMNS)
_OLD = ", ".join(f"OLD.{column}" for column in PRICE_COLUMNS)
_NEW = ", ".join(f"NEW.{column}" for column in PRICE_COLUMNS)
VERSIONS_ONLY_SQL = f"""
CREATE FUNCTION chat_modelprice_versions_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF ROW({_NEW}) IS DISTINCT FROM ROW({_OLD}) THEN
        RAISE EXCEPTION 'A price never changes in place: add a new version of %/% instead.', OLD.provider, OLD.model
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER chat_modelprice_versions_only BEFORE UPDATE ON chat_modelprice
    FOR EACH ROW EXECUTE FUNCTION chat_modelprice_versions_only();
"""
VERSIONS_ONLY_REVERSE_SQL = """
DROP TRIGGER chat_modelprice_versions_only ON chat_modelprice;
DROP FUNCTION chat_modelprice_versions_only();
"""


def class_prices(model):
    """The columns this migration fills for a seeded model (the test factories build the catalog from it)."""
    fields = {column: None if value is None else Decimal(value) for column, value in zip(CLASS_COLUMNS, CLASS_PRICES[model])}
    if model in TIERS:
        threshold, *tier = TIERS[model]
        fields |= {"long_context_threshold": threshold}
        fields |= {column: None if value is None else Decimal(value) for column, value in zip(TIER_COLUMNS[1:], tier)}
    return fields


def fill(apps, schema_editor):
    ModelPrice = apps.get_model("chat", "ModelPrice")
    seeded = ModelPrice.objects.using(schema_editor.connection.alias).filter(effective_from=EFFECTIVE_FROM)
    for model in CLASS_PRICES:
        seeded.filter(model=model).update(**class_prices(model))


def unfill(apps, schema_editor):
    ModelPrice = apps.get_model("chat", "ModelPrice")
    seeded = ModelPrice.objects.using(schema_editor.connection.alias).filter(effective_from=EFFECTIVE_FROM, model__in=list(CLASS_PRICES))
    seeded.update(**dict.fromkeys(CLASS_COLUMNS + TIER_COLUMNS))


class Migration(migrations.Migration):
    dependencies = [("chat", "0002_seed_model_catalog")]

    operations = [
        migrations.AddField(
            model_name="modelprice",
            name="cache_read_price",
            field=models.DecimalField(blank=True, decimal_places=6, max_digits=12, null=True),
        ),
        migrations.AddField(
            model_name="modelprice",
            name="cache_write_1h_price",
            field=models.DecimalField(blank=True, decimal_places=6, max_digits=12, null=True),
        ),
        migrations.AddField(
            model_name="modelprice",
            name="cache_write_5m_price",
            field=models.DecimalField(blank=True, decimal_places=6, max_digits=12, null=True),
        ),
        migrations.AddField(
            model_name="modelprice",
            name="long_context_cache_read_price",
            field=models.DecimalField(blank=True, decimal_places=6, max_digits=12, null=True),
        ),
        migrations.AddField(
            model_name="modelprice",
            name="long_context_cache_write_1h_price",
            field=models.DecimalField(blank=True, decimal_places=6, max_digits=12, null=True),
        ),
        migrations.AddField(
            model_name="modelprice",
            name="long_context_cache_write_5m_price",
            field=models.DecimalField(blank=True, decimal_places=6, max_digits=12, null=True),
        ),
        migrations.AddField(
            model_name="modelprice",
            name="long_context_input_price",
            field=models.DecimalField(blank=True, decimal_places=6, max_digits=12, null=True),
        ),
        migrations.AddField(
            model_name="modelprice",
            name="long_context_output_price",
            field=models.DecimalField(blank=True, decimal_places=6, max_digits=12, null=True),
        ),
        migrations.AddField(
            model_name="modelprice", name="long_context_threshold", field=models.PositiveIntegerField(blank=True, null=True)
        ),
        migrations.AddConstraint(
            model_name="modelprice",
            constraint=models.CheckConstraint(
                condition=models.Q(
                    ("cache_read_price__gte", 0),
                    ("cache_write_1h_price__gte", 0),
                    ("cache_write_5m_price__gte", 0),
                    ("long_context_cache_read_price__gte", 0),
                    ("long_context_cache_write_1h_price__gte", 0),
                    ("long_context_cache_write_5m_price__gte", 0),
                    ("long_context_input_price__gte", 0),
                    ("long_context_output_price__gte", 0),
                ),
                name="chat_modelprice_class_prices_not_negative",
                violation_error_message="Prices cannot be negative.",
            ),
        ),
        migrations.AddConstraint(
            model_name="modelprice",
            constraint=models.CheckConstraint(
                condition=models.Q(
                    models.Q(
                        ("long_context_cache_read_price__isnull", True),
                        ("long_context_cache_write_1h_price__isnull", True),
                        ("long_context_cache_write_5m_price__isnull", True),
                        ("long_context_input_price__isnull", True),
                        ("long_context_output_price__isnull", True),
                        ("long_context_threshold__isnull", True),
                    ),
                    models.Q(
                        ("long_context_input_price__isnull", False),
                        ("long_context_output_price__isnull", False),
                        ("long_context_threshold__gt", 0),
                    ),
                    _connector="OR",
                ),
                name="chat_modelprice_tier_needs_threshold",
                violation_error_message="A long-context tier needs its threshold (above 0) and both its input and output prices.",
            ),
        ),
        migrations.RunPython(fill, unfill),
        migrations.RunSQL(VERSIONS_ONLY_SQL, VERSIONS_ONLY_REVERSE_SQL),
    ]
