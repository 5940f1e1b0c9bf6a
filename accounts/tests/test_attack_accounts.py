"""Attack review of accounts: escalation, isolation, races, inputs, authentication.

The first sections each failed before their fix (an expiring key minting a lasting one; a blank
Authorization header, long or NUL-bearing inputs and far expiry dates answered 500; invitations
raced, withdrawn mid-accept, or let into a personal workspace; an admin demoted mid-change; an
unverified signup told who invited its email); the last records what held."""

import re
import uuid
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from accounts import services
from accounts.models import ApiKey, Invitation, Membership, Organization, User
from accounts.tests.factories import PASSWORD, make_user
from accounts.tests.test_api import API, READ, WRITE, bearer, key_client, privileged, session_client
from config.db import rls
from config.tests.races import Paused, hold_in_thread, until, waiting_locks

pytestmark = pytest.mark.django_db(transaction=True)


def _no_raise(client):
    client.raise_request_exception = False
    return client


@pytest.fixture
def acme(alice):
    with rls.privileged(reason="test"):
        org = services.organization_create(user=alice, name="Acme")
    return org


# --- 1. Escalation -----------------------------------------------------------------------------


def test_expiring_key_cannot_mint_a_key_that_outlives_it(alice):
    """A key that expires in an hour must not create a key that never expires (or expires later):
    otherwise whoever holds a short-lived key keeps the account forever."""
    parent_expiry = timezone.now() + timedelta(hours=1)
    client = _no_raise(key_client(alice, scopes=[READ, WRITE], expires_at=parent_expiry))
    response = client.post(f"{API}/api-keys", {"name": "forever", "scopes": [READ]}, format="json")
    if response.status_code == 201:
        child = privileged(ApiKey).get(pk=response.json()["id"])
        assert child.expires_at is not None and child.expires_at <= parent_expiry, (
            f"an expiring key minted a key expiring at {child.expires_at} (parent: {parent_expiry})"
        )
    else:
        assert response.status_code in (400, 403), response.content
    far = (timezone.now() + timedelta(days=3650)).isoformat()
    response = client.post(f"{API}/api-keys", {"name": "later", "scopes": [READ], "expires_at": far}, format="json")
    if response.status_code == 201:
        child = privileged(ApiKey).get(pk=response.json()["id"])
        assert child.expires_at <= parent_expiry, f"an expiring key minted a key expiring at {child.expires_at}"
    else:
        assert response.status_code in (400, 403), response.content


# --- 4. Inputs ------------------------------------------------------------------------------------


@pytest.mark.parametrize("header", [" ", "\xa0", "\x0b", "\x1c"])
def test_blank_authorization_header_is_401_not_500(header):
    client = _no_raise(bearer(header))
    response = client.get(f"{API}/me")
    assert response.status_code == 401, (response.status_code, response.content[:300])


def test_invitation_email_longer_than_the_column_is_400_not_500(alice, acme):
    email = "a" * 250 + "@example.com"  # valid to the EmailValidator (<= 320), longer than the 254 column
    response = _no_raise(session_client(alice)).post(f"{API}/organizations/{acme.pk}/invitations", {"email": email}, format="json")
    assert response.status_code == 400, (response.status_code, response.content[:300])


@pytest.mark.parametrize("value", ["\u0000", "\ud800"], ids=["nul", "lone-surrogate"])
def test_preferences_extra_with_nul_or_lone_surrogate_is_400_not_500(alice, value):
    client = _no_raise(session_client(alice))
    body = '{"extra": {"note": "a%sb"}}' % ("\\u0000" if value == "\u0000" else "\\ud800")
    response = client.generic("PATCH", f"{API}/preferences", body, content_type="application/json")
    assert response.status_code == 400, (response.status_code, response.content[:300])
    assert client.get(f"{API}/preferences").status_code == 200


@pytest.mark.parametrize("value", ["\u0000", "\ud800"], ids=["nul", "lone-surrogate"])
def test_preferences_extra_key_with_nul_or_lone_surrogate_is_400_not_500(alice, value):
    client = _no_raise(session_client(alice))
    body = '{"extra": {"a%sb": 1}}' % ("\\u0000" if value == "\u0000" else "\\ud800")
    response = client.generic("PATCH", f"{API}/preferences", body, content_type="application/json")
    assert response.status_code == 400, (response.status_code, response.content[:300])


@pytest.mark.parametrize("name", ["Evil\u202eCorp", "line\r\nbreak", "tab\there", "\x1b[31mred"])
def test_api_key_name_refuses_control_and_bidi_characters(alice, name):
    """Organization, user, conversation names refuse control and text-direction characters;
    an API key's name is shown on the same pages and in the audit log."""
    response = _no_raise(session_client(alice)).post(f"{API}/api-keys", {"name": name, "scopes": [READ]}, format="json")
    assert response.status_code == 400, (response.status_code, response.content[:300])


def test_api_key_page_far_expiry_in_a_western_timezone_does_not_break_the_page(alice):
    """The page takes a date and makes it 23:59:59 in the user's time zone: 9999-12-31 west of UTC
    is in year 10000 in UTC, which PostgreSQL stores but Python cannot read back."""
    with rls.privileged(reason="test"):
        User.objects.filter(pk=alice.pk).update(timezone="America/Los_Angeles")
    client = Client(raise_request_exception=False)
    client.force_login(alice)
    response = client.post("/settings/api-keys/", {"name": "far", "scopes": [READ], "expires_at": "9999-12-31"})
    assert response.status_code in (200, 400), response.status_code
    response = client.get("/settings/api-keys/")
    assert response.status_code == 200, response.status_code
    response = _no_raise(session_client(alice)).get(f"{API}/api-keys")
    assert response.status_code == 200, response.status_code


# --- 5. Authentication ------------------------------------------------------------------------------


def test_deactivation_stops_sessions_and_keys(alice):
    page = Client()
    page.force_login(alice)
    api_session = session_client(alice)
    key = key_client(alice)
    assert api_session.get(f"{API}/me").status_code == 200 and key.get(f"{API}/me").status_code == 200
    with rls.privileged(reason="test"):
        services.user_deactivate(user=User.objects.get(pk=alice.pk))
    assert api_session.get(f"{API}/me").status_code in (401, 403)
    assert key.get(f"{API}/me").status_code == 401
    assert page.get("/settings/profile/").status_code == 302


def test_password_change_ends_other_sessions(alice):
    page = Client()
    page.force_login(alice)
    assert page.get("/settings/profile/").status_code == 200
    with rls.privileged(reason="test"):
        user = User.objects.get(pk=alice.pk)
        user.set_password("another-horse-battery-7")
        user.save(update_fields=["password"])
    assert page.get("/settings/profile/").status_code == 302


# --- 3. Races ------------------------------------------------------------------------------------

from accounts.services import organizations as org_services  # noqa: E402


def test_two_invitations_to_one_email_at_once_are_not_a_500(alice, acme, monkeypatch):
    """A double-click (or two admins) inviting the same address: the second waits on the first's
    pending row (the one-pending unique index) and then fails with an IntegrityError nobody catches."""
    reached, release = hold_in_thread(monkeypatch, org_services, "mail_send_on_commit", "first", after=False)
    first_client, second_client = _no_raise(session_client(alice)), _no_raise(session_client(alice))
    url = f"{API}/organizations/{acme.pk}/invitations"
    first = Paused(lambda: first_client.post(url, {"email": "carol@example.com"}, format="json"), "first")
    second = Paused(lambda: second_client.post(url, {"email": "carol@example.com"}, format="json"), "second")
    first.start()
    assert reached.wait(60), "first invitation never reached its insert"
    second.start()
    until(lambda: waiting_locks() > 0 or not second.is_alive(), "the second invitation waits on the first's row")
    release.set()
    first.join(60), second.join(60)
    statuses = sorted(r.status_code for r in (first.result, second.result))
    assert statuses[0] == 201 and statuses[1] in (201, 400), [(r.status_code, r.content[:200]) for r in (first.result, second.result)]
    assert privileged(Invitation).filter(organization=acme, email="carol@example.com", accepted_at=None, revoked_at=None).count() == 1


def test_accepting_while_the_invitation_is_withdrawn_is_not_a_500(alice, bob, acme, monkeypatch):
    """Bob accepts while Alice withdraws the invitation: Bob's request read it pending, the
    withdrawal commits, then Bob's membership insert meets the database's join rule."""
    with rls.privileged(reason="test"):
        invitation, token = services.invitation_create(actor=alice, organization=acme, email="bob@example.com")
    reached, release = hold_in_thread(monkeypatch, org_services, "invitation_for_token", "accept")
    bob_client = _no_raise(session_client(bob))
    accept = Paused(lambda: bob_client.post(f"{API}/invitations/accept", {"token": token}, format="json"), "accept")
    accept.start()
    assert reached.wait(60), "accept never read the invitation"
    withdrawn = session_client(alice).delete(f"{API}/organizations/{acme.pk}/invitations/{invitation.pk}")
    assert withdrawn.status_code == 204
    release.set()
    accept.join(60)
    response = accept.result
    joined = privileged(Membership).filter(organization=acme, user=bob).exists()
    assert response.status_code in (201, 400), (response.status_code, response.content[:300])
    assert joined == (response.status_code == 201)


@pytest.mark.parametrize("change", ["promote", "remove"])
def test_an_admin_demoted_while_acting_acts_first_or_not_at_all(alice, bob, acme, monkeypatch, change):
    """Adam (admin) promotes or removes Bob; meanwhile Alice (owner) makes Adam a member. Adam's
    request checked his role, then Alice's demotion committed, then the database's policy saw him
    a member: the update matched no row (a 500), the delete matched none and answered 204. Adam's
    check now holds his membership until his change commits: Alice's demotion waits, then applies."""
    adam = make_user(email="adam@example.com")
    with rls.privileged(reason="test"):
        adam_membership = Membership.objects.create(organization=acme, user=adam, role=Membership.Role.ADMIN)
        bob_membership = Membership.objects.create(organization=acme, user=bob, role=Membership.Role.MEMBER)
    reached, release = hold_in_thread(monkeypatch, org_services, "_require_admin", "adam")
    adam_client = _no_raise(session_client(adam))
    url = f"{API}/organizations/{acme.pk}/members/{bob_membership.pk}"
    act = Paused(
        (lambda: adam_client.patch(url, {"role": "admin"}, format="json")) if change == "promote" else (lambda: adam_client.delete(url)),
        "adam",
    )
    act.start()
    assert reached.wait(60), "Adam's request never checked his role"
    demote = Paused(
        lambda: session_client(alice).patch(
            f"{API}/organizations/{acme.pk}/members/{adam_membership.pk}", {"role": "member"}, format="json"
        ),
        "alice",
    )
    demote.start()
    until(lambda: waiting_locks() > 0, "Alice's demotion waits for Adam's change")
    release.set()
    act.join(60), demote.join(60)
    assert (act.result.status_code, demote.result.status_code) == (200 if change == "promote" else 204, 200), act.result.content[:300]
    bobs = privileged(Membership).filter(pk=bob_membership.pk).first()
    assert (bobs.role if bobs else None) == (Membership.Role.ADMIN if change == "promote" else None)
    assert privileged(Membership).get(pk=adam_membership.pk).role == Membership.Role.MEMBER


# --- What held (kept as regression checks) --------------------------------------------------------


def test_holds_role_escalations_through_api_and_pages(alice, bob, acme):
    adam, mia = make_user(email="adam@example.com"), make_user(email="mia@example.com")
    with rls.privileged(reason="test"):
        alice_m = Membership.objects.get(organization=acme, user=alice)
        adam_m = Membership.objects.create(organization=acme, user=adam, role=Membership.Role.ADMIN)
        mia_m = Membership.objects.create(organization=acme, user=mia, role=Membership.Role.MEMBER)
    adam_c, mia_c, alice_c = session_client(adam), session_client(mia), session_client(alice)
    members = f"{API}/organizations/{acme.pk}/members"
    assert mia_c.patch(f"{members}/{mia_m.pk}", {"role": "admin"}, format="json").status_code == 403
    assert mia_c.patch(f"{members}/{mia_m.pk}", {"role": "owner"}, format="json").status_code == 403
    assert adam_c.patch(f"{members}/{adam_m.pk}", {"role": "owner"}, format="json").status_code == 403
    assert adam_c.patch(f"{members}/{mia_m.pk}", {"role": "owner"}, format="json").status_code == 403
    assert adam_c.patch(f"{members}/{alice_m.pk}", {"role": "member"}, format="json").status_code == 403
    assert adam_c.delete(f"{members}/{alice_m.pk}").status_code == 403
    assert alice_c.patch(f"{members}/{alice_m.pk}", {"role": "admin"}, format="json").status_code == 400
    assert alice_c.post(f"{API}/organizations/{acme.pk}/leave").status_code == 400
    assert (
        adam_c.post(f"{API}/organizations/{acme.pk}/invitations", {"email": "x@example.com", "role": "owner"}, format="json").status_code
        == 403
    )
    assert mia_c.post(f"{API}/organizations/{acme.pk}/invitations", {"email": "x@example.com"}, format="json").status_code == 403
    assert mia_c.get(f"{API}/organizations/{acme.pk}/invitations").status_code == 403
    for bad in ({"role": ["owner"]}, {"role": {"a": 1}}, {"role": None}, {"role": "OWNER"}, [], "x"):
        assert adam_c.patch(f"{members}/{mia_m.pk}", bad, format="json").status_code == 400
    # Pages: extra or hidden fields do nothing.
    page = Client()
    page.force_login(adam)
    page.post(f"/settings/organization/{acme.pk}/members/{adam_m.pk}/role/", {"role": "owner"})
    page.post(f"/settings/organization/{acme.pk}/members/{alice_m.pk}/role/", {"role": "member"})
    page.post(f"/settings/organization/{acme.pk}/invitations/", {"email": "y@example.com", "role": "owner"})
    page.post(f"/settings/organization/{acme.pk}/", {"name": "Renamed", "is_personal": "on", "created_by": str(adam.pk), "slug": "x"})
    page.post("/settings/profile/", {"display_name": "A", "timezone": "UTC", "locale": "en", "role": "staff", "is_superuser": "on"})
    page.post("/settings/api-keys/", {"name": "k", "scopes": ["account:read", "admin:all"]})
    assert privileged(Membership).get(pk=adam_m.pk).role == Membership.Role.ADMIN
    assert privileged(Membership).get(pk=alice_m.pk).role == Membership.Role.OWNER
    assert not privileged(Invitation).filter(email="y@example.com").exists()
    org = privileged(Organization).get(pk=acme.pk)
    assert not org.is_personal and org.created_by_id == alice.pk and org.slug != "x"
    assert privileged(User).get(pk=adam.pk).role == User.Role.MEMBER and not privileged(User).get(pk=adam.pk).is_superuser
    assert not privileged(ApiKey).filter(user=adam).exists()


def test_holds_invitations_for_another_email_and_reuse(alice, bob, acme):
    eve = make_user(email="eve@example.com")
    with rls.privileged(reason="test"):
        _, token = services.invitation_create(actor=alice, organization=acme, email="bob@example.com", role="admin")
    assert session_client(eve).post(f"{API}/invitations/accept", {"token": token}, format="json").status_code == 404
    assert session_client(bob).post(f"{API}/invitations/accept", {"token": token}, format="json").status_code == 201
    assert session_client(bob).post(f"{API}/invitations/accept", {"token": token}, format="json").status_code == 400
    assert not privileged(Membership).filter(organization=acme, user=eve).exists()


def test_holds_other_tenants_ids_answer_like_random_ids(alice, bob, acme):
    with rls.privileged(reason="test"):
        inv, _ = services.invitation_create(actor=alice, organization=acme, email="z@example.com")
        key, _ = services.api_key_create(user=alice, name="k", scopes=[READ])
        membership = Membership.objects.get(organization=acme, user=alice)
    mallory = session_client(bob)
    bob_org = privileged(Membership).get(user=bob).organization_id
    rnd = uuid.uuid4()
    pairs = [
        (f"organizations/{acme.pk}", f"organizations/{rnd}"),
        (f"organizations/{acme.pk}/members", f"organizations/{rnd}/members"),
        (f"organizations/{bob_org}/members/{membership.pk}", f"organizations/{bob_org}/members/{rnd}"),
        (f"organizations/{acme.pk}/invitations/{inv.pk}", f"organizations/{rnd}/invitations/{rnd}"),
        (f"api-keys/{key.pk}", f"api-keys/{rnd}"),
    ]
    for method in ("get", "patch", "delete"):
        for theirs, random_ in pairs:
            a = getattr(mallory, method)(f"{API}/{theirs}", {"role": "member"}, format="json")
            b = getattr(mallory, method)(f"{API}/{random_}", {"role": "member"}, format="json")
            assert (a.status_code, a.content) == (b.status_code, b.content), (method, theirs)


# --- Personal workspaces take members by invitation --------------------------------------------------


def _join_personal_workspace(inviter, invitee, role="member"):
    """inviter invites invitee into inviter's personal workspace through the API; the invitee accepts."""
    personal = privileged(Membership).get(user=inviter, organization__is_personal=True).organization_id
    response = _no_raise(session_client(inviter)).post(
        f"{API}/organizations/{personal}/invitations", {"email": invitee.email, "role": role}, format="json"
    )
    return personal, response


def test_a_new_conversation_is_billed_to_your_own_workspace_after_joining_anothers_personal_one(alice, mailoutbox, celery_worker):
    """Zed joins Alice's personal workspace; chat bills a conversation with no organization to
    "the" personal organization, the first by name: Alice's ("Alice's workspace" < "Zed's workspace")."""
    from accounts.tests.factories import mail_arrives

    zed = make_user(email="zed@example.com", display_name="Zed")
    zed_personal = privileged(Membership).get(user=zed, organization__is_personal=True).organization_id
    alice_personal, invited = _join_personal_workspace(alice, zed)
    if invited.status_code == 400:
        return  # refusing to invite into a personal workspace is one fix
    assert invited.status_code == 201, invited.content
    token = re.search(r"/accounts/invitations/([^/\s]+)/", mail_arrives()[-1].body).group(1)
    assert session_client(zed).post(f"{API}/invitations/accept", {"token": token}, format="json").status_code == 201
    response = key_client(zed, scopes=["chat:read", "chat:write"]).post("/api/v1/conversations", {"title": "mine"}, format="json")
    assert response.status_code == 201, response.content
    assert response.json()["organization_id"] == str(zed_personal), "Zed's conversation is billed to Alice's personal workspace"


def test_an_owner_invited_into_a_personal_workspace_cannot_take_it_from_its_user(alice, bob, mailoutbox, celery_worker):
    """Alice cannot leave her personal workspace; an owner she invited into it removed her from it
    (or demoted her), and she was left without one: chat then had nowhere to bill her conversations."""
    alice_personal, invited = _join_personal_workspace(alice, bob, role="owner")
    assert invited.status_code == 201, invited.content
    from accounts.tests.factories import mail_arrives

    token = re.search(r"/accounts/invitations/([^/\s]+)/", mail_arrives()[-1].body).group(1)
    assert session_client(bob).post(f"{API}/invitations/accept", {"token": token}, format="json").status_code == 201
    alice_m = privileged(Membership).get(organization_id=alice_personal, user=alice)
    removed = _no_raise(session_client(bob)).delete(f"{API}/organizations/{alice_personal}/members/{alice_m.pk}")
    assert removed.status_code in (400, 403), "another owner removed Alice from her own personal workspace"
    url = f"{API}/organizations/{alice_personal}/members/{alice_m.pk}"
    demoted = _no_raise(session_client(bob)).patch(url, {"role": "member"}, format="json")
    assert demoted.status_code in (400, 403), "another owner demoted Alice in her own personal workspace"
    assert privileged(Membership).filter(organization_id=alice_personal, user=alice, role=Membership.Role.OWNER).exists()


def test_sign_in_with_a_long_version_in_the_user_agent_is_not_a_500(alice):
    """The session row keeps "<OS family> <version>" in a 100-character column: a user agent whose
    Android version is 150 digits makes the sign-in's insert fail."""
    client = Client(raise_request_exception=False, HTTP_USER_AGENT="Mozilla/5.0 (Linux; Android " + "9" * 150 + ") Chrome/1")
    response = client.post("/accounts/login/", {"username": "alice@example.com", "password": PASSWORD})
    assert response.status_code == 302, response.status_code
    assert client.get("/settings/profile/").status_code == 200


def test_an_unverified_account_is_not_told_who_invited_its_email(alice, acme):
    """Anyone may sign up with any address; until they confirm it, the invitations addressed to it
    (which organizations, as what role) are not theirs to read."""
    with rls.privileged(reason="test"):
        services.invitation_create(actor=alice, organization=acme, email="ceo@example.com", role="admin")
    client = Client()
    response = client.post(
        "/accounts/signup/",
        {"email": "ceo@example.com", "display_name": "", "password": PASSWORD, "password_confirm": PASSWORD},
        follow=True,
    )
    assert response.status_code == 200
    assert not privileged(User).get(email="ceo@example.com").email_verified
    assert "Acme" not in response.content.decode(), "the sign-up page named the inviting organization"
    page = client.get("/settings/organization/").content.decode()
    assert "Acme" not in page, "an unverified account reads the invitations addressed to the email it claims"


def test_a_member_of_anothers_personal_workspace_still_bills_new_conversations_to_their_own(alice):
    """Memberships made before invitations into personal workspaces were refused: chat took "the"
    personal organization, the first by name, which could be someone else's."""
    from chat import services as chat_services

    zed = make_user(email="zed@example.com", display_name="Zed")
    alices = privileged(Membership).get(user=alice, organization__is_personal=True).organization_id
    with rls.privileged(reason="test: a membership from before the rule"):
        Membership.objects.create(organization_id=alices, user=zed, role=Membership.Role.MEMBER)
    conversation = chat_services.conversation_create(user=zed)
    zeds = privileged(Membership).get(user=zed, organization__is_personal=True, organization__created_by=zed).organization_id
    assert conversation.organization_id == zeds != alices
