"""A persona may opt in to the response cache (off by default); a message's and a
conversation's cost keep 1e-10 USD, as the ledger does, so their sums equal the ledger's."""

from decimal import Decimal

from django.db import migrations, models

EXACT = {"default": Decimal("0"), "max_digits": 20, "decimal_places": 10}


class Migration(migrations.Migration):
    dependencies = [("chat", "0003_model_price_classes_tiers_versions")]

    operations = [
        migrations.AddField(model_name="persona", name="response_cache", field=models.BooleanField(default=False, db_default=False)),
        migrations.AlterField(model_name="message", name="cost", field=models.DecimalField(**EXACT)),
        migrations.AlterField(model_name="conversation", name="total_cost", field=models.DecimalField(**EXACT)),
    ]
