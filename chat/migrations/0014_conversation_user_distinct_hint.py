"""Tell the planner a user's conversations are many, so a conversation is reached by its primary key.

The send's statements name a conversation by id, and the row policy adds `user_id = <the
caller>`. A prepared statement's generic plan estimates `user_id = $1` from the average
conversations per user; where most users have one conversation (trial sign-ups), that is one
row, the same as the primary key's, and PostgreSQL may take the (user, updated) index instead:
it then reads all of the caller's conversations to find one. Measured: with 30,000 users of one
conversation and one user of 3,000, the generic plan of the send's locking read went through
`chat_conv_user_updated` (chat/tests/test_conversation_plans.py). A fixed n_distinct of -0.05 (one
user a twentieth of the rows: twenty conversations a user to the planner) makes the primary key
the cheaper path whatever the real average; the list page, which filters by user and orders by
update time, keeps using the user's index. ANALYZE applies it now rather than at autovacuum's next pass.
"""

from django.db import migrations

FORWARD = "ALTER TABLE chat_conversation ALTER COLUMN user_id SET (n_distinct = -0.05); ANALYZE chat_conversation (user_id);"
REVERSE = "ALTER TABLE chat_conversation ALTER COLUMN user_id RESET (n_distinct); ANALYZE chat_conversation (user_id);"


class Migration(migrations.Migration):
    dependencies = [("chat", "0013_share_links_of_active_accounts_only")]

    operations = [migrations.RunSQL(FORWARD, REVERSE)]
