"""Plans say whether Confab's response cache may answer their calls (off by default) and
whether a cached reply's tokens count against the monthly token limit (on by default)."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("billing", "0005_plan_spend_and_output_cap")]

    operations = [
        migrations.AddField(
            model_name="plan",
            name="response_cache",
            field=models.BooleanField(
                default=False, db_default=False, help_text="Identical calls may be answered from the response cache."
            ),
        ),
        migrations.AddField(
            model_name="plan",
            name="cache_hits_count",
            field=models.BooleanField(
                default=True,
                db_default=True,
                help_text="A reply from the response cache counts its tokens against the monthly token limit.",
            ),
        ),
    ]
