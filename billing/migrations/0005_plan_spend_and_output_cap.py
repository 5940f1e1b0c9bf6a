"""Plans gain a monthly spend budget (USD) and a cap on one call's output tokens; both
empty by default (no spend budget; the CHAT_MAX_OUTPUT_TOKENS setting caps output)."""

import django.core.validators
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("billing", "0004_revenue_snapshot")]

    operations = [
        migrations.AddField(
            model_name="plan",
            name="monthly_spend",
            field=models.DecimalField(
                blank=True, decimal_places=2, max_digits=12, null=True, validators=[django.core.validators.MinValueValidator(0)]
            ),
        ),
        migrations.AddField(
            model_name="plan",
            name="max_output_tokens",
            field=models.IntegerField(blank=True, null=True, validators=[django.core.validators.MinValueValidator(1)]),
        ),
    ]
