"""A share link opens only while its owner's account is active: a deactivated or deleted account
cannot sign in to revoke its links, and its `anyone` links went on serving its conversations
(chat_share_link_open checked the link and the conversation, never the owner). Reactivating the
account brings its links back, as they were. The function's result type is unchanged, so its
grants stay; reversing puts the 0006 definition back."""

from django.db import migrations

OPEN_CHECKING_THE_OWNER = """
CREATE OR REPLACE FUNCTION chat_share_link_open(p_token text) RETURNS TABLE (link_id uuid, audience text, permitted boolean)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$ SELECT l.id, l.audience::text, (l.audience = 'anyone' OR c.organization_id = ANY (app_organization_ids()))
          FROM chat_sharelink l JOIN chat_conversation c ON c.id = l.conversation_id AND c.user_id = l.user_id
          JOIN accounts_user u ON u.id = l.user_id AND u.is_active AND u.deleted_at IS NULL
          WHERE l.token_hash = encode(sha256(convert_to(p_token, 'UTF8')), 'hex')
            AND l.revoked_at IS NULL AND (l.expires_at IS NULL OR l.expires_at > now()) $$;
"""
OPEN_AS_IN_0006 = """
CREATE OR REPLACE FUNCTION chat_share_link_open(p_token text) RETURNS TABLE (link_id uuid, audience text, permitted boolean)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$ SELECT l.id, l.audience::text, (l.audience = 'anyone' OR c.organization_id = ANY (app_organization_ids()))
          FROM chat_sharelink l JOIN chat_conversation c ON c.id = l.conversation_id AND c.user_id = l.user_id
          WHERE l.token_hash = encode(sha256(convert_to(p_token, 'UTF8')), 'hex')
            AND l.revoked_at IS NULL AND (l.expires_at IS NULL OR l.expires_at > now()) $$;
"""


class Migration(migrations.Migration):
    dependencies = [("chat", "0012_message_indexes_for_writes"), ("accounts", "0013_api_key_signin_in_one_query")]

    operations = [migrations.RunSQL(OPEN_CHECKING_THE_OWNER, OPEN_AS_IN_0006)]
