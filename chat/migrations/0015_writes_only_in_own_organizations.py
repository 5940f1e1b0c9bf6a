"""A conversation, and a reply the stale pass would meter, may be written only in an organization
the writer belongs to; a conversation's organization is fixed once made.

The policies of 0009 checked that the row and its conversation are the writer's, never that the
writer belongs to the conversation's organization. A member removed from an organization keeps
the conversations he had there (and knows its id): as the web role, under his own context, he
could insert a conversation billed to it, or a `streaming` reply in his old one with a price and
a prompt estimate in its metadata, and the privileged stale-stream pass would meter that reply
to the organization. Restrictive policies (ANDed with the owner policies) now refuse:
- a conversation inserted for an organization that is not the writer's;
- a `streaming` message inserted, or a message updated to `streaming`, in a conversation whose
  organization is not the writer's (a removed member's reply that was in flight is stored as
  `complete`, `failed` or `interrupted`, so it is never refused here);
and a trigger refuses any change of a conversation's organization (the app never makes one: its
calls were reserved and metered to the organization it was made in).
"""

from django.db import migrations

IN_OWN_ORGANIZATION = "organization_id = ANY ((SELECT app_organization_ids())::uuid[])"
CONVERSATION_IN_OWN_ORGANIZATION = (
    "EXISTS (SELECT 1 FROM chat_conversation c WHERE c.id = chat_message.conversation_id"
    " AND c.organization_id = ANY ((SELECT app_organization_ids())::uuid[]))"
)
NOT_STREAMING_OR_IN_OWN_ORGANIZATION = f"(status <> 'streaming' OR {CONVERSATION_IN_OWN_ORGANIZATION})"

FORWARD = f"""
CREATE POLICY chat_conversation_made_in_own_organization ON chat_conversation AS RESTRICTIVE FOR INSERT
    WITH CHECK ({IN_OWN_ORGANIZATION});
CREATE POLICY chat_message_streaming_inserted_in_own_organization ON chat_message AS RESTRICTIVE FOR INSERT
    WITH CHECK {NOT_STREAMING_OR_IN_OWN_ORGANIZATION};
CREATE POLICY chat_message_streaming_updated_in_own_organization ON chat_message AS RESTRICTIVE FOR UPDATE
    USING (true) WITH CHECK {NOT_STREAMING_OR_IN_OWN_ORGANIZATION};
CREATE FUNCTION chat_conversation_organization_fixed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'A conversation''s organization cannot change.' USING ERRCODE = 'check_violation';
END
$$;
CREATE TRIGGER chat_conversation_organization_fixed BEFORE UPDATE OF organization_id ON chat_conversation
    FOR EACH ROW WHEN (OLD.organization_id IS DISTINCT FROM NEW.organization_id)
    EXECUTE FUNCTION chat_conversation_organization_fixed();
"""

BACKWARD = """
DROP TRIGGER chat_conversation_organization_fixed ON chat_conversation;
DROP FUNCTION chat_conversation_organization_fixed();
DROP POLICY chat_message_streaming_updated_in_own_organization ON chat_message;
DROP POLICY chat_message_streaming_inserted_in_own_organization ON chat_message;
DROP POLICY chat_conversation_made_in_own_organization ON chat_conversation;
"""


class Migration(migrations.Migration):
    dependencies = [("chat", "0014_conversation_user_distinct_hint")]

    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
