"""Attack review of the lifecycle of accounts and organizations, across every app: what happens
to a user's and an organization's things when an account is deactivated (and reactivated), a
member is removed or changes role while another request acts on them, an organization is
deleted by staff, and the last owners step down at once. Each test in the first sections
failed on the code it was written against; the last section records what held."""

import threading

import pytest
from django.test import Client

from accounts import selectors as accounts_selectors
from accounts import services
from accounts.models import Membership, Organization, User, UserSession
from accounts.services import organizations as org_services
from accounts.tests.factories import make_user
from accounts.tests.test_api import API, key_client, privileged, session_client
from billing.tests.conftest import plans  # noqa: F401  (a fixture)
from billing.tests.factories import put_on_plan
from chat import services as chat_services
from chat import sharing
from config.db import rls
from config.errors import QuotaExceeded
from config.tests.races import Paused, hold_in_thread, until, waiting_locks

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def alice(catalog, plans):  # noqa: F811
    return make_user(email="alice@example.com", display_name="Alice")


@pytest.fixture
def bob(catalog, plans):  # noqa: F811
    return make_user(email="bob@example.com", display_name="Bob")


@pytest.fixture
def acme(alice):
    with rls.privileged(reason="test"):
        return services.organization_create(user=alice, name="Acme")


def _join(organization, user, role=Membership.Role.MEMBER) -> Membership:
    with rls.privileged(reason="test: join"):
        return Membership.objects.create(organization=organization, user=user, role=role)


def _no_raise(client):
    client.raise_request_exception = False
    return client


def owner_demotes_meanwhile(owner, organization, membership) -> Paused:
    """The owner makes `membership` a member, in a thread, while another request is paused;
    returns once the demotion waits on that request's locks (or is done)."""
    demote = Paused(
        lambda: session_client(owner).patch(
            f"{API}/organizations/{organization.pk}/members/{membership.pk}", {"role": "member"}, format="json"
        ),
        "alice",
    )
    demote.start()
    until(lambda: waiting_locks() > 0 or not demote.is_alive(), "the demotion waits for the change, or is done")
    return demote


# --- 1. A role read before the lock --------------------------------------------------------------


def test_an_admin_changing_a_member_just_made_owner_is_refused_not_a_500(alice, bob, acme, monkeypatch):
    """Adam (admin) makes Bob (member) an admin; meanwhile Alice (owner) makes Bob an owner. Adam's
    request read Bob's membership (member) before membership_role_change took its locks, and the
    service decides on that stale role: 'only owners make or unmake owners' passes, the save then
    meets the row policy (admins may not update an owner's row), updates nothing and Django raises
    'Save with update_fields did not affect any rows': a 500. Correct: 403 (or 200 had Adam's change
    come first), and Bob stays what the last allowed change made him."""
    adam = make_user(email="adam@example.com")
    _join(acme, adam, Membership.Role.ADMIN)
    bob_membership = _join(acme, bob)
    reached, release = hold_in_thread(monkeypatch, accounts_selectors, "membership_get", "adam")
    adam_client = _no_raise(session_client(adam))
    url = f"{API}/organizations/{acme.pk}/members/{bob_membership.pk}"
    act = Paused(lambda: adam_client.patch(url, {"role": "admin"}, format="json"), "adam")
    act.start()
    assert reached.wait(60), "Adam's request never read Bob's membership"
    promoted = session_client(alice).patch(url, {"role": "owner"}, format="json")
    assert promoted.status_code == 200, promoted.content
    release.set()
    act.join(60)
    response = act.result
    assert response.status_code == 403, (response.status_code, response.content[:300])
    assert privileged(Membership).get(pk=bob_membership.pk).role == Membership.Role.OWNER


def test_a_member_leaving_as_they_are_made_owner_cannot_leave_the_organization_ownerless(alice, bob, acme, monkeypatch):
    """Bob (member) leaves Acme; his request read his membership (member) and pauses. Alice makes
    Bob an owner, then leaves herself (Bob remains an owner: allowed). Bob's leave goes on with the
    role it read: a member needs no other owner, so it deletes the last owner's row, and the
    database's deferred trigger refuses the commit: a 500 (had the trigger not been there, an
    organization without an owner). Correct: Bob is told he is the last owner (400), and stays."""
    bob_membership = _join(acme, bob)
    reached, release = hold_in_thread(monkeypatch, org_services, "_membership_of", "bob")
    bob_client = _no_raise(session_client(bob))
    leave = Paused(lambda: bob_client.post(f"{API}/organizations/{acme.pk}/leave"), "bob")
    leave.start()
    assert reached.wait(60), "Bob's leave never read his membership"
    alice_client = session_client(alice)
    members = f"{API}/organizations/{acme.pk}/members"
    assert alice_client.patch(f"{members}/{bob_membership.pk}", {"role": "owner"}, format="json").status_code == 200
    assert alice_client.post(f"{API}/organizations/{acme.pk}/leave").status_code == 204
    release.set()
    leave.join(60)
    response = leave.result
    assert response.status_code == 400, (response.status_code, response.content[:300])
    assert privileged(Membership).filter(organization=acme, role=Membership.Role.OWNER).exists()


# --- 2. Deactivation -------------------------------------------------------------------------------


def test_a_session_signed_in_before_deactivation_does_not_come_back_with_reactivation(alice):
    """Staff deactivate an account (a stolen session, an offboarding): every browser is refused.
    user_deactivate revokes the API keys for good but leaves the sessions in place (their data and
    their records, still listed as signed in); Django merely refuses an inactive user on each
    request. When staff reactivate the account, every session from before, the thief's included,
    is signed in again. Correct: deactivation ends the sessions (as a password reset does)."""
    thief = Client()
    thief.force_login(alice)
    assert thief.get("/settings/profile/").status_code == 200
    with rls.privileged(reason="test: staff deactivate"):
        services.user_deactivate(user=User.objects.get(pk=alice.pk))
    assert thief.get("/settings/profile/").status_code == 302
    with rls.privileged(reason="test: the sessions' records"):
        listed = UserSession.objects.filter(user_id=alice.pk, ended_at__isnull=True).count()
    with rls.privileged(reason="test: staff reactivate"):
        user = User.objects.get(pk=alice.pk)
        user.is_active = True
        user.save(update_fields=["is_active"])
    assert thief.get("/settings/profile/").status_code == 302, "the session from before deactivation is signed in again"
    assert listed == 0, f"{listed} session(s) still listed as signed in after deactivation"


def test_a_deactivated_accounts_public_share_links_stop_opening(alice):
    """A deactivated account (abuse, offboarding, a compromised account) cannot sign in to revoke
    anything, yet its 'anyone' share links go on serving its conversations to the world: the link
    functions check the link and the conversation, never the owner. Correct: a link whose owner is
    deactivated is the same 404 as a revoked one."""
    conversation = chat_services.conversation_create(user=alice, title="Private plans")
    chat_services.message_send(user=alice, conversation_id=conversation.pk, content="The secret launch date")
    _link, token = sharing.share_link_create(user=alice, conversation=conversation, audience="anyone")
    assert Client().get(f"/s/{token}/").status_code == 200
    with rls.privileged(reason="test: staff deactivate"):
        services.user_deactivate(user=User.objects.get(pk=alice.pk))
    sharing.share_page_forget(link_id=_link.pk)
    response = Client().get(f"/s/{token}/")
    assert response.status_code == 404, "a deactivated account's conversation is still public"


# --- 3. Removal from an organization ---------------------------------------------------------------


def test_a_removed_members_conversations_no_longer_use_up_the_organizations_conversation_limit(alice, bob, acme, plans):  # noqa: F811
    """README: 'Every limit is the organization's: the conversations are all its members'
    conversations with messages'. Acme's plan includes 2 conversations; Bob (member) started
    both, then was removed. He is no longer a member, the organization cannot delete his
    conversations (they are his), yet _conversations_counted counts every conversation billed to
    Acme: Alice's first conversation is refused, for good. Correct: a former member's
    conversations do not count against the organization he left."""
    plans["pro"].max_conversations = 2
    with rls.privileged(reason="test: a plan with two conversations"):
        plans["pro"].save()
    put_on_plan(acme, plans["pro"])
    bob_membership = _join(acme, bob)
    for n in range(2):
        conversation = chat_services.conversation_create(user=bob, title=f"bob {n}", organization_id=acme.pk)
        chat_services.message_send(user=bob, content="hello", conversation_id=conversation.pk)
    assert session_client(alice).delete(f"{API}/organizations/{acme.pk}/members/{bob_membership.pk}").status_code == 204
    mine = chat_services.conversation_create(user=alice, title="mine", organization_id=acme.pk)
    try:
        chat_services.message_send(user=alice, content="our first", conversation_id=mine.pk)
    except QuotaExceeded as exc:
        pytest.fail(f"the organization's only member was refused her first conversation: {exc.message}")


# --- 4. Staff remove organizations and owners in admin ----------------------------------------------


@pytest.fixture
def staff(plans):  # noqa: F811
    client = Client(raise_request_exception=False)
    client.force_login(make_user(email="staff@example.com", role="staff", is_superuser=True))
    return client


def test_staff_removing_an_organizations_last_owner_in_admin_is_a_form_error_not_a_500(staff, alice, acme):
    """The organization admin's Members inline lets staff delete a membership or change its role.
    Deleting (or demoting) the only owner: the admin saves, the database's deferred trigger refuses
    the commit ('would have no owner'), and staff get a 500. Correct: the page again, saying an
    organization keeps at least one owner."""
    owner = privileged(Membership).get(organization=acme, user=alice)
    data = {
        "name": acme.name,
        "slug": acme.slug,
        "auto_join_domain": "",
        "created_by": str(alice.pk),
        "memberships-TOTAL_FORMS": "1",
        "memberships-INITIAL_FORMS": "1",
        "memberships-MIN_NUM_FORMS": "0",
        "memberships-MAX_NUM_FORMS": "1000",
        "memberships-0-id": str(owner.pk),
        "memberships-0-organization": str(acme.pk),
        "memberships-0-user": str(alice.pk),
        "memberships-0-role": "member",
    }
    response = staff.post(f"/admin/accounts/organization/{acme.pk}/change/", data)
    assert response.status_code in (200, 302), response.status_code
    assert privileged(Membership).get(pk=owner.pk).role == Membership.Role.OWNER
    if response.status_code == 200:
        assert b"owner" in response.content
    data["memberships-0-DELETE"] = "on"
    data["memberships-0-role"] = "owner"
    response = staff.post(f"/admin/accounts/organization/{acme.pk}/change/", data)
    assert response.status_code in (200, 302), response.status_code
    assert privileged(Membership).filter(pk=owner.pk).exists()


# --- 5. A removed member comes back ------------------------------------------------------------------


def test_a_member_removed_from_a_domain_organization_cannot_rejoin_by_opening_their_old_verification_link(plans):  # noqa: F811
    """Acme admits acme.test by domain. Bob verified his email (joining Acme), then an owner removed
    him. His verification link stays valid for 3 days and email_verify joins every admitting
    organization each time it is opened: Bob opens the same link again and is a member of Acme
    once more, reading its members, billing and organization share links. Correct: a link only
    verifies (and joins) once; opening it again changes no membership."""
    boss = make_user(email="boss@acme.test", email_verified=True)
    with rls.privileged(reason="test"):
        acme = services.organization_create(user=boss, name="Acme")
        services.organization_update(actor=boss, organization=acme, auto_join_domain="acme.test")
    bob = make_user(email="bob@acme.test")
    link = f"/accounts/verify-email/{services.email_verification_token(user=bob)}/"
    Client().get(link)
    bob_membership = privileged(Membership).get(organization=acme, user=bob)
    assert session_client(boss).delete(f"{API}/organizations/{acme.pk}/members/{bob_membership.pk}").status_code == 204
    again = Client()
    again.force_login(User.objects.using("privileged").get(pk=bob.pk))
    again.get(link)
    assert not privileged(Membership).filter(organization=acme, user=bob).exists(), "the removed member is back in the organization"


def test_an_admin_removed_from_the_organization_cannot_come_back_through_an_invitation_they_sent(alice, acme):
    """Mallory (admin) invites her other address as admin, then an owner removes her. Nothing
    withdraws the invitations she sent: her second account accepts and is an admin of Acme again,
    with its members, billing and invitations. Correct: removing (or demoting below admin) a
    member withdraws the pending invitations they sent, as their power to send them is gone."""
    mallory = make_user(email="mallory@example.com")
    mallory_membership = _join(acme, mallory, Membership.Role.ADMIN)
    with rls.privileged(reason="test: Mallory invites her other address"):
        _invitation, token = services.invitation_create(
            actor=mallory, organization=acme, email="mallory.alt@example.com", role=Membership.Role.ADMIN
        )
    assert session_client(alice).delete(f"{API}/organizations/{acme.pk}/members/{mallory_membership.pk}").status_code == 204
    alt = make_user(email="mallory.alt@example.com")
    response = _no_raise(session_client(alt)).post(f"{API}/invitations/accept", {"token": token}, format="json")
    assert response.status_code in (400, 404), (response.status_code, response.content[:300])
    assert not privileged(Membership).filter(organization=acme, user=alt).exists(), "the removed admin is back, as admin"


def test_a_deactivated_admins_pending_invitations_are_withdrawn(alice, acme):
    """Staff deactivate Mallory (an admin of Acme) for abuse. Her membership stays, so removal's
    withdrawal never runs, and the admin invitation she sent her other address still admitted it:
    the banned admin was back. Deactivation withdraws the invitations she sent that nobody took."""
    mallory = make_user(email="mallory@example.com")
    _join(acme, mallory, Membership.Role.ADMIN)
    with rls.privileged(reason="test: Mallory invites her other address"):
        _invitation, token = services.invitation_create(
            actor=mallory, organization=acme, email="mallory.alt@example.com", role=Membership.Role.ADMIN
        )
        services.user_deactivate(user=User.objects.get(pk=mallory.pk))
    alt = make_user(email="mallory.alt@example.com")
    response = _no_raise(session_client(alt)).post(f"{API}/invitations/accept", {"token": token}, format="json")
    assert response.status_code in (400, 404), (response.status_code, response.content[:300])
    assert not privileged(Membership).filter(organization=acme, user=alt).exists(), "the banned admin is back, as admin"


@pytest.mark.parametrize("action", ["invite", "rename"])
def test_an_admin_demoted_while_inviting_or_renaming_acts_first_or_not_at_all(alice, acme, monkeypatch, action):
    """Adam (admin) invites someone, or renames Acme; meanwhile Alice (owner) makes him a member.
    invitation_create and organization_update check his role without holding it (the role change
    and removal were fixed to lock it: test_attack_accounts), so the demotion commits between the
    check and the write, and the database's policy then refuses the write: the invitation's insert
    violates the row policy, the rename updates no row ('Save with update_fields did not affect any
    rows'): a 500 either way. Correct: the write happens before the demotion, or a 403."""
    adam = make_user(email="adam@example.com")
    adam_membership = _join(acme, adam, Membership.Role.ADMIN)
    reached, release = hold_in_thread(monkeypatch, org_services, "_require_admin", "adam")
    adam_client = _no_raise(session_client(adam))
    if action == "invite":
        request = lambda: adam_client.post(f"{API}/organizations/{acme.pk}/invitations", {"email": "carol@example.com"}, format="json")  # noqa: E731
    else:
        request = lambda: adam_client.patch(f"{API}/organizations/{acme.pk}", {"name": "Adam's"}, format="json")  # noqa: E731
    act = Paused(request, "adam")
    act.start()
    assert reached.wait(60), "Adam's request never checked his role"
    demote = owner_demotes_meanwhile(alice, acme, adam_membership)
    release.set()
    act.join(60), demote.join(60)
    assert demote.result.status_code == 200, demote.result.content[:300]
    assert act.result.status_code in (200, 201, 403), (act.result.status_code, act.result.content[:300])


# --- What held (kept as regression checks) ------------------------------------------------------------


def test_held_a_removed_member_reads_and_bills_nothing_of_the_organization(alice, bob, acme, raw_app_connection):
    """After removal: the organization, its members, billing and usage are 404 (API), his old
    conversation there opens but a send to it is refused (403, page and API), an organization link
    to Alice's conversation there is the 404 of an unknown link, and as the web role in raw SQL he
    sees none of Acme's memberships, invitations or subscriptions."""
    from chat.tests.test_share import _as

    bob_membership = _join(acme, bob)
    his = chat_services.conversation_create(user=bob, title="his", organization_id=acme.pk)
    chat_services.message_send(user=bob, content="hello", conversation_id=his.pk)
    hers = chat_services.conversation_create(user=alice, title="hers", organization_id=acme.pk)
    chat_services.message_send(user=alice, content="team plans", conversation_id=hers.pk)
    _link, token = sharing.share_link_create(user=alice, conversation=hers)
    page = Client()
    page.force_login(bob)
    assert page.get(f"/s/{token}/").status_code == 200
    assert session_client(alice).delete(f"{API}/organizations/{acme.pk}/members/{bob_membership.pk}").status_code == 204
    api = _no_raise(key_client(bob, scopes=("account:read", "chat:read", "chat:write", "billing:read", "usage:read")))
    for url in (f"{API}/organizations/{acme.pk}", f"{API}/organizations/{acme.pk}/members", f"{API}/organizations/{acme.pk}/subscription"):
        assert api.get(url).status_code == 404, url
    assert api.get(f"{API}/usage/daily", {"organization": str(acme.pk), "group_by": "user"}).status_code in (403, 404)
    assert api.post(f"{API}/conversations/{his.pk}/messages", {"content": "still here?"}, format="json").status_code == 403
    assert page.get(f"/chat/{his.pk}/").status_code == 200
    assert page.post(f"/chat/{his.pk}/messages/", {"content": "still here?", "model": "echo/echo-1"}).status_code == 403
    assert page.get(f"/s/{token}/").status_code == 404
    with raw_app_connection.cursor() as cur:
        _as(cur, bob)
        for table in ("accounts_membership", "accounts_invitation", "billing_subscription"):
            cur.execute(f"SELECT count(*) FROM {table} WHERE organization_id = %s", [acme.pk])
            assert cur.fetchone()[0] == 0, table
    raw_app_connection.rollback()


def test_held_staff_cannot_delete_an_organization_in_admin(staff, alice, acme):
    """Every organization has a subscription, whose admin refuses deletes: the organization's
    delete page and the bulk action are refused (403), nothing is removed."""
    assert staff.post(f"/admin/accounts/organization/{acme.pk}/delete/", {"post": "yes"}).status_code == 403
    staff.post("/admin/accounts/organization/", {"action": "delete_selected", "_selected_action": [acme.pk], "post": "yes"})
    assert privileged(Organization).filter(pk=acme.pk).exists()


def test_held_two_owners_demoting_each_other_at_once_leave_one_owner(alice, bob, acme):
    """Each request locks the organization's owner rows in one order: the second waits, then finds
    itself no longer an owner (403); one owner remains."""
    bob_membership = _join(acme, bob, Membership.Role.OWNER)
    alice_membership = privileged(Membership).get(organization=acme, user=alice)
    members = f"{API}/organizations/{acme.pk}/members"
    a, b = _no_raise(session_client(alice)), _no_raise(session_client(bob))
    barrier = threading.Barrier(2)

    def demote(client, membership):
        barrier.wait(10)
        return client.patch(f"{members}/{membership.pk}", {"role": "member"}, format="json")

    threads = [Paused(lambda: demote(a, bob_membership), "a"), Paused(lambda: demote(b, alice_membership), "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    statuses = sorted(t.result.status_code for t in threads)
    assert statuses in ([200, 403], [200, 400]), [(t.result.status_code, t.result.content[:200]) for t in threads]
    assert privileged(Membership).filter(organization=acme, role=Membership.Role.OWNER).count() == 1


def test_held_one_invitation_accepted_twice_at_once_joins_once(alice, bob, acme):
    with rls.privileged(reason="test"):
        _invitation, token = services.invitation_create(actor=alice, organization=acme, email="bob@example.com")
    clients = [_no_raise(session_client(bob)) for _ in range(2)]
    barrier = threading.Barrier(2)

    def accept(client):
        barrier.wait(10)
        return client.post(f"{API}/invitations/accept", {"token": token}, format="json")

    threads = [Paused(lambda c=c: accept(c), f"accept{n}") for n, c in enumerate(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(t.result.status_code for t in threads) == [201, 400]
    assert privileged(Membership).filter(organization=acme, user=bob).count() == 1


def test_held_a_deactivated_accounts_keys_stay_revoked_after_reactivation_and_the_gateway_refuses_them(alice):
    key = key_client(alice, scopes=("chat:write", "account:read"))
    with rls.privileged(reason="test: staff deactivate"):
        services.user_deactivate(user=User.objects.get(pk=alice.pk))
    gateway = {"model": "echo-1", "messages": [{"role": "user", "content": "hi"}]}
    assert key.post("/v1/chat/completions", gateway, format="json").status_code == 401
    with rls.privileged(reason="test: staff reactivate"):
        User.objects.filter(pk=alice.pk).update(is_active=True)
    assert key.get(f"{API}/me").status_code == 401
    assert key.post("/v1/chat/completions", gateway, format="json").status_code == 401


@pytest.mark.parametrize(
    "value",
    ["A" * 5000, "Acme\u202eevil", "Acme\nBcc: x@evil.test", "Acme\x00", "\ud800", "bob@exa\u200bmple.com", "b" * 300 + "@example.com"],
)
def test_held_odd_names_and_emails_on_the_organization_flows_are_4xx_never_a_500(alice, acme, value):
    import json

    api = _no_raise(session_client(alice))
    page = _no_raise(Client())
    page.force_login(alice)
    org = f"{API}/organizations/{acme.pk}"

    def body(field):
        return {"data": json.dumps({field: value}), "content_type": "application/json"}

    assert api.post(f"{API}/organizations", **body("name")).status_code in (201, 400)
    assert api.patch(org, **body("name")).status_code in (200, 400)
    assert api.post(f"{org}/invitations", **body("email")).status_code in (201, 400)
    assert api.post(f"{API}/invitations/accept", **body("token")).status_code in (400, 404)
    if "\ud800" in value:
        return  # a form post cannot carry a lone surrogate
    assert page.post("/settings/organization/new/", {"name": value}).status_code in (200, 302, 400)
    assert page.post(f"/settings/organization/{acme.pk}/", {"name": value}).status_code in (200, 302, 400)
    assert page.post(f"/settings/organization/{acme.pk}/invitations/", {"email": value, "role": "member"}).status_code in (200, 302, 400)
    if "\x00" not in value:
        assert page.get(f"/accounts/invitations/{value.replace('/', '')}/").status_code in (200, 404)
