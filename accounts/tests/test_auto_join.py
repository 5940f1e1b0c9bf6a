"""Domain auto-join needs proof on both sides: the admin who sets a domain has a verified
email at it (no webmail, no disposable domains, no personal workspace), and a newcomer
joins only once their own email at that domain is verified — in the service and in the
database's own join rule alike."""

import psycopg
import pytest
from django.test import Client

from accounts import services
from accounts.errors import InvitationInvalid, OrganizationRuleBroken
from accounts.models import Membership, Organization, User
from accounts.tests.factories import make_user
from config.db import rls

pytestmark = pytest.mark.django_db(transaction=True)


def verified(user: User) -> User:
    """The user after opening their verification link."""
    return services.email_verify(token=services.email_verification_token(user=user))


def team(owner: User, name: str = "Acme") -> Organization:
    with rls.privileged(reason="test: create organization"):
        return services.organization_create(user=owner, name=name)


def set_domain(owner: User, organization: Organization, domain: str) -> Organization:
    with rls.privileged(reason="test: configure domain"):
        return services.organization_update(actor=owner, organization=organization, auto_join_domain=domain)


def members(organization: Organization) -> dict[str, str]:
    return dict(Membership.objects.using("privileged").filter(organization=organization).values_list("user__email", "role"))


def _refused(owner, organization, domain) -> str:
    with pytest.raises(OrganizationRuleBroken) as refused:
        set_domain(owner, organization, domain)
    assert refused.value.extra["field"] == "auto_join_domain"
    organization.refresh_from_db(using="privileged")
    assert organization.auto_join_domain == ""
    return refused.value.message


def test_an_owner_with_an_unverified_email_cannot_set_a_domain():
    owner = make_user(email="boss@acme.test")
    assert "confirm your email" in _refused(owner, team(owner), "acme.test").lower()


def test_an_owner_can_set_only_the_domain_of_their_own_verified_email():
    owner = verified(make_user(email="boss@acme.test"))
    organization = team(owner)
    assert "acme.test" in _refused(owner, organization, "other.test")
    assert set_domain(owner, organization, "@Acme.test").auto_join_domain == "acme.test"


@pytest.mark.parametrize("email", ["someone@gmail.com", "someone@outlook.com", "someone@gmx.de", "someone@yandex.ru", "x@mailinator.com"])
def test_public_webmail_and_disposable_domains_are_refused(email):
    owner = verified(make_user(email=email))
    assert "public or disposable" in _refused(owner, team(owner), email.split("@")[1])


def test_a_personal_workspace_cannot_auto_join():
    owner = verified(make_user(email="boss@acme.test"))
    personal = (
        Membership.objects.using("privileged").select_related("organization").get(user=owner, organization__is_personal=True).organization
    )
    assert "personal" in _refused(owner, personal, "acme.test")


def test_a_newcomer_joins_only_after_verifying_their_email():
    owner = verified(make_user(email="boss@acme.test"))
    organization = set_domain(owner, team(owner), "acme.test")

    newcomer = make_user(email="dev@acme.test")
    outsider = make_user(email="dev@other.test")
    assert members(organization) == {"boss@acme.test": "owner"}

    verified(newcomer)
    verified(outsider)
    assert members(organization) == {"boss@acme.test": "owner", "dev@acme.test": "member"}
    verified(newcomer)  # a second click on the link joins nothing twice
    assert members(organization) == {"boss@acme.test": "owner", "dev@acme.test": "member"}


def test_the_verification_page_joins_the_organization():
    owner = verified(make_user(email="boss@acme.test"))
    organization = set_domain(owner, team(owner), "acme.test")
    newcomer = make_user(email="dev@acme.test")
    client = Client()
    response = client.get(f"/accounts/verify-email/{services.email_verification_token(user=newcomer)}/")
    assert response.status_code == 302
    assert members(organization)["dev@acme.test"] == "member"


def test_a_deactivated_account_verifying_a_link_sent_before_joins_nothing():
    """The link lives 3 days; an account deactivated meanwhile must not join by its domain."""
    owner = verified(make_user(email="boss@acme.test"))
    organization = set_domain(owner, team(owner), "acme.test")
    newcomer = make_user(email="gone@acme.test")
    token = services.email_verification_token(user=newcomer)
    with rls.privileged(reason="test: deactivate the account"):
        User.objects.filter(pk=newcomer.pk).update(is_active=False)
    with pytest.raises(InvitationInvalid, match="no longer active"):
        services.email_verify(token=token)
    assert "gone@acme.test" not in members(organization)


def _context(cur, user):
    cur.execute("SELECT set_config('app.user_id', %s, true), set_config('app.organization_ids', '', true)", [str(user.pk)])


def _owner_sql(sql, params=()):
    from django.db import connections

    with connections["owner"].cursor() as cur:
        cur.execute(sql, params)


def test_the_database_admits_no_unverified_newcomer_and_no_unproven_domain(raw_app_connection):
    """Rows written past the service (an old row, a bug) still admit nobody the rules refuse."""
    owner = verified(make_user(email="boss@acme.test"))
    acme = team(owner)
    unproven = team(make_user(email="lazy@acme.test"), name="Unproven")  # owner never verified
    personal = (
        Membership.objects.using("privileged").select_related("organization").get(user=owner, organization__is_personal=True).organization
    )
    for organization in (acme, unproven, personal):
        _owner_sql("UPDATE accounts_organization SET auto_join_domain = 'acme.test' WHERE id = %s", [organization.pk])
    newcomer = make_user(email="dev@acme.test")

    with raw_app_connection.cursor() as cur:
        _context(cur, newcomer)
        cur.execute("SELECT accounts_auto_join_organizations()")
        assert cur.fetchone()[0] == []  # not verified yet
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            cur.execute(
                "INSERT INTO accounts_membership (id, organization_id, user_id, role, created_at) VALUES (gen_random_uuid(), %s, %s, 'member', now())",
                [acme.pk, newcomer.pk],
            )
    raw_app_connection.rollback()

    _owner_sql("UPDATE accounts_user SET email_verified = true WHERE id = %s", [newcomer.pk])
    with raw_app_connection.cursor() as cur:
        _context(cur, newcomer)
        cur.execute("SELECT accounts_auto_join_organizations()")
        assert cur.fetchone()[0] == [acme.pk]  # not the personal workspace, not the unproven domain
        for organization in (unproven, personal):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                cur.execute(
                    "INSERT INTO accounts_membership (id, organization_id, user_id, role, created_at) "
                    "VALUES (gen_random_uuid(), %s, %s, 'member', now())",
                    [organization.pk, newcomer.pk],
                )
            raw_app_connection.rollback()
            _context(cur, newcomer)
    raw_app_connection.rollback()


def test_the_api_and_the_page_refuse_an_unproven_domain_with_a_message():
    owner = make_user(email="boss@acme.test")
    organization = team(owner)
    client = Client()
    client.force_login(owner, backend="accounts.backends.EmailBackend")

    response = client.patch(f"/api/v1/organizations/{organization.pk}", {"auto_join_domain": "acme.test"}, content_type="application/json")
    assert response.status_code == 400
    assert "confirm your email" in response.json()["message"].lower()

    response = client.post(f"/settings/organization/{organization.pk}/", {"name": "Acme", "auto_join_domain": "gmail.com"}, follow=True)
    assert response.redirect_chain == [(f"/settings/organization/?org={organization.pk}", 302)]
    assert "public or disposable" in response.context["update_form"].errors["auto_join_domain"][0]
    organization.refresh_from_db(using="privileged")
    assert organization.auto_join_domain == ""
