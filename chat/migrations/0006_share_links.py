"""Share links: a read-only link to one conversation, stored as the SHA-256 of its token.

The owner reads and writes their own links (`user_id` against the context), and may link only
a conversation of their own, in its own organization (the write check reads the conversation
under the owner's own policy). A reader is not the owner, so two SECURITY DEFINER functions open
a link given its token and grant nothing more: `chat_share_link_open` says whether the link is
live (not revoked, not expired) and whether this caller may see it (audience `anyone`, or a
member of the conversation's organization); `chat_share_messages` returns only that
conversation's title and its user and assistant messages (role, content, model), and only then.
"""

import uuid

import django.db.models.deletion
import django.utils.timezone
from django.db import migrations, models

from config.db.operations import CreatePolicy, EnableRowLevelSecurity

CURRENT_USER = "NULLIF(current_setting('app.user_id', true), '')::uuid"
OWN_ROWS = f"user_id = {CURRENT_USER}"
OWN_CONVERSATION = (
    f"user_id = {CURRENT_USER} AND EXISTS (SELECT 1 FROM chat_conversation c WHERE c.id = chat_sharelink.conversation_id"
    f" AND c.user_id = {CURRENT_USER} AND c.organization_id = chat_sharelink.organization_id)"
)

FUNCTIONS = """
CREATE FUNCTION chat_share_link_open(p_token text) RETURNS TABLE (link_id uuid, audience text, permitted boolean)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$ SELECT l.id, l.audience::text, (l.audience = 'anyone' OR c.organization_id = ANY (app_organization_ids()))
          FROM chat_sharelink l JOIN chat_conversation c ON c.id = l.conversation_id AND c.user_id = l.user_id
          WHERE l.token_hash = encode(sha256(convert_to(p_token, 'UTF8')), 'hex')
            AND l.revoked_at IS NULL AND (l.expires_at IS NULL OR l.expires_at > now()) $$;
CREATE FUNCTION chat_share_messages(p_token text)
    RETURNS TABLE (title text, sequence integer, role text, content text, model text)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$ SELECT c.title::text, m.sequence, m.role::text, m.content, m.model::text
          FROM chat_share_link_open(p_token) o
          JOIN chat_sharelink l ON l.id = o.link_id
          JOIN chat_conversation c ON c.id = l.conversation_id
          LEFT JOIN chat_message m ON m.conversation_id = c.id AND m.user_id = c.user_id
               AND m.role IN ('user', 'assistant') AND m.status IN ('complete', 'interrupted')
          WHERE o.permitted
          ORDER BY m.sequence $$;
REVOKE ALL ON FUNCTION chat_share_link_open(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat_share_messages(text) FROM PUBLIC;
"""
DROP_FUNCTIONS = """
DROP FUNCTION IF EXISTS chat_share_messages(text);
DROP FUNCTION IF EXISTS chat_share_link_open(text);
"""
SIGNATURES = ("chat_share_link_open(text)", "chat_share_messages(text)")


def grants(apps, schema_editor):
    from django.conf import settings

    app = schema_editor.quote_name(settings.DATABASES["default"]["USER"])
    schema_editor.execute(f"REVOKE TRUNCATE ON chat_sharelink FROM {app}")
    for signature in SIGNATURES:
        schema_editor.execute(f"GRANT EXECUTE ON FUNCTION {signature} TO {app}")


class Migration(migrations.Migration):
    dependencies = [("chat", "0005_message_search")]

    operations = [
        migrations.CreateModel(
            name="ShareLink",
            fields=[
                ("id", models.UUIDField(default=uuid.uuid4, editable=False, primary_key=True, serialize=False)),
                ("user_id", models.UUIDField(db_index=True)),
                ("organization_id", models.UUIDField()),
                ("token_hash", models.CharField(max_length=64, unique=True)),
                (
                    "audience",
                    models.CharField(
                        choices=[("organization", "Members of the organization (signed in)"), ("anyone", "Anyone with the link")],
                        default="organization",
                        max_length=16,
                    ),
                ),
                ("expires_at", models.DateTimeField(blank=True, null=True)),
                ("revoked_at", models.DateTimeField(blank=True, null=True)),
                ("created_at", models.DateTimeField(default=django.utils.timezone.now, editable=False)),
                (
                    "conversation",
                    models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name="share_links", to="chat.conversation"),
                ),
            ],
            options={
                "ordering": ["-created_at"],
                "constraints": [
                    models.CheckConstraint(
                        condition=models.Q(("audience__in", ["organization", "anyone"])), name="chat_sharelink_audience_known"
                    )
                ],
            },
        ),
        EnableRowLevelSecurity("chat_sharelink"),
        CreatePolicy("chat_sharelink", "chat_sharelink_owner", using=OWN_ROWS, check=OWN_CONVERSATION),
        migrations.RunSQL(FUNCTIONS, DROP_FUNCTIONS),
        migrations.RunPython(grants, migrations.RunPython.noop),
    ]
