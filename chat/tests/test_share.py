"""Share links: an owner shares a conversation read-only at /s/<token>/ with members of its
organization (signed in, the default) or anyone; revoke, expiry and an unknown link are the same
404 at once, also after the page was cached; the page names no account, is not indexed and is
cached; another user can neither create, list nor revoke someone's links (pages, API, raw SQL as
the web role); only the token's hash is stored."""

import hashlib
import re
from datetime import timedelta

import psycopg
import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts import services as accounts_services
from accounts.tests.factories import make_user
from accounts.tests.test_api import assert_error, key_client, session_client
from analytics.tests.usage_data import join
from chat import services, sharing
from chat.models import Message, ShareLink
from config.db import rls

pytestmark = pytest.mark.django_db(transaction=True)
API = "/api/v1"
TOKEN_IN_URL = re.compile(r"/s/([A-Za-z0-9_-]{43})/")


class World:
    pass


@pytest.fixture
def world(catalog, plans):
    """Alice owns a conversation in Acme (Bob is a member there); Eve is in no organization of hers."""
    w = World()
    w.alice = make_user(email="alice.owner@example.com", display_name="Alice Liddell")
    w.bob = make_user(email="bob.member@example.com", display_name="Bob Member")
    w.eve = make_user(email="eve.outsider@example.com", display_name="Eve Outsider")
    with rls.privileged(reason="test: organizations"):
        w.acme = accounts_services.organization_create(user=w.alice, name="Acme Hidden Labs")
    join(w.acme, w.bob)
    w.conversation = services.conversation_create(user=w.alice, title="Lisbon trip plans", organization_id=w.acme.pk)
    services.message_send(user=w.alice, conversation_id=w.conversation.pk, content="Where should we eat tonight")
    return w


def _signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _share(user, conversation, **fields) -> tuple[ShareLink, str]:
    """A link through the page, as the owner makes it; its token read from the page it answers."""
    response = _signed_in(user).post(reverse("chat:share-conversation", args=[conversation.pk]), fields)
    assert response.status_code == 201, response.content.decode()[:500]
    token = TOKEN_IN_URL.search(response.content.decode()).group(1)
    with rls.privileged(reason="test: the link made"):
        return ShareLink.objects.get(token_hash=hashlib.sha256(token.encode()).hexdigest()), token


def _open(client: Client, token: str):
    return client.get(f"/s/{token}/")


def _without_csrf(page: str) -> str:
    return re.sub(r"\b[A-Za-z0-9]{64}\b", "", page)  # the masked CSRF token differs on every page


def _not_found_page(response) -> str:
    assert response.status_code == 404
    return response.content.decode()


def test_anyone_link_opens_signed_out_with_the_messages_and_no_account_details(world):
    link, token = _share(world.alice, world.conversation, audience="anyone")
    assert link.audience == "anyone" and link.user_id == world.alice.pk and link.organization_id == world.acme.pk
    response = _open(Client(), token)
    assert response.status_code == 200
    html = response.content.decode()
    assert "Lisbon trip plans" in html and "Where should we eat tonight" in html and "You said: Where should we eat tonight" in html
    assert "echo-1" in html  # the model of the reply
    for private in (
        world.alice.email,
        "Alice Liddell",
        "Acme Hidden Labs",
        str(world.alice.pk),
        str(world.acme.pk),
        str(world.conversation.pk),
        "tokens",
        "$",
        "Log out",
        "csrf",
    ):
        assert private not in html, private
    assert response["X-Robots-Tag"] == "noindex, nofollow"
    assert '<meta name="robots" content="noindex">' in html
    assert response["Referrer-Policy"] == "no-referrer"
    assert response["Cache-Control"] == "public, no-cache"
    assert "Set-Cookie" not in response.headers
    # A signed-in reader of an `anyone` link gets the same page: nothing of theirs is in it either.
    assert _open(_signed_in(world.eve), token).content.decode() == html


def test_organization_link_redirects_signed_out_404s_for_a_non_member_and_opens_for_a_member(world):
    link, token = _share(world.alice, world.conversation, audience="organization")
    assert link.audience == "organization"
    signed_out = _open(Client(), token)
    assert signed_out.status_code == 302 and signed_out["Location"] == f"/accounts/login/?next=/s/{token}/"
    assert _open(_signed_in(world.eve), token).status_code == 404
    member = _open(_signed_in(world.bob), token)
    assert member.status_code == 200 and "Where should we eat tonight" in member.content.decode()
    assert member["Cache-Control"] == "private, no-cache"
    assert "Bob Member" not in member.content.decode() and world.bob.email not in member.content.decode()
    assert _open(_signed_in(world.alice), token).status_code == 200


def test_the_default_audience_is_the_organization(world):
    created = session_client(world.alice).post(f"{API}/conversations/{world.conversation.pk}/shares", {}, format="json")
    assert created.status_code == 201 and created.json()["audience"] == "organization"
    form = _signed_in(world.alice).get(reverse("chat:share-conversation", args=[world.conversation.pk])).content.decode()
    assert re.search(r'<input[^>]*value="organization"[^>]*checked', form)
    assert _signed_in(world.alice).post(reverse("chat:share-conversation", args=[world.conversation.pk])).status_code == 400


def test_revoke_is_a_404_at_once_even_after_the_page_was_cached(world):
    link, token = _share(world.alice, world.conversation, audience="anyone")
    reader = Client()
    assert _open(reader, token).status_code == 200
    assert sharing.share_page_cached(link_id=link.pk) is not None  # the rendered page is kept
    revoked = _signed_in(world.alice).post(reverse("chat:share-revoke", args=[link.pk]))
    assert revoked.status_code == 302
    assert _open(reader, token).status_code == 404
    assert sharing.share_page_cached(link_id=link.pk) is None
    with rls.privileged(reason="test: the link"):
        assert ShareLink.objects.get(pk=link.pk).revoked_at is not None


def test_a_link_ended_outside_the_service_stops_at_once_although_its_page_is_cached(world):
    """The link is checked on every request: a revoke from admin or SQL, or a deleted conversation, needs no cache purge."""
    link, token = _share(world.alice, world.conversation, audience="anyone")
    assert _open(Client(), token).status_code == 200
    with rls.privileged(reason="test: revoke behind the service's back"):
        ShareLink.objects.filter(pk=link.pk).update(revoked_at=timezone.now())
    assert sharing.share_page_cached(link_id=link.pk) is not None
    assert _open(Client(), token).status_code == 404

    other, other_token = _share(world.alice, world.conversation, audience="anyone")
    assert _open(Client(), other_token).status_code == 200
    services.conversation_delete(user=world.alice, conversation=world.conversation)
    assert _open(Client(), other_token).status_code == 404
    with rls.privileged(reason="test: links go with their conversation"):
        assert not ShareLink.objects.filter(pk=other.pk).exists()


def test_expired_revoked_unknown_and_non_member_are_the_same_404(world):
    _, live = _share(world.alice, world.conversation, audience="anyone", expires="1h")
    expiring, expired_token = _share(world.alice, world.conversation, audience="anyone", expires="1d")
    assert timezone.now() + timedelta(hours=23) < expiring.expires_at <= timezone.now() + timedelta(days=1)
    assert _open(Client(), expired_token).status_code == 200
    with rls.privileged(reason="test: time passes"):
        ShareLink.objects.filter(pk=expiring.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    revoked, revoked_token = _share(world.alice, world.conversation, audience="anyone")
    sharing.share_link_revoke(user=world.alice, share_link=revoked)
    _, members_only = _share(world.alice, world.conversation, audience="organization")

    assert _open(Client(), live).status_code == 200
    signed_out = {_not_found_page(_open(Client(), t)) for t in (expired_token, revoked_token, "A" * 43)}
    assert len({_without_csrf(page) for page in signed_out}) == 1
    eve = _signed_in(world.eve)
    assert _without_csrf(_not_found_page(_open(eve, members_only))) == _without_csrf(_not_found_page(_open(eve, "A" * 43)))
    for junk in ("short", "A" * 42 + "%00", "%0A" * 43, "A" * 500, "A" * 42 + "%C3%A9"):
        assert Client().get(f"/s/{junk}/").status_code == 404, junk


def test_only_user_and_assistant_messages_that_ended_are_shown(world):
    with rls.privileged(reason="test: messages of every kind"):
        for sequence, role, status, content in [
            (10, "system", "complete", "SYSTEM PROMPT"),
            (11, "assistant", "streaming", "STILL ARRIVING"),
            (12, "assistant", "failed", "FAILED PART"),
            (13, "assistant", "interrupted", "STOPPED PART"),
        ]:
            Message.objects.create(
                conversation_id=world.conversation.pk, user_id=world.alice.pk, sequence=sequence, role=role, status=status, content=content
            )
    _, token = _share(world.alice, world.conversation, audience="anyone")
    html = _open(Client(), token).content.decode()
    assert "STOPPED PART" in html
    assert "SYSTEM PROMPT" not in html and "STILL ARRIVING" not in html and "FAILED PART" not in html


def test_the_token_is_stored_only_as_its_hash(world):
    response = session_client(world.alice).post(f"{API}/conversations/{world.conversation.pk}/shares", {}, format="json")
    assert response.status_code == 201
    token = TOKEN_IN_URL.search(response.json()["url"]).group(1)
    with rls.privileged(reason="test: every column of the row"), rls.atomic():
        from django.db import connections

        with connections["privileged"].cursor() as cur:
            cur.execute("SELECT * FROM chat_sharelink")
            rows = cur.fetchall()
    assert len(rows) == 1
    assert hashlib.sha256(token.encode()).hexdigest() in rows[0]
    assert not any(token in str(value) for value in rows[0])
    assert "token" not in response.json() and "token_hash" not in response.json()
    listed = session_client(world.alice).get(f"{API}/shares").json()["results"]
    assert token not in str(listed) and "url" not in listed[0]


def test_api_creates_lists_and_revokes_and_validates(world):
    client = key_client(world.alice, scopes=["chat:read", "chat:write"])
    url = f"{API}/conversations/{world.conversation.pk}/shares"
    later = (timezone.now() + timedelta(days=2)).isoformat()
    created = client.post(url, {"audience": "anyone", "expires_at": later}, format="json")
    assert created.status_code == 201, created.json()
    body = created.json()
    assert body["audience"] == "anyone" and body["status"] == "active" and body["conversation_id"] == str(world.conversation.pk)
    assert body["url"].startswith("http://testserver/s/")
    assert client.get(body["url"].removeprefix("http://testserver")).status_code == 200

    assert_error(client.post(url, {"audience": "public"}, format="json"), 400, "audience")
    assert_error(client.post(url, {"audience": "any\x00one"}, format="json"), 400)
    assert_error(client.post(url, {"expires_at": (timezone.now() - timedelta(minutes=1)).isoformat()}, format="json"), 400, "future")
    assert_error(client.post(url, {"expires_at": "next tuesday"}, format="json"), 400)
    assert_error(client.post(url, {"audience": [[[["anyone"]]]]}, format="json"), 400)

    listed = client.get(f"{API}/shares").json()
    assert listed["count"] == 1 and listed["results"][0]["id"] == body["id"]
    assert client.delete(f"{API}/shares/{body['id']}").status_code == 204
    assert client.get(body["url"].removeprefix("http://testserver")).status_code == 404
    assert client.get(f"{API}/shares").json()["results"][0]["status"] == "revoked"
    assert client.delete(f"{API}/shares/{body['id']}").status_code == 204  # revoking twice is still revoked

    reader = key_client(world.alice, scopes=["chat:read"])
    assert reader.get(f"{API}/shares").status_code == 200
    assert_error(reader.post(url, {}, format="json"), 403)
    assert_error(reader.delete(f"{API}/shares/{body['id']}"), 403)


def test_another_user_cannot_create_list_or_revoke_someones_links_api_and_pages(world):
    link, token = _share(world.alice, world.conversation, audience="anyone")
    for intruder in (world.eve, world.bob):  # a fellow member of the organization is no owner either
        api = session_client(intruder)
        assert_error(api.post(f"{API}/conversations/{world.conversation.pk}/shares", {}, format="json"), 404)
        assert_error(api.delete(f"{API}/shares/{link.pk}"), 404)
        assert api.get(f"{API}/shares").json()["count"] == 0
        pages = _signed_in(intruder)
        assert pages.get(reverse("chat:share-conversation", args=[world.conversation.pk])).status_code == 404
        assert pages.post(reverse("chat:share-conversation", args=[world.conversation.pk]), {"audience": "anyone"}).status_code == 404
        assert pages.post(reverse("chat:share-revoke", args=[link.pk])).status_code == 404
        listing = pages.get(reverse("chat:shares"))
        assert listing.status_code == 200 and "Lisbon trip plans" not in listing.content.decode()
    assert _open(Client(), token).status_code == 200
    with rls.privileged(reason="test: links"):
        assert ShareLink.objects.count() == 1 and ShareLink.objects.get().revoked_at is None
    assert Client().get(reverse("chat:shares")).status_code == 302  # signed out: log in first


def _as(cur, user):
    cur.execute("SELECT set_config('app.user_id', %s, true)", [str(user.pk) if user else ""])


def test_raw_sql_as_the_web_role_sees_and_writes_only_its_own_links(raw_app_connection, world):
    link, token = _share(world.alice, world.conversation, audience="organization")
    eves = services.conversation_create(user=world.eve, title="Eve's own")
    with raw_app_connection.cursor() as cur:
        _as(cur, None)
        cur.execute("SELECT count(*) FROM chat_sharelink")
        assert cur.fetchone()[0] == 0
        _as(cur, world.eve)
        cur.execute("SELECT count(*) FROM chat_sharelink")
        assert cur.fetchone()[0] == 0
        cur.execute("UPDATE chat_sharelink SET revoked_at = now(), audience = 'anyone'")
        assert cur.rowcount == 0
        cur.execute("DELETE FROM chat_sharelink")
        assert cur.rowcount == 0
        insert = (
            "INSERT INTO chat_sharelink (id, conversation_id, user_id, organization_id, token_hash, audience, created_at)"
            " VALUES (gen_random_uuid(), %s, %s, %s, %s, 'anyone', now())"
        )
        # Eve's own link to Alice's conversation would open it to anyone: refused by the write check.
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            cur.execute(insert, [world.conversation.pk, world.eve.pk, world.acme.pk, "e" * 64])
        raw_app_connection.rollback()
        _as(cur, world.eve)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):  # her conversation, filed under another organization
            cur.execute(insert, [eves.pk, world.eve.pk, world.acme.pk, "f" * 64])
        raw_app_connection.rollback()
        _as(cur, world.eve)
        cur.execute(insert, [eves.pk, world.eve.pk, eves.organization_id, "0" * 64])  # her own, in its organization: allowed
        # Holding the token, a non-member learns that it is live and not permitted, and reads nothing.
        cur.execute("SELECT permitted FROM chat_share_link_open(%s)", [token])
        assert cur.fetchall() == [(False,)]
        cur.execute("SELECT * FROM chat_share_messages(%s)", [token])
        assert cur.fetchall() == []
        cur.execute("SELECT * FROM chat_share_messages(%s)", [link.token_hash])  # the hash is no token
        assert cur.fetchall() == []
        _as(cur, world.bob)
        cur.execute("SELECT role, content FROM chat_share_messages(%s)", [token])
        assert ("user", "Where should we eat tonight") in cur.fetchall()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            cur.execute("TRUNCATE chat_sharelink")
    raw_app_connection.rollback()


def test_the_share_control_and_the_settings_list(world):
    owner = _signed_in(world.alice)
    page = owner.get(reverse("chat:conversation", args=[world.conversation.pk])).content.decode()
    assert reverse("chat:share-conversation", args=[world.conversation.pk]) in page and "<summary>Share</summary>" in page
    fragment = owner.get(reverse("chat:share-conversation", args=[world.conversation.pk]), headers={"HX-Request": "true"})
    assert fragment.status_code == 200 and "<html" not in fragment.content.decode() and "Create link" in fragment.content.decode()
    created = owner.post(
        reverse("chat:share-conversation", args=[world.conversation.pk]), {"audience": "anyone"}, headers={"HX-Request": "true"}
    )
    assert created.status_code == 201 and "<html" not in created.content.decode()
    assert TOKEN_IN_URL.search(created.content.decode()) and created["Cache-Control"] == "no-store"
    bad = owner.post(reverse("chat:share-conversation", args=[world.conversation.pk]), {"audience": "everyone", "expires": "1y"})
    assert bad.status_code == 400 and "Select a valid choice" in bad.content.decode()
    again = owner.get(reverse("chat:share-conversation", args=[world.conversation.pk])).content.decode()
    assert not TOKEN_IN_URL.search(again) and "Anyone with the link" in again  # listed, the link itself not shown again

    settings_page = owner.get(reverse("chat:shares")).content.decode()
    assert 'href="/chat/shares/" class="active"' in settings_page and "Lisbon trip plans" in settings_page
    assert "Revoke" in settings_page and not TOKEN_IN_URL.search(settings_page)
    assert 'href="/chat/shares/"' in owner.get("/settings/profile/").content.decode()
    with rls.privileged(reason="test: the link made"):
        link = ShareLink.objects.get()
    row = owner.post(reverse("chat:share-revoke", args=[link.pk]), headers={"HX-Request": "true"})
    assert row.status_code == 200 and "Revoked" in row.content.decode()
    back = owner.post(reverse("chat:share-revoke", args=[link.pk]), {"next": "https://evil.example/"})
    assert back["Location"] == reverse("chat:shares")


def test_with_redis_stopped_the_page_still_opens_and_revokes(world, own_redis):
    from config import embedded

    link, token = _share(world.alice, world.conversation, audience="anyone")
    assert _open(Client(), token).status_code == 200
    embedded.redis_stop(own_redis)
    assert _open(Client(), token).status_code == 200
    sharing.share_link_revoke(user=world.alice, share_link=link)
    assert _open(Client(), token).status_code == 404


def test_staff_see_links_read_only_in_admin_without_their_hash(world):
    link, _ = _share(world.alice, world.conversation, audience="anyone")
    staff = _signed_in(make_user(email="staff@example.com", role="staff", is_superuser=True))
    listing = staff.get(reverse("admin:chat_sharelink_changelist"))
    assert listing.status_code == 200 and "Lisbon trip plans" in listing.content.decode()
    change = staff.get(reverse("admin:chat_sharelink_change", args=[link.pk])).content.decode()
    assert str(world.alice.pk) in change and link.token_hash not in change and link.token_hash not in listing.content.decode()
    assert staff.get(reverse("admin:chat_sharelink_add")).status_code == 403
    assert staff.post(reverse("admin:chat_sharelink_delete", args=[link.pk]), {"post": "yes"}).status_code == 403
