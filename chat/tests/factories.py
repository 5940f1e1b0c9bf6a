"""Chat test data: the catalog as migrations 0002 and 0003 seed it (a transactional test's
flush removes seeded rows), and users on a chosen plan."""

from decimal import Decimal
from importlib import import_module

from chat.models import ModelPrice
from config.db import rls

SEED = import_module("chat.migrations.0002_seed_model_catalog")
CLASSES = import_module("chat.migrations.0003_model_price_classes_tiers_versions")


def make_catalog() -> dict[str, ModelPrice]:
    with rls.privileged(reason="test factory"):
        prices = {}
        for provider, model, name, window, input_price, output_price in SEED.PRICES:
            prices[model], _ = ModelPrice.objects.get_or_create(
                provider=provider,
                model=model,
                effective_from=SEED.EFFECTIVE_FROM,
                defaults={
                    "display_name": name,
                    "context_window": window,
                    "input_price": Decimal(input_price),
                    "output_price": Decimal(output_price),
                    **(CLASSES.class_prices(model) if model in CLASSES.CLASS_PRICES else {}),
                },
            )
        return prices


def price_add(*, provider: str, model: str, input_price: str, output_price: str, **fields) -> ModelPrice:
    with rls.privileged(reason="test factory"):
        return ModelPrice.objects.create(
            provider=provider,
            model=model,
            display_name=model,
            input_price=Decimal(input_price),
            output_price=Decimal(output_price),
            **fields,
        )
