"""Roles inside an organization hold in the database, not only in the services and views.

Raw SQL as the app role, with the context the app would set for a member, admin or
invitee, cannot do what their role does not allow; an organization keeps an owner even
when two owners step down at the same moment (two real connections); members do not
list pending invitations.
"""

import threading

import psycopg
import pytest
from django.db import connections, transaction
from django.test import Client
from rest_framework.test import APIClient

from accounts import services
from accounts.errors import NotAllowed, OrganizationRuleBroken
from accounts.models import Invitation, Membership, Organization
from accounts.tests.factories import make_user
from config.db import rls

pytestmark = pytest.mark.django_db(transaction=True)

OWNER, ADMIN, MEMBER = Membership.Role.OWNER, Membership.Role.ADMIN, Membership.Role.MEMBER


def privileged(model):
    return model.objects.using("privileged")


@pytest.fixture
def acme():
    """Acme: owners Alice and Otto, admin Adam, member Mia; Carol is invited as a member."""
    users = {name: make_user(email=f"{name}@example.com") for name in ("alice", "otto", "adam", "mia", "carol")}
    with rls.privileged(reason="test: build an organization"):
        org = services.organization_create(user=users["alice"], name="Acme")
        for name, role in (("otto", OWNER), ("adam", ADMIN), ("mia", MEMBER)):
            Membership.objects.create(organization=org, user=users[name], role=role)
        invitation, token = services.invitation_create(actor=users["alice"], organization=org, email="carol@example.com")
    return {"org": org, "invitation": invitation, "token": token, **users}


def _app_connection(django_db_blocker) -> psycopg.Connection:
    """Another psycopg connection as the app role (as conftest's raw_app_connection)."""
    params = connections["default"].get_connection_params()
    for key in ("context", "cursor_factory", "prepare_threshold"):
        params.pop(key, None)
    with django_db_blocker.unblock():
        conn = psycopg.connect(**params)
    conn.execute("SET statement_timeout = '20s'")
    conn.commit()
    return conn


def _context(cur, user) -> None:
    """The context the app sets for this user: their id and their organizations."""
    org_ids = ",".join(str(o) for o in privileged(Membership).filter(user=user).values_list("organization_id", flat=True))
    cur.execute("SELECT set_config('app.user_id', %s, true), set_config('app.organization_ids', %s, true)", [str(user.pk), org_ids])


def _attempt(conn, user, sql: str, params=()) -> int:
    """Run one statement as `user` and commit: the rows it changed, 0 when refused."""
    try:
        with conn.cursor() as cur:
            _context(cur, user)
            cur.execute(sql, params)
            changed = cur.rowcount
        conn.commit()
        return changed
    except (psycopg.errors.InsufficientPrivilege, psycopg.errors.CheckViolation):
        conn.rollback()
        return 0


def _role(org, user) -> str | None:
    membership = privileged(Membership).filter(organization=org, user=user).first()
    return membership.role if membership else None


# --- Security 2: write policies check the caller's role ------------------------------------


def test_member_cannot_make_themself_owner(raw_app_connection, acme):
    org, mia = acme["org"], acme["mia"]
    sql = "UPDATE accounts_membership SET role = 'owner' WHERE user_id = %s AND organization_id = %s"
    assert _attempt(raw_app_connection, mia, sql, [mia.pk, org.pk]) == 0
    assert _role(org, mia) == MEMBER


def test_admin_cannot_make_or_unmake_owners(raw_app_connection, acme):
    org, adam, mia, alice = acme["org"], acme["adam"], acme["mia"], acme["alice"]
    for target in (adam, mia):
        sql = "UPDATE accounts_membership SET role = 'owner' WHERE user_id = %s AND organization_id = %s"
        assert _attempt(raw_app_connection, adam, sql, [target.pk, org.pk]) == 0
    sql = "UPDATE accounts_membership SET role = 'member' WHERE user_id = %s AND organization_id = %s"
    assert _attempt(raw_app_connection, adam, sql, [alice.pk, org.pk]) == 0
    assert (_role(org, adam), _role(org, mia), _role(org, alice)) == (ADMIN, MEMBER, OWNER)
    # What an admin may do, they can: promote a member to admin.
    sql = "UPDATE accounts_membership SET role = 'admin' WHERE user_id = %s AND organization_id = %s"
    assert _attempt(raw_app_connection, adam, sql, [mia.pk, org.pk]) == 1
    assert _role(org, mia) == ADMIN


def test_member_and_admin_cannot_delete_an_owners_membership(raw_app_connection, acme):
    org, alice = acme["org"], acme["alice"]
    for attacker in (acme["mia"], acme["adam"]):
        sql = "DELETE FROM accounts_membership WHERE user_id = %s AND organization_id = %s"
        assert _attempt(raw_app_connection, attacker, sql, [alice.pk, org.pk]) == 0
    assert _role(org, alice) == OWNER


def test_member_cannot_delete_others_but_may_leave(raw_app_connection, acme):
    org, mia, adam = acme["org"], acme["mia"], acme["adam"]
    sql = "DELETE FROM accounts_membership WHERE user_id = %s AND organization_id = %s"
    assert _attempt(raw_app_connection, mia, sql, [adam.pk, org.pk]) == 0
    assert _role(org, adam) == ADMIN
    assert _attempt(raw_app_connection, mia, sql, [mia.pk, org.pk]) == 1
    assert _role(org, mia) is None


def test_member_cannot_add_members_or_move_memberships(raw_app_connection, acme):
    org, mia = acme["org"], acme["mia"]
    outsider = make_user(email="outsider@example.com")
    insert = (
        "INSERT INTO accounts_membership (id, organization_id, user_id, role, created_at) VALUES (gen_random_uuid(), %s, %s, %s, now())"
    )
    assert _attempt(raw_app_connection, mia, insert, [org.pk, outsider.pk, "member"]) == 0
    assert _attempt(raw_app_connection, acme["adam"], insert, [org.pk, outsider.pk, "owner"]) == 0
    assert _role(org, outsider) is None
    # Rewriting who a membership belongs to is refused even to an owner (only the role may change).
    sql = "UPDATE accounts_membership SET user_id = %s WHERE user_id = %s AND organization_id = %s"
    assert _attempt(raw_app_connection, acme["alice"], sql, [outsider.pk, mia.pk, org.pk]) == 0
    assert (_role(org, mia), _role(org, outsider)) == (MEMBER, None)


def test_member_cannot_rename_the_organization_admin_can(raw_app_connection, acme):
    org = acme["org"]
    sql = "UPDATE accounts_organization SET name = %s WHERE id = %s"
    assert _attempt(raw_app_connection, acme["mia"], sql, ["Pwned", org.pk]) == 0
    assert privileged(Organization).get(pk=org.pk).name == "Acme"
    assert _attempt(raw_app_connection, acme["mia"], "DELETE FROM accounts_organization WHERE id = %s", [org.pk]) == 0
    assert _attempt(raw_app_connection, acme["adam"], sql, ["Acme Inc", org.pk]) == 1
    assert privileged(Organization).get(pk=org.pk).name == "Acme Inc"


def test_invitee_cannot_rewrite_their_invitation(raw_app_connection, acme):
    carol, invitation = acme["carol"], acme["invitation"]
    personal = privileged(Membership).get(user=acme["alice"], organization__is_personal=True).organization_id
    for sql, params in (
        ("UPDATE accounts_invitation SET role = 'owner' WHERE id = %s", [invitation.pk]),
        ("UPDATE accounts_invitation SET organization_id = %s, role = 'owner' WHERE id = %s", [personal, invitation.pk]),
        ("UPDATE accounts_invitation SET expires_at = now() + interval '1 year' WHERE id = %s", [invitation.pk]),
    ):
        assert _attempt(raw_app_connection, carol, sql, params) == 0, sql
    stored = privileged(Invitation).get(pk=invitation.pk)
    assert (stored.organization_id, stored.role, stored.expires_at) == (invitation.organization_id, MEMBER, invitation.expires_at)


def test_invitee_cannot_revive_a_withdrawn_invitation(raw_app_connection, acme):
    carol, invitation = acme["carol"], acme["invitation"]
    with rls.privileged(reason="test: withdraw"):
        services.invitation_revoke(actor=acme["alice"], invitation=invitation)
    sql = "UPDATE accounts_invitation SET revoked_at = NULL WHERE id = %s"
    assert _attempt(raw_app_connection, carol, sql, [invitation.pk]) == 0
    assert privileged(Invitation).get(pk=invitation.pk).revoked_at is not None


def test_member_cannot_invite_admin_cannot_invite_owners(raw_app_connection, acme):
    org = acme["org"]
    insert = (
        "INSERT INTO accounts_invitation (id, organization_id, organization_name, email, role, token_hash, expires_at, created_at) "
        "VALUES (gen_random_uuid(), %s, 'Acme', %s, %s, md5(random()::text), now() + interval '1 day', now())"
    )
    assert _attempt(raw_app_connection, acme["mia"], insert, [org.pk, "friend@example.com", "member"]) == 0
    assert _attempt(raw_app_connection, acme["adam"], insert, [org.pk, "boss@example.com", "owner"]) == 0
    assert not privileged(Invitation).filter(email__in=["friend@example.com", "boss@example.com"]).exists()
    assert _attempt(raw_app_connection, acme["adam"], insert, [org.pk, "friend@example.com", "member"]) == 1


def test_member_cannot_withdraw_invitations(raw_app_connection, acme):
    invitation = acme["invitation"]
    sql = "UPDATE accounts_invitation SET revoked_at = now() WHERE id = %s"
    assert _attempt(raw_app_connection, acme["mia"], sql, [invitation.pk]) == 0
    assert _attempt(raw_app_connection, acme["mia"], "DELETE FROM accounts_invitation WHERE id = %s", [invitation.pk]) == 0
    assert privileged(Invitation).get(pk=invitation.pk).revoked_at is None


def test_the_services_paths_still_write(acme):
    """Joining by invitation and creating an organization (its first owner) still pass the policies."""
    carol = acme["carol"]
    with transaction.atomic():
        rls.context_set(user_id=carol.pk)
        assert services.invitation_accept(user=carol, token=acme["token"]).role == MEMBER
        created = services.organization_create(user=carol, name="Carol's team")
    assert _role(created, carol) == OWNER and _role(acme["org"], carol) == MEMBER


# --- Security 3: an organization keeps an owner ---------------------------------------------


def test_raw_sql_last_owner_cannot_step_down_or_leave(raw_app_connection, acme):
    org, alice, otto = acme["org"], acme["alice"], acme["otto"]
    with rls.privileged(reason="test: one owner left"):
        Membership.objects.filter(organization=org, user=otto).update(role=MEMBER)
    for sql in (
        "UPDATE accounts_membership SET role = 'admin' WHERE user_id = %s AND organization_id = %s",
        "DELETE FROM accounts_membership WHERE user_id = %s AND organization_id = %s",
    ):
        assert _attempt(raw_app_connection, alice, sql, [alice.pk, org.pk]) == 0, sql
    assert _role(org, alice) == OWNER


def _race(worker, users) -> list:
    """Run worker(user) for each user in its own thread, all released at once by a barrier."""
    barrier = threading.Barrier(len(users))
    results = [None] * len(users)

    def run(i, user):
        try:
            results[i] = worker(user, barrier)
        except Exception as exc:  # the outcome is the assertion: keep it
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i, u)) for i, u in enumerate(users)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    return results


def test_two_owners_stepping_down_at_once_in_raw_sql_leave_one(acme, django_db_blocker):
    org, owners = acme["org"], [acme["alice"], acme["otto"]]

    def step_down(user, barrier):
        conn = _app_connection(django_db_blocker)
        try:
            with conn.cursor() as cur:
                _context(cur, user)
                cur.execute("UPDATE accounts_membership SET role = 'member' WHERE user_id = %s AND organization_id = %s", [user.pk, org.pk])
                assert cur.rowcount == 1
            barrier.wait(timeout=120)  # generous: a loaded machine starts threads slowly
            conn.commit()
            return "stepped down"
        finally:
            conn.close()

    results = _race(step_down, owners)
    refused = [r for r in results if isinstance(r, psycopg.errors.CheckViolation)]
    assert results.count("stepped down") == 1 and len(refused) == 1, results
    assert "owner" in str(refused[0])
    assert privileged(Membership).filter(organization=org, role=OWNER).count() == 1


@pytest.mark.parametrize("action", ["leave", "demote", "remove"])
def test_two_owners_stepping_down_at_once_through_the_services_leave_one(acme, action):
    org, alice, otto = acme["org"], acme["alice"], acme["otto"]
    memberships = {m.user_id: m for m in privileged(Membership).filter(organization=org).select_related("organization")}

    def step_down(user, barrier):
        try:
            with transaction.atomic():
                rls.context_set(user_id=user.pk)
                barrier.wait(timeout=120)  # generous: a loaded machine starts threads slowly
                if action == "leave":
                    services.organization_leave(user=user, organization=org)
                elif action == "demote":
                    services.membership_role_change(actor=user, membership=memberships[user.pk], role=MEMBER)
                else:  # each removes the other owner
                    other = otto if user == alice else alice
                    services.membership_remove(actor=user, membership=memberships[other.pk])
            return "done"
        except (OrganizationRuleBroken, NotAllowed) as exc:  # removed by the other first: no longer a member
            return f"refused: {exc.message}"
        finally:
            connections.close_all()

    results = _race(step_down, [alice, otto])
    assert sorted(str(r)[:8] for r in results) == ["done", "refused:"], results
    assert privileged(Membership).filter(organization=org, role=OWNER).count() == 1


# --- Security 6: only owners and admins list pending invitations --------------------------------


def _api(user) -> APIClient:
    client = APIClient()
    client.force_login(user)
    return client


def test_api_lists_invitations_to_owners_and_admins_only(acme):
    url = f"/api/v1/organizations/{acme['org'].pk}/invitations"
    for name in ("alice", "adam"):
        response = _api(acme[name]).get(url)
        assert response.status_code == 200 and [i["email"] for i in response.json()["results"]] == ["carol@example.com"]
    response = _api(acme["mia"]).get(url)
    assert response.status_code == 403, response.json()
    assert "owners and admins" in response.json()["message"] and "carol" not in response.content.decode()


def test_page_shows_pending_invitations_to_owners_and_admins_only(acme):
    url = f"/settings/organization/?org={acme['org'].pk}"
    pages = {}
    for name in ("alice", "mia"):
        client = Client()
        client.force_login(acme[name])
        pages[name] = client.get(url)
    assert pages["alice"].status_code == pages["mia"].status_code == 200
    assert b"carol@example.com" in pages["alice"].content and b"carol@example.com" not in pages["mia"].content
