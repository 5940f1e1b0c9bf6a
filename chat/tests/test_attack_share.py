"""Attack probes on share links: revoke racing open, hostile create inputs, and raw SQL as the
web role against migration 0006's functions with revoked, expired and planted rows."""

import json
import threading
import time
from datetime import timedelta

import psycopg
import pytest
from django.db import connections
from django.test import Client
from django.utils import timezone

from accounts.tests.test_api import key_client
from chat import sharing
from chat.models import ShareLink
from chat.tests import test_share
from chat.tests.test_share import _as, _share
from config.db import rls

pytestmark = pytest.mark.django_db(transaction=True)
world = test_share.world  # the fixture: Alice, Bob in her organization, Eve outside it


def test_after_revoke_returns_no_open_succeeds(world):
    link, token = _share(world.alice, world.conversation, audience="anyone")
    revoked_at = []
    seen: list[tuple[float, int]] = []
    stop = threading.Event()

    def opener():
        client = Client(raise_request_exception=False)
        try:
            while not stop.is_set():
                started = time.monotonic()
                seen.append((started, client.get(f"/s/{token}/").status_code))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=opener) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        while len(seen) < 15:
            time.sleep(0.01)
        sharing.share_link_revoke(user=world.alice, share_link=link)
        revoked_at.append(time.monotonic())
        while sum(1 for started, _ in list(seen) if started > revoked_at[0]) < 15:
            time.sleep(0.01)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    after = [status for started, status in seen if started > revoked_at[0]]
    assert {status for started, status in seen if started <= revoked_at[0]} <= {200, 404}
    assert len(after) >= 15 and set(after) == {404}, after


CREATE = {
    "year 99999": ({"expires_at": "99999-01-01T00:00:00Z"}, 400),
    "past": ({"expires_at": "2001-01-01T00:00:00Z"}, 400),
    "far future west of UTC": ({"expires_at": "9999-12-31T23:59:59-01:00"}, 400),
    "audience a list": ({"audience": ["anyone"]}, 400),
    "audience with NUL": ({"audience": "anyone\x00"}, 400),
    "expires_at a number": ({"expires_at": 1e308}, 400),
    "body a list": ([{"audience": "anyone"}], 400),
    "naive time (no time zone: refused, not read in the server's)": (
        {"expires_at": (timezone.now() + timedelta(days=1)).replace(tzinfo=None).isoformat()},
        400,
    ),
}


@pytest.mark.parametrize("name", list(CREATE))
def test_share_create_refuses_hostile_input_with_a_sentence(world, name):
    body, status = CREATE[name]
    response = key_client(world.alice, scopes=("chat:read", "chat:write")).post(
        f"/api/v1/conversations/{world.conversation.pk}/shares", json.dumps(body), content_type="application/json"
    )
    assert response.status_code == status, response.content[:300]
    if status == 400:
        assert response.json()["message"]
        with rls.privileged(reason="test"):
            assert not ShareLink.objects.exists()


def test_raw_sql_revoked_and_expired_tokens_open_nothing_even_for_the_owner(raw_app_connection, world):
    revoked, revoked_token = _share(world.alice, world.conversation, audience="anyone")
    expired, expired_token = _share(world.alice, world.conversation, audience="anyone")
    sharing.share_link_revoke(user=world.alice, share_link=revoked)
    with rls.privileged(reason="test: expire a link"):
        ShareLink.objects.filter(pk=expired.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    with raw_app_connection.cursor() as cur:
        for user in (world.alice, world.bob, None):
            _as(cur, user)
            for token in (revoked_token, expired_token):
                cur.execute("SELECT count(*) FROM chat_share_link_open(%s)", [token])
                assert cur.fetchone()[0] == 0
                cur.execute("SELECT count(*) FROM chat_share_messages(%s)", [token])
                assert cur.fetchone()[0] == 0
    raw_app_connection.rollback()


def test_raw_sql_a_message_planted_in_anothers_conversation_is_never_shared(raw_app_connection, world):
    """Eve's own row naming Alice's conversation is refused by the message policy (chat 0009), and
    the share functions read only the conversation owner's rows besides: it never shows."""
    link, token = _share(world.alice, world.conversation, audience="anyone")
    with raw_app_connection.cursor() as cur:
        _as(cur, world.eve)
        try:
            cur.execute(
                "INSERT INTO chat_message (id, conversation_id, user_id, sequence, role, content, provider, model, input_tokens,"
                " output_tokens, cost, latency_ms, status, error, metadata, created_at, imported)"
                " VALUES (gen_random_uuid(), %s, %s, 99, 'assistant', 'PLANTED by eve', '', '', 0, 0, 0, 0, 'complete', '', '{}', now(), false)",
                [world.conversation.pk, world.eve.pk],
            )
            raw_app_connection.commit()
        except psycopg.errors.InsufficientPrivilege:
            raw_app_connection.rollback()
        _as(cur, None)
        cur.execute("SELECT content FROM chat_share_messages(%s)", [token])
        assert "PLANTED by eve" not in [row[0] for row in cur.fetchall()]
    raw_app_connection.rollback()
    assert "PLANTED" not in Client().get(f"/s/{token}/").content.decode()
