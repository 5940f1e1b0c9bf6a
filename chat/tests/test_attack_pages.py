"""Attack review of the server-rendered pages (Django templates + htmx), as a browser attacker and
a careless user hit them: caching headers on private pages, the share page after a revoke, the
archive button under a double submit or a stale tab, a signed-out form post, CSRF, open
redirects, other tenants' ids, bad input and the page's reply stream.

The first section's tests failed on the code as reviewed; the last section records what held."""

import re
import uuid
from urllib.parse import unquote

import pytest
from django.test import Client
from django.urls import reverse

from accounts import services as accounts_services
from accounts.models import ApiKey, ProviderCredential
from accounts.tests.factories import PASSWORD, make_user
from chat import services, sharing
from chat.models import Conversation, Message, Persona, ShareLink
from chat.porting import exporter
from config.db import rls

pytestmark = pytest.mark.django_db(transaction=True)


def _signed_in(user, **kwargs) -> Client:
    client = Client(raise_request_exception=False, **kwargs)
    client.force_login(user)
    return client


def _read(query):
    with rls.privileged(reason="test: rows as they are"):
        return query()


def _events(response) -> str:
    return b"".join(response).decode()  # an async body, consumed as the test client can


@pytest.fixture
def alice(catalog, plans):
    return make_user(email="alice@example.com", display_name="Alice")


@pytest.fixture
def mallory(catalog, plans):
    return make_user(email="mallory@example.com", display_name="Mallory")


@pytest.fixture
def world(alice, settings, tmp_path):
    """Alice's private things, each with a page of its own."""
    settings.CHAT_EXPORT_DIR = tmp_path / "exports"
    w = type("World", (), {})()
    w.conversation = services.conversation_create(user=alice, title="Divorce lawyer shortlist")
    services.message_send(user=alice, conversation_id=w.conversation.pk, content="my bank PIN is 4242")
    w.persona = services.persona_create(user=alice, name="Therapist", system_prompt="be kind")
    w.link, w.token = sharing.share_link_create(user=alice, conversation=w.conversation)
    with rls.privileged(reason="test: an organization, a key, an invitation"):
        w.acme = accounts_services.organization_create(user=alice, name="Acme")
        w.key, _ = accounts_services.api_key_create(user=alice, name="ci", scopes=[ApiKey.Scope.CHAT_READ])
        w.invitation, w.invitation_token = accounts_services.invitation_create(
            actor=alice, organization=w.acme, email="carol@example.com", role="member", base_url="http://testserver"
        )
    job = exporter.export_job_create(user=alice)
    w.export_url = exporter.export_download_url(exporter.export_build(job_id=job.pk, user_id=alice.pk))
    return w


# --- 1. Found: these failed on the code as reviewed ----------------------------------------------

PRIVATE_PAGES = [
    "/chat/",
    "/chat/?q=PIN",
    "/chat/{conversation}/",
    "/chat/{conversation}/delete/",
    "/chat/{conversation}/export/?format=json",
    "/chat/{conversation}/export/?format=md",
    "{export_url}",
    "/chat/personas/",
    "/chat/personas/{persona}/",
    "/chat/shares/",
    "/chat/porting/",
    "/chat/porting/imports/",
    "/settings/profile/",
    "/settings/preferences/",
    "/settings/credentials/",
    "/settings/sessions/",
    "/settings/organization/?org={acme}",
    "/billing/?org={acme}",
    "/usage/",
    "/",
    "/accounts/invitations/{invitation_token}/",
]


@pytest.mark.parametrize("template", PRIVATE_PAGES)
def test_a_page_of_private_data_tells_shared_caches_not_to_keep_it(world, alice, template):
    """Only Cache-Control keeps a response out of a shared cache (a company proxy, a CDN in front of
    the site): these pages carried none (only `Vary: Cookie`, which a proxy may ignore), so one
    may be stored and shown to the next person behind the same proxy, and after Log out on a shared
    computer the browser's Back button shows them from its cache. Only /settings/api-keys/ and the
    Share panel set it. Each must say `private` or `no-store`."""
    url = template.format(
        conversation=world.conversation.pk,
        persona=world.persona.pk,
        acme=world.acme.pk,
        export_url=world.export_url,
        invitation_token=world.invitation_token,
    )
    client = _signed_in(make_user(email="carol@example.com") if "invitations" in url else alice)
    response = client.get(url)
    assert response.status_code == 200, (url, response.status_code)
    if response.streaming:
        b"".join(response)
    cache_control = response.get("Cache-Control", "")
    assert "private" in cache_control or "no-store" in cache_control, (url, cache_control)


def test_a_revoked_share_page_is_not_served_on_from_caches_for_a_minute(world, alice):
    """The Revoke button promises 'It stops opening at once', and sharing.py that a revoke ends the
    link at once. But an `anyone` page is sent `Cache-Control: public, max-age=60`: every browser
    and every shared cache (a proxy, a CDN) that saw it may serve it, without asking, to whoever
    holds the URL for a minute after the owner revoked it (an owner who revokes a link because the
    conversation holds a secret). The server checks the link on each request, so each request must
    reach it: the page may be kept, but not served without revalidation (no-cache, or max-age=0)."""
    link, token = sharing.share_link_create(user=alice, conversation=world.conversation, audience=ShareLink.Audience.ANYONE)
    reader = Client(raise_request_exception=False)
    opened = reader.get(f"/s/{token}/")
    assert opened.status_code == 200 and "Divorce lawyer shortlist" in opened.content.decode()
    cache_control = [part.strip() for part in opened.get("Cache-Control", "").split(",")]
    fresh_for = [int(part.split("=", 1)[1]) for part in cache_control if part.startswith(("max-age=", "s-maxage="))]
    assert "no-cache" in cache_control or "no-store" in cache_control or fresh_for and max(fresh_for) == 0, cache_control
    sharing.share_link_revoke(user=alice, share_link=link)
    assert reader.get(f"/s/{token}/").status_code == 404


def _archive_form(client, conversation) -> tuple[str, dict]:
    """The archive form as the conversation page renders it: its action and every field it posts."""
    html = client.get(reverse("chat:conversation", args=[conversation.pk])).content.decode()
    action = reverse("chat:archive", args=[conversation.pk])
    form = re.search(r'<form\b[^>]*\baction="' + re.escape(action) + r'".*?</form>', html, re.S).group(0)
    fields = {}
    for tag in re.findall(r"<(?:input|button)\b[^>]*>", form):  # what a browser posts: its inputs and the button pressed
        attributes = dict(re.findall(r'([\w-]+)="([^"]*)"', tag))
        if "name" in attributes and attributes.get("type", "submit") in ("hidden", "submit"):
            fields[attributes["name"]] = attributes.get("value", "")
    fields.pop("csrfmiddlewaretoken", None)
    return action, fields


def test_a_double_clicked_archive_button_leaves_the_conversation_archived(world, alice):
    """POST /chat/<id>/archive/ flips the state and the button says nothing of what it wants: a
    double click (two posts of one form, as a slow network makes) archives then restores, and a
    second tab opened before the archive shows 'Archive' and restores it when pressed. The form must
    carry the state it asks for, so that posting it again changes nothing."""
    client = _signed_in(alice)
    action, fields = _archive_form(client, world.conversation)
    first = client.post(action, fields)
    second = client.post(action, fields)  # the same form, posted again
    assert first.status_code == second.status_code == 302
    assert _read(lambda: Conversation.objects.get(pk=world.conversation.pk).is_archived) is True
    # A tab opened before the archive still shows the 'Archive' button: pressing it must not restore.
    stale_action, stale_fields = action, fields
    client.post(stale_action, stale_fields, headers={"HX-Request": "true"})
    assert _read(lambda: Conversation.objects.get(pk=world.conversation.pk).is_archived) is True


SIGNED_OUT_POSTS = [
    ("chat:update", lambda w: [w.conversation.pk], {"title": "Renamed while signed out", "tags": "", "persona": ""}),
    ("chat:archive", lambda w: [w.conversation.pk], {}),
    ("chat:persona-delete", lambda w: [w.persona.pk], {}),
    ("chat:share-revoke", lambda w: [w.link.pk], {}),
    ("settings:api_key_revoke", lambda w: [w.key.pk], {}),
]


@pytest.mark.parametrize("name, args, data", SIGNED_OUT_POSTS, ids=[name for name, _, _ in SIGNED_OUT_POSTS])
def test_a_form_posted_after_the_session_ended_leads_back_to_a_page_not_a_405(world, alice, name, args, data):
    """A careless user leaves a tab open past the session's end and presses a button (Rename,
    Archive, Revoke...). login_required sends them to log in with `next` = the POST-only action
    URL, so once signed in they land on '405 Method Not Allowed' (and an htmx button follows the
    302 and swaps the whole login page into the conversation's header). After signing in they must
    land on a page (the one the form was on, or its list), and an htmx request must be told to go
    to the login page (HX-Redirect), not handed a redirect to swap in."""
    url = reverse(name, args=args(world))
    browser = Client(raise_request_exception=False)
    refused = browser.post(url, data)
    assert refused.status_code == 302 and refused["Location"].startswith("/accounts/login/")
    next_url = refused["Location"].split("next=", 1)[1] if "next=" in refused["Location"] else "/"
    signed_in = browser.post("/accounts/login/", {"username": alice.email, "password": PASSWORD, "next": unquote(next_url)})
    assert signed_in.status_code == 302
    landed = browser.get(signed_in["Location"])
    assert landed.status_code == 200, (signed_in["Location"], landed.status_code)

    htmx = Client(raise_request_exception=False).post(url, data, headers={"HX-Request": "true"})
    assert htmx.has_header("HX-Redirect") or htmx.has_header("HX-Location") or htmx.has_header("HX-Refresh"), (
        htmx.status_code,
        dict(htmx.headers),
    )


@pytest.mark.parametrize("name", ["Helper\u202egpj.exe", "two\nlines", "tab\there", "bell\x07", "\u200b\u200b", "\u3164"])
def test_a_persona_name_with_control_or_direction_characters_is_a_form_error(alice, name):
    """Every other name a page shows is refused with control characters and text-direction marks
    (user and organization names, API key names: validate_name; titles and tags:
    validate_one_line), so that U+202E cannot make 'Helper\u202egpj.exe' read 'Helperexe.jpg'
    on the conversation's badge, the persona menus and staff's admin. Persona names are stored as
    typed, from the personas page (and the API)."""
    client = _signed_in(alice)
    created = client.post(reverse("chat:personas"), {"name": name, "system_prompt": "be brief"})
    assert created.status_code == 400, created.status_code
    assert not _read(lambda: Persona.objects.filter(user_id=alice.pk).exists())
    persona = services.persona_create(user=alice, name="Plain", system_prompt="be brief")
    renamed = client.post(reverse("chat:persona", args=[persona.pk]), {"name": name, "system_prompt": "be brief"})
    assert renamed.status_code == 400 and _read(lambda: Persona.objects.get(pk=persona.pk).name) == "Plain"


# --- 2. Probed and held ----------------------------------------------------------------------------


def test_held_every_page_post_refuses_a_missing_csrf_token_and_changes_nothing(world, alice):
    client = _signed_in(alice, enforce_csrf_checks=True)
    client.get("/chat/")  # the CSRF cookie, as a browser holds it; the attacker's form has no token
    c, p, o = world.conversation.pk, world.persona.pk, world.acme.pk
    posts = {
        "/chat/new/": {},
        f"/chat/{c}/edit/": {"title": "pwned", "tags": "", "persona": ""},
        f"/chat/{c}/archive/": {},
        f"/chat/{c}/messages/": {"content": "spend my quota", "model": "echo/echo-1"},
        f"/chat/{c}/shares/": {"audience": "anyone", "expires": ""},
        f"/chat/personas/{p}/delete/": {},
        f"/chat/shares/{world.link.pk}/revoke/": {},
        "/chat/porting/export/": {},
        f"/settings/api-keys/{world.key.pk}/revoke/": {},
        "/settings/api-keys/": {"name": "attacker", "scopes": "chat:write"},
        "/settings/credentials/": {"provider": "openai", "access_type": "user_api_key", "api_key": "sk-attacker"},
        f"/settings/organization/{o}/invitations/": {"email": "mallory@example.com", "role": "owner"},
        f"/billing/{o}/change/": {"plan": "free"},
        "/accounts/logout/": {},
    }
    for url, data in posts.items():
        for headers in ({}, {"HX-Request": "true"}):
            assert client.post(url, data, headers=headers).status_code == 403, url
        assert client.post(url, data, headers={"X-CSRFToken": "x" * 64}).status_code == 403, url
    conversation = _read(lambda: Conversation.objects.get(pk=c))
    assert (conversation.title, conversation.is_archived) == ("Divorce lawyer shortlist", False)
    assert _read(lambda: Message.objects.filter(conversation_id=c).count()) == 2
    assert _read(lambda: ShareLink.objects.filter(conversation_id=c).count()) == 1
    assert _read(lambda: ApiKey.objects.get(pk=world.key.pk).is_active) is True
    assert _read(lambda: ApiKey.objects.filter(user_id=alice.pk).count()) == 1
    assert not _read(lambda: ProviderCredential.objects.filter(user_id=alice.pk).exists())
    assert _read(lambda: Persona.objects.filter(pk=p).exists())


def test_held_no_state_change_on_get(world, alice):
    client = _signed_in(alice)
    c, p, o = world.conversation.pk, world.persona.pk, world.acme.pk
    for url in (
        f"/chat/{c}/edit/?title=pwned",
        f"/chat/{c}/archive/",
        f"/chat/{c}/messages/?content=x&model=echo/echo-1",
        f"/chat/personas/{p}/delete/",
        f"/chat/shares/{world.link.pk}/revoke/",
        "/chat/porting/export/",
        f"/settings/api-keys/{world.key.pk}/revoke/",
        f"/settings/organization/{o}/leave/",
        f"/billing/{o}/cancel/",
        "/accounts/logout/",
        "/chat/new/",
    ):
        assert client.get(url).status_code == 405, url
    assert client.get(f"/chat/{c}/delete/").status_code == 200  # the confirmation page only
    assert client.get(f"/accounts/invitations/{world.invitation_token}/").status_code in (200, 404)  # shown, never accepted
    assert _read(lambda: Conversation.objects.filter(pk=c, is_archived=False, title="Divorce lawyer shortlist").exists())
    assert _read(lambda: Message.objects.filter(conversation_id=c).count()) == 2
    assert _read(lambda: ShareLink.objects.get(pk=world.link.pk).revoked_at) is None
    assert _read(lambda: Persona.objects.filter(pk=p).exists()) and _read(lambda: ApiKey.objects.get(pk=world.key.pk).is_active)
    assert client.get("/chat/").status_code == 200  # still signed in


def test_held_clickjacking_and_referrer_headers_on_pages_fragments_and_the_share_page(world, alice):
    client = _signed_in(alice)
    for response in (
        client.get(f"/chat/{world.conversation.pk}/"),
        client.get("/chat/?q=PIN", headers={"HX-Request": "true"}),
        client.get(f"/chat/{world.conversation.pk}/shares/", headers={"HX-Request": "true"}),
        Client().get(f"/s/{sharing.share_link_create(user=alice, conversation=world.conversation, audience='anyone')[1]}/"),
        Client().get("/s/" + "A" * 43 + "/"),
    ):
        assert response["X-Frame-Options"] == "DENY"
        assert "frame-ancestors 'none'" in response["Content-Security-Policy"]
        assert response["Referrer-Policy"] in ("same-origin", "no-referrer")


def _on_this_site(location: str) -> bool:
    """A path of this site: what a browser resolves against the page's own origin."""
    return location.startswith("/") and not location.startswith(("//", "/\\")) and "\t" not in location


@pytest.mark.parametrize(
    "next_url",
    [
        "//evil.example/",
        "https://evil.example/",
        "/\\evil.example/",
        "\\\\evil.example",
        "javascript:alert(1)",
        "http:evil.example",
        " //evil.example",
        "/%09/evil.example",
        "https:/evil.example",
    ],
)
def test_held_no_open_redirect_from_login_signup_logout_or_share_revoke(world, alice, next_url):
    login = Client().post(f"/accounts/login/?next={next_url}", {"username": alice.email, "password": PASSWORD, "next": next_url})
    assert login.status_code == 302 and _on_this_site(login["Location"]), login["Location"]
    out = _signed_in(alice).post("/accounts/logout/", {"next": next_url})
    assert out.status_code == 302 and _on_this_site(out["Location"]), out["Location"]
    signup = Client().post(
        "/accounts/signup/",
        {"email": f"new{uuid.uuid4().hex[:6]}@example.com", "password": PASSWORD, "password_confirm": PASSWORD, "next": next_url},
    )
    assert signup.status_code == 302 and _on_this_site(signup["Location"]), signup["Location"]
    revoke = _signed_in(alice).post(f"/chat/shares/{world.link.pk}/revoke/", {"next": next_url})
    assert revoke.status_code == 302 and _on_this_site(revoke["Location"]), revoke["Location"]


def test_held_another_users_ids_in_page_urls_and_form_fields_are_404_and_change_nothing(world, alice, mallory):
    attacker = _signed_in(mallory)
    c, p, o = world.conversation.pk, world.persona.pk, world.acme.pk
    for url in (
        f"/chat/{c}/",
        f"/chat/{c}/delete/",
        f"/chat/{c}/export/",
        f"/chat/personas/{p}/",
        f"/chat/{c}/shares/",
        f"/settings/organization/?org={o}",
        f"/billing/?org={o}",
        world.export_url,
    ):
        assert attacker.get(url).status_code == 404, url
    usage = attacker.get(f"/usage/?organization={o}")  # administers none: the id is ignored, her own usage shown
    assert usage.status_code in (200, 404) and "Acme" not in usage.content.decode()
    for url, data in (
        (f"/chat/{c}/edit/", {"title": "mine", "tags": "", "persona": ""}),
        (f"/chat/{c}/archive/", {}),
        (f"/chat/{c}/delete/", {}),
        (f"/chat/{c}/shares/", {"audience": "anyone"}),
        (f"/chat/personas/{p}/", {"name": "x", "system_prompt": "y"}),
        (f"/chat/personas/{p}/delete/", {}),
        (f"/chat/shares/{world.link.pk}/revoke/", {}),
        (f"/settings/api-keys/{world.key.pk}/revoke/", {}),
        (f"/settings/organization/{o}/", {"name": "Owned"}),
        (f"/settings/organization/{o}/invitations/", {"email": "m2@example.com", "role": "owner"}),
        (f"/settings/organization/{o}/invitations/{world.invitation.pk}/revoke/", {}),
        (f"/billing/{o}/change/", {"plan": "free"}),
        (f"/billing/{o}/cancel/", {}),
    ):
        assert attacker.post(url, data).status_code == 404, url
    # The page's reply stream: another user's conversation is a refusal, nothing stored or streamed.
    sent = attacker.post(f"/chat/{c}/messages/", {"content": "let me in", "model": "echo/echo-1"})
    assert sent.status_code == 404 and sent["X-Chat-Refusal"] == "1" and not sent.streaming
    # Form fields naming Alice's things: her persona in a new conversation and in preferences.
    assert attacker.post("/chat/new/", {"persona": str(p)}).status_code == 302
    assert not _read(lambda: Conversation.objects.filter(user_id=mallory.pk, persona_id=p).exists())
    assert attacker.post("/settings/preferences/", {"theme": "dark", "default_persona": str(p)}).status_code == 400
    assert attacker.post("/billing/checkout/", {"plan": "pro", "organization": str(o)}).status_code == 302
    conversation = _read(lambda: Conversation.objects.get(pk=c))
    assert (conversation.title, conversation.is_archived) == ("Divorce lawyer shortlist", False)
    assert _read(lambda: ShareLink.objects.filter(conversation_id=c, revoked_at__isnull=True).count()) == 1
    assert _read(lambda: ApiKey.objects.get(pk=world.key.pk).is_active) and _read(lambda: Persona.objects.get(pk=p).name) == "Therapist"


def test_held_the_page_stream_of_a_deleted_conversation_and_a_finished_one(world, alice):
    client = _signed_in(alice)
    reply = client.post(f"/chat/{world.conversation.pk}/messages/", {"content": "once more", "model": "echo/echo-1"})
    assert reply.status_code == 200 and '"type": "done"' in _events(reply)
    assert client.post(f"/chat/{world.conversation.pk}/delete/").status_code == 302
    gone = client.post(f"/chat/{world.conversation.pk}/messages/", {"content": "hello?", "model": "echo/echo-1"})
    assert gone.status_code == 404 and gone["X-Chat-Refusal"] == "1"
    assert client.get(f"/chat/{world.conversation.pk}/messages/").status_code == 405  # no stream to resume by GET


@pytest.mark.parametrize(
    "query",
    [
        "page=-1",
        "page=0",
        "page=abc",
        "page=" + "9" * 5000,
        "page=1e400",
        "page=1&page=2",
        "archived=bogus",
        "archived=all&archived=x",
        "tag=%00",
        "tag=" + "x" * 5000,
        "q=%00",
        "q=%ED%A0%80",
        "q=" + "x" * 20000,
        "q=a&page=-7",
        "q=a&page=" + "9" * 40,
    ],
)
def test_held_bad_list_and_search_parameters_are_a_page_never_a_500(world, alice, query):
    answers = (200, 400, 404) if query.startswith("q=a&page=9") else (200, 400)  # a search page past the last is a 404
    response = _signed_in(alice).get(f"/chat/?{query}")
    assert response.status_code in answers, response.status_code
    assert _signed_in(alice).get(f"/chat/?{query}", headers={"HX-Request": "true"}).status_code in answers
