"""Names refuse control characters and bidi controls (a validator only: no change in the database)."""

from django.db import migrations, models

import accounts.models


class Migration(migrations.Migration):
    dependencies = [("accounts", "0008_auto_join_verified_only")]

    operations = [
        migrations.AlterField(
            model_name="user",
            name="first_name",
            field=models.CharField(blank=True, max_length=150, validators=[accounts.models.validate_name]),
        ),
        migrations.AlterField(
            model_name="user",
            name="last_name",
            field=models.CharField(blank=True, max_length=150, validators=[accounts.models.validate_name]),
        ),
        migrations.AlterField(
            model_name="user",
            name="display_name",
            field=models.CharField(blank=True, max_length=150, validators=[accounts.models.validate_name]),
        ),
        migrations.AlterField(
            model_name="organization", name="name", field=models.CharField(max_length=200, validators=[accounts.models.validate_name])
        ),
    ]
