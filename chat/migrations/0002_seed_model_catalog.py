"""The model catalog's first prices: list prices (USD per million tokens) of the main
OpenAI, Anthropic and Gemini models as published when this was written, plus `echo`
(free by definition: a price of $0 that is a price, not a missing one). Frozen here;
staff add later versions in admin."""

from datetime import UTC, datetime
from decimal import Decimal

from django.db import migrations

EFFECTIVE_FROM = datetime(2026, 11, 1, tzinfo=UTC)
# provider, model, display name, context window, input, output
PRICES = [
    ("echo", "echo-1", "Echo (offline)", 1_000_000, "0", "0"),
    ("openai", "gpt-5", "GPT-5", 400_000, "1.25", "10.00"),
    ("openai", "gpt-5-mini", "GPT-5 mini", 400_000, "0.25", "2.00"),
    ("openai", "gpt-5-nano", "GPT-5 nano", 400_000, "0.05", "0.40"),
    ("openai", "gpt-4.1", "GPT-4.1", 1_047_576, "2.00", "8.00"),
    ("openai", "gpt-4.1-mini", "GPT-4.1 mini", 1_047_576, "0.40", "1.60"),
    ("openai", "gpt-4.1-nano", "GPT-4.1 nano", 1_047_576, "0.10", "0.40"),
    ("openai", "gpt-4o", "GPT-4o", 128_000, "2.50", "10.00"),
    ("openai", "gpt-4o-mini", "GPT-4o mini", 128_000, "0.15", "0.60"),
    ("openai", "o3", "o3", 200_000, "2.00", "8.00"),
    ("openai", "o4-mini", "o4-mini", 200_000, "1.10", "4.40"),
    ("anthropic", "claude-opus-4-1", "Claude Opus 4.1", 200_000, "15.00", "75.00"),
    ("anthropic", "claude-sonnet-4-5", "Claude Sonnet 4.5", 200_000, "3.00", "15.00"),
    ("anthropic", "claude-sonnet-4-0", "Claude Sonnet 4", 200_000, "3.00", "15.00"),
    ("anthropic", "claude-haiku-4-5", "Claude Haiku 4.5", 200_000, "1.00", "5.00"),
    ("anthropic", "claude-3-5-haiku-latest", "Claude Haiku 3.5", 200_000, "0.80", "4.00"),
    ("gemini", "gemini-2.5-pro", "Gemini 2.5 Pro", 1_048_576, "1.25", "10.00"),
    ("gemini", "gemini-2.5-flash", "Gemini 2.5 Flash", 1_048_576, "0.30", "2.50"),
    ("gemini", "gemini-2.5-flash-lite", "Gemini 2.5 Flash-Lite", 1_048_576, "0.10", "0.40"),
    ("gemini", "gemini-2.0-flash", "Gemini 2.0 Flash", 1_048_576, "0.10", "0.40"),
]


def seed(apps, schema_editor):
    ModelPrice = apps.get_model("chat", "ModelPrice")
    for provider, model, name, window, input_price, output_price in PRICES:
        ModelPrice.objects.using(schema_editor.connection.alias).get_or_create(
            provider=provider,
            model=model,
            effective_from=EFFECTIVE_FROM,
            defaults={
                "display_name": name,
                "context_window": window,
                "input_price": Decimal(input_price),
                "output_price": Decimal(output_price),
            },
        )


def unseed(apps, schema_editor):
    ModelPrice = apps.get_model("chat", "ModelPrice")
    ModelPrice.objects.using(schema_editor.connection.alias).filter(
        effective_from=EFFECTIVE_FROM, model__in=[row[1] for row in PRICES]
    ).delete()


class Migration(migrations.Migration):
    dependencies = [("chat", "0001_conversations_messages_personas_catalog")]

    operations = [migrations.RunPython(seed, unseed)]
