"""A persona may opt in to the response cache (off by default)."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("chat", "0002_seed_model_catalog")]

    operations = [migrations.AddField(model_name="persona", name="response_cache", field=models.BooleanField(default=False))]
