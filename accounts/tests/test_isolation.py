"""Every account table: another user cannot read or write a user's rows (raw SQL, app role)."""

import psycopg
import pytest

from accounts import services
from accounts.models import ApiKey, Integration, Invitation, Membership, Preferences, ProviderCredential, UserSession
from accounts.tests.factories import make_user
from config.crypto import token_digest
from config.db import rls

pytestmark = pytest.mark.django_db(transaction=True)

USER_OWNED = {
    "accounts_preferences": Preferences,
    "accounts_usersession": UserSession,
    "accounts_apikey": ApiKey,
    "accounts_providercredential": ProviderCredential,
    "accounts_integration": Integration,
}


@pytest.fixture
def tenants():
    """Alice and Bob, each with one row in every account table."""
    alice, bob = make_user(email="alice@example.com"), make_user(email="bob@example.com")
    with rls.privileged(reason="test fixture"):
        for user in (alice, bob):
            services.api_key_create(user=user, name="k", scopes=["account:read"])
            services.provider_credential_set(user=user, provider="openai", api_key="sk-" + "x" * 40)
            services.integration_connect(user=user, service="calendar", access_token="tok-" + user.email)
            UserSession.objects.create(user=user, session_key_digest=token_digest(f"sess-{user.pk.hex[:20]}"))
            org = Membership.objects.get(user=user).organization
            Invitation.objects.create(
                organization=org,
                email=f"guest-of-{user.email}",
                token_hash=user.pk.hex * 2,
                invited_by=user,
                expires_at="2100-01-01T00:00:00Z",
            )
    return alice, bob


def _context(cur, user):
    org_ids = ",".join(str(o) for o in Membership.objects.using("privileged").filter(user=user).values_list("organization_id", flat=True))
    cur.execute("SELECT set_config('app.user_id', %s, true), set_config('app.organization_ids', %s, true)", [str(user.pk), org_ids])


@pytest.mark.parametrize("table", sorted(USER_OWNED))
def test_user_owned_table_is_isolated(raw_app_connection, tenants, table):
    alice, bob = tenants
    with raw_app_connection.cursor() as cur:
        _context(cur, alice)
        cur.execute(f"SELECT DISTINCT user_id FROM {table}")
        assert cur.fetchall() == [(alice.pk,)]
        cur.execute(f"UPDATE {table} SET user_id = user_id WHERE user_id = %s", [bob.pk])
        assert cur.rowcount == 0
        cur.execute(f"DELETE FROM {table} WHERE user_id = %s", [bob.pk])
        assert cur.rowcount == 0
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            cur.execute(f"UPDATE {table} SET user_id = %s WHERE user_id = %s", [bob.pk, alice.pk])
    raw_app_connection.rollback()
    assert USER_OWNED[table].objects.using("privileged").filter(user=bob).count() == 1


def test_no_context_reads_no_account_rows(raw_app_connection, tenants):
    with raw_app_connection.cursor() as cur:
        for table in [*USER_OWNED, "accounts_invitation", "accounts_membership", "accounts_organization", "accounts_user"]:
            cur.execute(f"SELECT count(*) FROM {table}")
            assert cur.fetchone()[0] == 0, table


def test_invitations_are_visible_to_their_organization_and_invitee_only(raw_app_connection, tenants):
    alice, bob = tenants
    guest = make_user(email="guest-of-bob@example.com")
    with raw_app_connection.cursor() as cur:
        _context(cur, alice)
        cur.execute("SELECT email FROM accounts_invitation")
        assert cur.fetchall() == [("guest-of-alice@example.com",)]
        raw_app_connection.rollback()
        _context(cur, guest)
        cur.execute("SELECT email FROM accounts_invitation")
        assert cur.fetchall() == [("guest-of-bob@example.com",)]
    raw_app_connection.rollback()


def test_joining_an_organization_needs_an_invitation(raw_app_connection, tenants):
    alice, bob = tenants
    bob_org = Membership.objects.using("privileged").get(user=bob).organization_id
    with raw_app_connection.cursor() as cur:
        _context(cur, alice)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            cur.execute(
                "INSERT INTO accounts_membership (id, organization_id, user_id, role, created_at) "
                "VALUES (gen_random_uuid(), %s, %s, 'member', now())",
                [bob_org, alice.pk],
            )
    raw_app_connection.rollback()
    guest = make_user(email="guest-of-bob@example.com")
    with raw_app_connection.cursor() as cur:
        _context(cur, guest)
        # Invited as a member: joining as owner is refused, as member accepted.
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            cur.execute(
                "INSERT INTO accounts_membership (id, organization_id, user_id, role, created_at) "
                "VALUES (gen_random_uuid(), %s, %s, 'owner', now())",
                [bob_org, guest.pk],
            )
    raw_app_connection.rollback()
    with raw_app_connection.cursor() as cur:
        _context(cur, guest)
        cur.execute(
            "INSERT INTO accounts_membership (id, organization_id, user_id, role, created_at) "
            "VALUES (gen_random_uuid(), %s, %s, 'member', now())",
            [bob_org, guest.pk],
        )
        assert cur.rowcount == 1
    raw_app_connection.rollback()


def test_fellow_members_see_each_other_but_cannot_edit(raw_app_connection, tenants):
    alice, bob = tenants
    with rls.privileged(reason="test: put bob in alice's org"):
        alice_org = Membership.objects.get(user=alice).organization
        Membership.objects.create(organization=alice_org, user=bob, role=Membership.Role.MEMBER)
    with raw_app_connection.cursor() as cur:
        _context(cur, alice)
        cur.execute("SELECT email FROM accounts_user ORDER BY email")
        assert cur.fetchall() == [("alice@example.com",), ("bob@example.com",)]
        cur.execute("UPDATE accounts_user SET display_name = 'x' WHERE email = 'bob@example.com'")
        assert cur.rowcount == 0
    raw_app_connection.rollback()


def test_auto_join_domain_adds_new_users_as_members():
    owner = make_user(email="boss@acme.test", email_verified=True)
    with rls.privileged(reason="test: configure domain"):
        org = services.organization_create(user=owner, name="Acme")
        services.organization_update(actor=owner, organization=org, auto_join_domain="acme.test")
    newcomer = make_user(email="dev@acme.test", email_verified=True)  # verified: joins at once (else on verifying)
    outsider = make_user(email="dev@other.test", email_verified=True)
    roles = dict(Membership.objects.using("privileged").filter(organization=org).values_list("user__email", "role"))
    assert roles == {"boss@acme.test": "owner", "dev@acme.test": "member"}
    assert not Membership.objects.using("privileged").filter(organization=org, user=outsider).exists()
    assert newcomer.pk
