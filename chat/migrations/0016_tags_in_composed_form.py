"""Stored tags take Unicode's composed form (NFC), each once.

A tag pasted from macOS ("café" as "e" + a combining accent, NFD) was not found by the same tag
typed (one "é"), and a conversation could hold both, drawn alike, side by side. Tags are now
normalized as they are stored and looked up (chat.models.tags_kept); this brings the stored ones
to that form. The rule is frozen here. Reversing it keeps the tags as they are: which form a
user once typed is not kept anywhere."""

import unicodedata

from django.db import migrations

BATCH = 1000


def _kept(tags: list) -> list:
    return list(dict.fromkeys(unicodedata.normalize("NFC", tag) if isinstance(tag, str) else tag for tag in tags))


def forwards(apps, schema_editor):
    alias = schema_editor.connection.alias
    Conversation = apps.get_model("chat", "Conversation")
    # Only tags with a character outside ASCII can change (ASCII is its own NFC).
    tagged = Conversation.objects.using(alias).extra(where=["tags::text ~ '[^[:ascii:]]'"]).only("id", "tags")
    changed = []
    for conversation in tagged.iterator(chunk_size=BATCH):
        kept = _kept(conversation.tags)
        if kept != conversation.tags:
            conversation.tags = kept
            changed.append(conversation)
        if len(changed) >= BATCH:
            Conversation.objects.using(alias).bulk_update(changed, ["tags"])
            changed = []
    if changed:
        Conversation.objects.using(alias).bulk_update(changed, ["tags"])


class Migration(migrations.Migration):
    dependencies = [("chat", "0015_writes_only_in_own_organizations")]

    operations = [migrations.RunPython(forwards, migrations.RunPython.noop)]
