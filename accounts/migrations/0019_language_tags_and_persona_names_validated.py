"""A locale and a language are language tags, a default persona a name without control characters
or bidi controls (validators only: no change in the database)."""

from django.db import migrations, models

import accounts.models


class Migration(migrations.Migration):
    dependencies = [("accounts", "0018_session_live")]

    operations = [
        migrations.AlterField(
            model_name="user",
            name="locale",
            field=models.CharField(default="en", max_length=16, validators=[accounts.models.validate_language_tag]),
        ),
        migrations.AlterField(
            model_name="preferences",
            name="language",
            field=models.CharField(default="en", max_length=16, validators=[accounts.models.validate_language_tag]),
        ),
        migrations.AlterField(
            model_name="preferences",
            name="default_persona",
            field=models.CharField(blank=True, max_length=100, validators=[accounts.models.validate_name]),
        ),
    ]
