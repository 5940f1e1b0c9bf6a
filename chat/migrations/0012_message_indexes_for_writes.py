"""Fewer index entries per message write (a send inserts two rows and updates the reply's).

- The conversation's own index goes: the unique (conversation, sequence) index leads with the
  same column, so it serves every lookup by conversation, the cascade's included.
- (status, created_at) becomes created_at over streaming rows only: streams_close_stale is its
  one reader, and a finished reply no longer adds an entry to it."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("chat", "0011_one_export_and_one_import_at_a_time")]

    operations = [
        migrations.RemoveIndex(model_name="message", name="chat_message_status_created"),
        migrations.AlterField(
            model_name="message",
            name="conversation",
            field=models.ForeignKey(
                db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name="messages", to="chat.conversation"
            ),
        ),
        migrations.AddIndex(
            model_name="message",
            index=models.Index(condition=models.Q(("status", "streaming")), fields=["created_at"], name="chat_message_streaming_created"),
        ),
    ]
