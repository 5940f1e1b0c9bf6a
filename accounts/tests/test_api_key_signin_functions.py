"""The two SECURITY DEFINER functions an API key signs in with (accounts 0013), called as the
web role with raw SQL and no context: they answer the key's row and its owner's row only to
whoever presents that key's prefix and hash, and nothing for any other input."""

import pytest

from accounts.services import api_key_create
from accounts.tests.factories import make_user
from config.crypto import token_digest
from config.db import rls

pytestmark = pytest.mark.django_db(transaction=True)


def _key(user):
    with rls.privileged(reason="test: issue an API key"):
        key, secret = api_key_create(user=user, name="k", scopes=["chat:read"])
    return key, secret


def test_the_functions_answer_only_the_holder_of_the_key(raw_app_connection):
    alice, bob = make_user(email="alice@example.com"), make_user(email="bob@example.com")
    alice_key, alice_secret = _key(alice)
    bob_key, bob_secret = _key(bob)
    with raw_app_connection.cursor() as cur:
        cur.execute("SELECT current_setting('app.user_id', true)")
        assert not cur.fetchone()[0]  # no context at all
        cur.execute("SELECT id FROM accounts_api_key_row(%s, %s)", [alice_key.prefix, token_digest(alice_secret)])
        assert cur.fetchall() == [(alice_key.pk,)]
        cur.execute("SELECT id, email FROM accounts_api_key_owner(%s, %s)", [alice_key.prefix, token_digest(alice_secret)])
        assert cur.fetchall() == [(alice.pk, "alice@example.com")]
        # Bob's prefix with Alice's hash, a guessed hash, or a prefix alone: nothing.
        for prefix, digest in ((bob_key.prefix, token_digest(alice_secret)), (bob_key.prefix, "0" * 64), (bob_key.prefix, "")):
            cur.execute("SELECT count(*) FROM accounts_api_key_row(%s, %s)", [prefix, digest])
            assert cur.fetchone()[0] == 0
            cur.execute("SELECT count(*) FROM accounts_api_key_owner(%s, %s)", [prefix, digest])
            assert cur.fetchone()[0] == 0
        # And the tables themselves stay closed to the role without a context.
        cur.execute("SELECT count(*) FROM accounts_apikey")
        assert cur.fetchone()[0] == 0
    raw_app_connection.rollback()
