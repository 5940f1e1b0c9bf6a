"""Stripe events are stored when received and marked when applied: `received_at` is new,
`processed_at` stays empty until the task has applied the event (rows stored before this
migration were applied when stored, so they keep their time)."""

import django.utils.timezone
from django.db import migrations, models


def received_from_processed(apps, schema_editor):
    StripeEvent = apps.get_model("billing", "StripeEvent")
    StripeEvent.objects.using(schema_editor.connection.alias).update(received_at=models.F("processed_at"))


def processed_from_received(apps, schema_editor):
    # Going back, processed_at is required again: unapplied events keep their arrival time.
    StripeEvent = apps.get_model("billing", "StripeEvent")
    StripeEvent.objects.using(schema_editor.connection.alias).filter(processed_at__isnull=True).update(processed_at=models.F("received_at"))


class Migration(migrations.Migration):
    dependencies = [("billing", "0002_seed_plans_and_free_subscriptions")]

    operations = [
        migrations.AddField(model_name="stripeevent", name="received_at", field=models.DateTimeField(default=django.utils.timezone.now)),
        migrations.RunPython(received_from_processed, migrations.RunPython.noop),
        migrations.AlterField(model_name="stripeevent", name="processed_at", field=models.DateTimeField(blank=True, null=True)),
        migrations.RunPython(migrations.RunPython.noop, processed_from_received),
        migrations.AlterModelOptions(name="stripeevent", options={"ordering": ["-received_at"]}),
    ]
