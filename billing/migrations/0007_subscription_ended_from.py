"""A subscription row that ended keeps the status it ended from: a trial that ended unpaid is not
churn, and a trial converted this month stays a conversion when its row is later replaced (the
staff revenue figures). Rows that ended before this migration leave it blank (not known)."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("billing", "0006_plan_response_cache")]

    operations = [
        migrations.AddField(
            model_name="subscription",
            name="ended_from",
            field=models.CharField(
                max_length=16,
                blank=True,
                default="",
                db_default="",
                choices=[
                    ("trialing", "Trialing"),
                    ("active", "Active"),
                    ("past_due", "Past due"),
                    ("canceled", "Canceled"),
                    ("expired", "Expired"),
                ],
                help_text="The status the subscription ended from (blank: current, or ended before this was kept).",
            ),
        )
    ]
