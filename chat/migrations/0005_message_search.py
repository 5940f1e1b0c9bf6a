"""Full-text search over messages and conversation titles (chat.selectors.conversation_search).

Each conversation stores the text-search configuration of its owner's language when it is
created (accounts_preferences.language, mapped below; `simple` when unknown), each message
that of its conversation, so a row is ranked and queried with the configuration it was indexed
with. The vectors are generated columns of those configurations; neither column is a model field
(chat stays portable), and triggers fill the configuration for every insert, whoever writes it
(the send path, an import, staff). GIN indexes on (user_id, vector) through btree_gin let one
index scan find a user's matching rows, through two functions that apply the row policy's own
condition (see below why).
"""

from django.db import migrations

# Frozen here: ISO 639-1 codes and English names to PostgreSQL 18's text-search configurations.
LANGUAGES = {
    "ar": "arabic",
    "hy": "armenian",
    "eu": "basque",
    "ca": "catalan",
    "da": "danish",
    "nl": "dutch",
    "en": "english",
    "fi": "finnish",
    "fr": "french",
    "de": "german",
    "el": "greek",
    "hi": "hindi",
    "hu": "hungarian",
    "id": "indonesian",
    "ga": "irish",
    "it": "italian",
    "lt": "lithuanian",
    "ne": "nepali",
    "no": "norwegian",
    "nb": "norwegian",
    "nn": "norwegian",
    "pt": "portuguese",
    "ro": "romanian",
    "ru": "russian",
    "sr": "serbian",
    "es": "spanish",
    "sv": "swedish",
    "ta": "tamil",
    "tr": "turkish",
    "yi": "yiddish",
}
WHEN = "\n".join(f"        WHEN l IN ('{code}', '{name}') THEN '{name}'::regconfig" for code, name in LANGUAGES.items())

# Indexed text is capped (a tsvector holds at most 1 MB; imported messages have no length limit).
INDEXED_CHARS = 100_000

FORWARD = f"""
CREATE EXTENSION IF NOT EXISTS btree_gin;

CREATE FUNCTION chat_search_config(language text) RETURNS regconfig
    LANGUAGE sql STABLE PARALLEL SAFE SET search_path = pg_catalog
AS $$
    SELECT CASE
{WHEN}
        ELSE 'simple'::regconfig
    END
    FROM (SELECT lower(split_part(split_part(btrim(coalesce(language, '')), '-', 1), '_', 1)) AS l) AS code
$$;

-- Definer (the owner, BYPASSRLS): the owner's language whoever inserts; it only sets NEW's configuration.
CREATE FUNCTION chat_conversation_search_config() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public
AS $$
BEGIN
    NEW.search_config := chat_search_config((SELECT p.language FROM accounts_preferences p WHERE p.user_id = NEW.user_id));
    RETURN NEW;
END
$$;

CREATE FUNCTION chat_message_search_config() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public
AS $$
BEGIN
    NEW.search_config := coalesce(
        (SELECT c.search_config FROM chat_conversation c WHERE c.id = NEW.conversation_id), 'simple'::regconfig);
    RETURN NEW;
END
$$;

REVOKE ALL ON FUNCTION chat_conversation_search_config() FROM PUBLIC;
REVOKE ALL ON FUNCTION chat_message_search_config() FROM PUBLIC;

ALTER TABLE chat_conversation ADD COLUMN search_config regconfig NOT NULL DEFAULT 'simple';
ALTER TABLE chat_message ADD COLUMN search_config regconfig NOT NULL DEFAULT 'simple';

UPDATE chat_conversation c SET search_config = chat_search_config(p.language)
    FROM accounts_preferences p WHERE p.user_id = c.user_id AND chat_search_config(p.language) <> 'simple'::regconfig;
UPDATE chat_message m SET search_config = c.search_config
    FROM chat_conversation c WHERE c.id = m.conversation_id AND c.search_config <> 'simple'::regconfig;

ALTER TABLE chat_conversation ADD COLUMN search_vector tsvector
    GENERATED ALWAYS AS (setweight(to_tsvector(search_config, left(title, {INDEXED_CHARS})), 'A')) STORED;
ALTER TABLE chat_message ADD COLUMN search_vector tsvector
    GENERATED ALWAYS AS (to_tsvector(search_config, left(content, {INDEXED_CHARS}))) STORED;

CREATE TRIGGER chat_conversation_search_config BEFORE INSERT ON chat_conversation
    FOR EACH ROW EXECUTE FUNCTION chat_conversation_search_config();
CREATE TRIGGER chat_message_search_config BEFORE INSERT ON chat_message
    FOR EACH ROW EXECUTE FUNCTION chat_message_search_config();

CREATE INDEX chat_conversation_search ON chat_conversation USING gin (user_id, search_vector);
CREATE INDEX chat_message_search ON chat_message USING gin (user_id, search_vector);

-- The matching rows of the context's user. Under row-level security a query's own conditions
-- must be leakproof to reach an index, and `@@` is not: the web role's plan fetched every row
-- of the user and filtered them (330 ms at p95 for a user with 21,000 messages). These run as
-- the owner with the policy's own condition, so the GIN index takes user and words at once;
-- no context, no rows. `any_query` (every configuration's query, OR-ed) finds the candidates;
-- each row is matched and ranked with `queries[i]`, the query of its own configuration `configs[i]`.
CREATE FUNCTION chat_search_messages(any_query tsquery, configs regconfig[], queries tsquery[])
    RETURNS TABLE (id uuid, conversation_id uuid, role varchar, created_at timestamptz, rank real)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public
AS $$
    SELECT m.id, m.conversation_id, m.role, m.created_at,
           ts_rank(m.search_vector, queries[array_position(configs, m.search_config)], 1)
    FROM chat_message m
    WHERE m.user_id = NULLIF(current_setting('app.user_id', true), '')::uuid
      AND m.search_vector @@ any_query
      AND m.search_vector @@ queries[array_position(configs, m.search_config)]
$$;

CREATE FUNCTION chat_search_conversations(any_query tsquery, configs regconfig[], queries tsquery[])
    RETURNS TABLE (id uuid, updated_at timestamptz, rank real)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public
AS $$
    SELECT c.id, c.updated_at, ts_rank(c.search_vector, queries[array_position(configs, c.search_config)])
    FROM chat_conversation c
    WHERE c.user_id = NULLIF(current_setting('app.user_id', true), '')::uuid
      AND c.search_vector @@ any_query
      AND c.search_vector @@ queries[array_position(configs, c.search_config)]
$$;
"""

REVERSE = """
DROP FUNCTION IF EXISTS chat_search_conversations(tsquery, regconfig[], tsquery[]);
DROP FUNCTION IF EXISTS chat_search_messages(tsquery, regconfig[], tsquery[]);
DROP INDEX IF EXISTS chat_message_search;
DROP INDEX IF EXISTS chat_conversation_search;
DROP TRIGGER IF EXISTS chat_message_search_config ON chat_message;
DROP TRIGGER IF EXISTS chat_conversation_search_config ON chat_conversation;
ALTER TABLE chat_message DROP COLUMN IF EXISTS search_vector, DROP COLUMN IF EXISTS search_config;
ALTER TABLE chat_conversation DROP COLUMN IF EXISTS search_vector, DROP COLUMN IF EXISTS search_config;
DROP FUNCTION IF EXISTS chat_message_search_config();
DROP FUNCTION IF EXISTS chat_conversation_search_config();
DROP FUNCTION IF EXISTS chat_search_config(text);
DROP EXTENSION IF EXISTS btree_gin;
"""


class Migration(migrations.Migration):
    dependencies = [("chat", "0004_response_cache_and_exact_costs"), ("accounts", "0003_preferences_invitations_sessions_keys_credentials")]

    operations = [migrations.RunSQL(FORWARD, REVERSE)]
