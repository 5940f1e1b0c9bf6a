"""A message may be written only into one of the writer's own conversations, and a conversation
may name only one of its owner's personas.

The policies of 0001 checked `user_id` alone: the web role could write a message carrying its own
user id into another user's conversation (and the search trigger would copy that conversation's
language onto it), or point its conversation at another user's persona. Same USING as before;
the WITH CHECK now also reads the referenced row under the writer's own policy.
"""

from django.db import migrations

CURRENT_USER = "NULLIF(current_setting('app.user_id', true), '')::uuid"
OWN_ROWS = f"user_id = {CURRENT_USER}"
MESSAGE_CHECK = (
    f"{OWN_ROWS} AND EXISTS (SELECT 1 FROM chat_conversation c WHERE c.id = chat_message.conversation_id AND c.user_id = {CURRENT_USER})"
)
CONVERSATION_CHECK = (
    f"{OWN_ROWS} AND (persona_id IS NULL OR EXISTS (SELECT 1 FROM chat_persona p"
    f" WHERE p.id = chat_conversation.persona_id AND p.user_id = {CURRENT_USER}))"
)


class Migration(migrations.Migration):
    dependencies = [("chat", "0008_pending_calls")]

    operations = [
        migrations.RunSQL(
            f"ALTER POLICY chat_message_owner ON chat_message WITH CHECK ({MESSAGE_CHECK})",
            f"ALTER POLICY chat_message_owner ON chat_message WITH CHECK ({OWN_ROWS})",
        ),
        migrations.RunSQL(
            f"ALTER POLICY chat_conversation_owner ON chat_conversation WITH CHECK ({CONVERSATION_CHECK})",
            f"ALTER POLICY chat_conversation_owner ON chat_conversation WITH CHECK ({OWN_ROWS})",
        ),
    ]
