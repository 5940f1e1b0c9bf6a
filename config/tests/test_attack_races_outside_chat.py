"""Races outside chat's send path: two requests, or a request and a staff action, racing for one
invariant. Each race is made deterministic by pausing one side at a chosen point (a monkeypatched
function waiting on an Event, in a thread of its own) and ordering the other by PostgreSQL's lock
table (config/tests/races.py). Each test's docstring: what is done, what happened ("Was:"), what
should."""

import re
import threading
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from accounts import services
from accounts.models import ApiKey, Invitation, Membership, User, UserSession
from accounts.services import api_keys as api_key_services
from accounts.services import organizations as org_services
from accounts.services import users as user_services
from accounts.tests.factories import PASSWORD, make_user
from accounts.tests.test_api import API, bearer, key_client, privileged, session_client
from accounts.tests.test_attack_lifecycle import _join, _no_raise, acme, owner_demotes_meanwhile  # noqa: F401  (acme: a fixture)
from billing import services as billing_services
from billing.models import Subscription
from billing.tests.conftest import plans  # noqa: F401  (a fixture)
from billing.tests.factories import put_on_plan
from config.db import rls
from config.tests.races import Paused, hold_in_thread, until, waiting_locks

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def alice(plans):  # noqa: F811
    return make_user(email="alice@example.com", display_name="Alice")


def _staff_deactivates(user_id) -> Paused:
    """Staff untick "active" (admin's save_model and the bulk action both call user_deactivate)."""

    def deactivate():
        with rls.privileged(reason="test: staff deactivate"):
            services.user_deactivate(user=User.objects.get(pk=user_id))

    return Paused(deactivate, "staff")


def _staff_reactivates(user_id) -> None:
    with rls.privileged(reason="test: staff reactivate"):
        user = User.objects.get(pk=user_id)
        user.is_active = True
        user.save(update_fields=["is_active"])


# --- 1. Deactivation racing a request that grants access -------------------------------------------


def test_an_admin_deactivated_while_inviting_keeps_an_invitation_that_lets_her_back_in(alice, acme, monkeypatch):  # noqa: F811
    """Mallory (admin of Acme) is banned by staff (deactivated) while her request inviting her other
    address as admin is in flight: it has checked her role and inserted the invitation, not yet
    committed. user_deactivate withdraws her pending invitations with one UPDATE whose snapshot
    cannot see the uncommitted row, and nothing in invitation_create looks at her account again:
    the invitation commits pending after the withdrawal. Her other account then accepts it and is
    an admin of Acme, the very walk-back user_deactivate's docstring says it prevents.
    Was: the invitation stays pending and the alt account joins as admin (201).
    Should: the invitation and the deactivation are ordered (e.g. invitation_create holds the
    inviter's user row FOR SHARE, or user_deactivate locks the user's memberships FOR UPDATE before
    withdrawing): the invitation is withdrawn, the acceptance refused (400/404)."""
    mallory = make_user(email="mallory@example.com")
    _join(acme, mallory, Membership.Role.ADMIN)
    original = org_services.mail_send_on_commit
    bodies, reached, release = [], threading.Event(), threading.Event()

    def mail_send_on_commit(**kwargs):  # after the invitation's insert, inside the request's transaction
        bodies.append(kwargs["body"])
        if threading.current_thread().name == "mallory":
            reached.set()
            assert release.wait(60), "never released"
        return original(**kwargs)

    monkeypatch.setattr(org_services, "mail_send_on_commit", mail_send_on_commit)
    mallory_client = _no_raise(session_client(mallory))
    invite = Paused(
        lambda: mallory_client.post(
            f"{API}/organizations/{acme.pk}/invitations", {"email": "mallory.alt@example.com", "role": "admin"}, format="json"
        ),
        "mallory",
    )
    invite.start()
    assert reached.wait(60), "Mallory's invitation never reached its insert"
    staff = _staff_deactivates(mallory.pk)
    staff.start()
    until(lambda: waiting_locks() > 0 or not staff.is_alive(), "the deactivation waits for the invitation, or is done")
    release.set()
    invite.join(60), staff.join(60)
    assert invite.result.status_code in (201, 403), (invite.result.status_code, invite.result.content[:300])
    assert not isinstance(staff.result, Exception), staff.result
    token = re.search(r"/accounts/invitations/([^/\s]+)/", bodies[-1]).group(1)
    alt = make_user(email="mallory.alt@example.com")
    response = _no_raise(session_client(alt)).post(f"{API}/invitations/accept", {"token": token}, format="json")
    pending = privileged(Invitation).filter(invited_by=mallory, accepted_at__isnull=True, revoked_at__isnull=True).count()
    joined = privileged(Membership).filter(organization=acme, user=alt).values_list("role", flat=True).first()
    assert (response.status_code, joined, pending) in (((400, None, 0)), ((404, None, 0))), (
        f"the deactivated admin's invitation was accepted: {response.status_code}, the alt account is {joined!r} of Acme"
    )


@pytest.mark.parametrize("signed_in_by", ["api_key", "session"])
def test_an_api_key_minted_while_the_account_is_deactivated_is_not_revived_by_reactivation(alice, monkeypatch, signed_in_by):
    """Alice's account is deactivated by staff while her request creating an API key is in flight
    (after the insert, before its commit). user_deactivate revokes her keys with one UPDATE ... WHERE
    user = alice AND is_active: its snapshot was taken before the new key committed, so the new key
    is not among them. That holds on both paths, the one that 'holds' the calling key FOR SHARE
    (api_key_create's by_key) included: the deactivation's UPDATE waits on a row lock the creation
    holds, and when it goes on, it re-checks only the rows it was waiting for, never the new one.
    The new key stays active, merely refused while the owner is inactive; when staff reactivate the
    account, it signs in again, unlike every key from before (README: reactivating lets none back in;
    test_held_a_deactivated_accounts_keys_stay_revoked_after_reactivation...).
    Was: after reactivation the key minted during the deactivation answers GET /me with 200.
    Should: 401; the key is revoked with the others (e.g. user_deactivate locks the user row FOR
    UPDATE first and api_key_create holds it FOR SHARE, so one waits for the other's commit)."""
    minter = key_client(alice) if signed_in_by == "api_key" else session_client(alice)
    minter = _no_raise(minter)
    reached, release = hold_in_thread(monkeypatch, api_key_services, "_security_event", "mint", after=False)
    mint = Paused(lambda: minter.post(f"{API}/api-keys", {"name": "fresh", "scopes": ["account:read"]}, format="json"), "mint")
    mint.start()
    assert reached.wait(60), "the key's creation never reached its insert"
    staff = _staff_deactivates(alice.pk)
    staff.start()
    until(lambda: waiting_locks() > 0 or not staff.is_alive(), "the deactivation waits for the creation, or is done")
    release.set()
    mint.join(60), staff.join(60)
    assert not isinstance(staff.result, Exception), staff.result
    assert mint.result.status_code == 201, (mint.result.status_code, mint.result.content[:300])
    secret = mint.result.json()["key"]
    _staff_reactivates(alice.pk)
    still_active = list(privileged(ApiKey).filter(user_id=alice.pk, is_active=True).values_list("name", flat=True))
    response = bearer(f"Bearer {secret}").get(f"{API}/me")
    assert (response.status_code, still_active) == (401, []), (
        f"the key minted during the deactivation works after reactivation ({response.status_code}); active: {still_active}"
    )


def test_a_sign_in_that_races_the_deactivation_is_not_revived_by_reactivation(alice, monkeypatch):
    """A thief signs in with Alice's password as staff deactivate the account: the sign-in form has
    checked the password and that the account is active, and is about to log in. user_deactivate
    commits, then ends every session it can see (user_sessions_end_all reads the UserSession rows
    once, after its commit); the thief's sign-in then writes its session and its record, which
    nothing ends. While the account is inactive Django refuses it; when staff reactivate the
    account, the thief is signed in again, which test_a_session_signed_in_before_deactivation_...
    (test_attack_lifecycle) fixed for sessions from before.
    Was: after reactivation the thief's session opens /settings/profile/ (200), and it is listed.
    Should: 302 to sign-in; the sign-in and the deactivation are ordered (the sign-in holds the
    user row, e.g. locks it FOR SHARE and re-reads is_active in the transaction that stores the
    session; or user_deactivate ends sessions inside a transaction that locked the user first)."""
    from django.contrib.auth import views as auth_views

    reached, release = hold_in_thread(monkeypatch, auth_views, "auth_login", "signin", after=False)
    thief = Client(raise_request_exception=False)
    sign_in = Paused(lambda: thief.post("/accounts/login/", {"username": "alice@example.com", "password": PASSWORD}), "signin")
    sign_in.start()
    assert reached.wait(60), "the sign-in never got past its password check"
    staff = _staff_deactivates(alice.pk)
    staff.start()
    until(lambda: waiting_locks() > 0 or not staff.is_alive(), "the deactivation waits for the sign-in, or is done")
    release.set()
    sign_in.join(60), staff.join(60)
    assert not isinstance(staff.result, Exception), staff.result
    assert sign_in.result.status_code == 302, sign_in.result.status_code
    _staff_reactivates(alice.pk)
    listed = privileged(UserSession).filter(user_id=alice.pk, ended_at__isnull=True).count()
    page = thief.get("/settings/profile/")
    assert (page.status_code, listed) == (302, 0), (
        f"the session signed in during the deactivation is back after reactivation ({page.status_code}); {listed} listed"
    )


# --- 2. Auto-join racing the domain being turned off -------------------------------------------------


def test_verifying_an_email_as_the_auto_join_domain_is_turned_off_is_not_a_500(plans, monkeypatch):  # noqa: F811
    """Acme admits acme.test by domain. Bob opens his verification link; email_verify asks the
    database which organizations admit him (Acme), then inserts the membership. An owner turning
    auto-join off commits in between: the insert meets the join policy (accounts_may_join, now
    false) and raises 'new row violates row-level security policy', which verify_email does not
    catch. Bob gets a 500 and his email stays unconfirmed (the whole verification rolled back).
    Was: 500. Should: the verification succeeds (302 to the sign-in or profile page), Bob's email is
    verified, and he joins Acme or not depending on which change came first (e.g. lock the admitting
    organizations' rows FOR SHARE in the same statement that lists them, so the domain change waits,
    or skip an organization whose join the policy refuses)."""
    boss = make_user(email="boss@acme.test", email_verified=True)
    with rls.privileged(reason="test"):
        acme = services.organization_create(user=boss, name="Acme")
        services.organization_update(actor=boss, organization=acme, auto_join_domain="acme.test")
    bob = make_user(email="bob@acme.test")
    link = f"/accounts/verify-email/{services.email_verification_token(user=bob)}/"
    reached, release = threading.Event(), threading.Event()

    class _Objects:
        def create(self, **kwargs):
            if threading.current_thread().name == "verify":
                reached.set()
                assert release.wait(60), "never released"
            return Membership.objects.create(**kwargs)

    class _Membership:  # the name users._auto_join uses: its insert pauses after the admitting organizations were read
        Role = Membership.Role
        objects = _Objects()

    monkeypatch.setattr(user_services, "Membership", _Membership)
    verify = Paused(lambda: Client(raise_request_exception=False).get(link), "verify")
    verify.start()
    assert reached.wait(60), "the verification never reached the join"
    with rls.privileged(reason="test: the owner turns auto-join off"):
        services.organization_update(actor=boss, organization=acme, auto_join_domain="")
    release.set()
    verify.join(60)
    response = verify.result
    verified = privileged(User).get(pk=bob.pk).email_verified
    assert (response.status_code, verified) == (302, True), (response.status_code, verified, response.content[:300])


# --- 3. Billing: a role that changes between the check and the write ----------------------------------


def test_an_admin_demoted_while_changing_the_plan_acts_first_or_is_refused_not_a_500(alice, acme, plans, monkeypatch):  # noqa: F811
    """Adam (admin) schedules Acme's downgrade to Free; meanwhile Alice (owner) makes him a member.
    subscription_change checks his role (_require_manager, a plain read) outside any lock, then
    locks the subscription and decides; Alice's demotion commits in between, and the save meets the
    row policy (billing_caller_manages, now false): the UPDATE matches no row and Django raises
    'Save with update_fields did not affect any rows'. (A change that replaces the row calls
    lock_current again and gets a 403; the ones that save the locked row, a downgrade scheduled for
    the period's end, subscription_cancel, subscription_resume, subscription_request, do not.)
    The accounts services hold the actor's membership to the write for exactly this
    (_require_admin(lock=True)); billing does not.
    Was: 500. Should: Adam's change applies before the demotion (200) or is refused (403)."""
    put_on_plan(acme, plans["pro"], current_period_end=timezone.now() + timedelta(days=20))  # staff granted a month
    adam = make_user(email="adam@example.com")
    adam_membership = _join(acme, adam, Membership.Role.ADMIN)
    reached, release = hold_in_thread(monkeypatch, billing_services, "lock_current", "adam")
    adam_client = _no_raise(session_client(adam))
    change = Paused(
        lambda: adam_client.post(
            f"{API}/organizations/{acme.pk}/subscription", {"plan": "free", "interval": "month", "immediately": False}, format="json"
        ),
        "adam",
    )
    change.start()
    assert reached.wait(60), "Adam's change never locked the subscription"
    demote = owner_demotes_meanwhile(alice, acme, adam_membership)
    release.set()
    change.join(60), demote.join(60)
    assert demote.result.status_code == 200, demote.result.content[:300]
    assert change.result.status_code in (200, 403), (change.result.status_code, change.result.content[:300])
    assert privileged(Subscription).filter(organization=acme, status__in=["trialing", "active", "past_due"]).count() == 1
