"""The staff admin keeps the product's rules: a price version's start never moves when only its
display fields change, a date drill-down to the last year is answered whatever parameters precede
it, a personal workspace stays personal and its user's, and a password staff set ends the user's
sessions as a reset does."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts.models import Membership, Organization, UserSession
from accounts.tests.factories import PASSWORD, make_user
from billing.tests.conftest import plans  # noqa: F401  (a fixture)
from chat import pricing
from chat.models import ModelPrice
from chat.tests.test_price_versions import _form
from config.db import rls

pytestmark = pytest.mark.django_db(transaction=True)

OWNER = Membership.Role.OWNER


@pytest.fixture
def alice(catalog, plans):  # noqa: F811
    return make_user(email="alice@example.com", display_name="Alice")


@pytest.fixture
def staff():
    client = Client(raise_request_exception=False)
    client.force_login(make_user(email="staff@example.com", role="staff", is_superuser=True))
    return client


def _signed_in(user) -> Client:
    client = Client(raise_request_exception=False)
    client.force_login(user)
    return client


def _personal(user) -> Organization:
    with rls.privileged(reason="test: the user's personal workspace"):
        return Organization.objects.get(is_personal=True, created_by=user)


def _organization_form(organization: Organization, memberships: list[dict], **changes) -> dict:
    """The organization's admin change form as a browser posts it (with its Members inline)."""
    data = {
        "name": organization.name,
        "slug": organization.slug,
        "auto_join_domain": organization.auto_join_domain,
        "created_by": str(organization.created_by_id or ""),
        "memberships-TOTAL_FORMS": str(len(memberships)),
        "memberships-INITIAL_FORMS": str(sum(1 for m in memberships if m.get("id"))),
        "memberships-MIN_NUM_FORMS": "0",
        "memberships-MAX_NUM_FORMS": "1000",
    }
    if organization.is_personal:
        data["is_personal"] = "on"
    for i, membership in enumerate(memberships):
        for name, value in membership.items():
            data[f"memberships-{i}-{name}"] = value
        data[f"memberships-{i}-organization"] = str(organization.pk)
    data.update(changes)
    return {name: value for name, value in data.items() if value is not None}


# --- 1. The model catalog: retiring or renaming a version a price change made --------------------


def test_retiring_a_price_version_made_by_a_price_change_is_saved_not_a_500(staff, catalog):
    """The catalog's documented way to retire a model is unticking "active" on its version
    (ModelPriceAdmin: "retire a model with is_active"). A version added by a price change starts
    at timezone.now(), with microseconds; the change form shows and posts its start to the second.
    Unticking "active" (or renaming it) is no new version, so ModelAdmin saves the instance with
    the form's start, now a fraction of a second earlier: migration 0003's trigger refuses any
    in-place change of effective_from, and the admin answers 500. Correct: the display fields are
    saved and the start is left as stored."""
    with rls.privileged(reason="test: a price change staff made a minute ago"):
        version = pricing.model_price_version_add(
            provider="openai",
            model="gpt-4o-mini",
            fields={"display_name": "GPT-4o mini", "context_window": 128000, "input_price": "0.20", "output_price": "0.80"},
            effective_from=(timezone.now() - timedelta(minutes=1)).replace(microsecond=654321),
        )
        version = ModelPrice.objects.get(pk=version.pk)
    form = _form(version, display_name="GPT-4o mini (retired)")
    del form["is_active"]  # unticked
    response = staff.post(reverse("admin:chat_modelprice_change", args=[version.pk]), form)
    with rls.privileged(reason="test: the version as stored"):
        stored = ModelPrice.objects.get(pk=version.pk)
    assert response.status_code == 302, response.status_code
    assert (stored.is_active, stored.display_name, stored.effective_from) == (False, "GPT-4o mini (retired)", version.effective_from)


# --- 2. The date drill-down guard --------------------------------------------------------------------


def test_a_date_drilldown_past_the_last_year_behind_another_year_parameter_is_not_a_500(staff, alice):
    """ConfabAdminSite guards the drill-down to year 9999 (Django computes the next year outside
    its own check and raises), but _drilldown_past_the_last_year returns on the first parameter
    whose name ends in `__year`: any earlier one (`a__year=0`, which Django ignores as a lookup on
    no field) hides `created_at__year=9999` behind it, and the message list is a 500 again.
    Correct: answered `?e=1`, as without the first parameter."""
    url = reverse("admin:chat_message_changelist")
    assert staff.get(f"{url}?created_at__year=9999").status_code == 302  # the guard, alone
    response = staff.get(f"{url}?a__year=0&created_at__year=9999")
    assert response.status_code in (200, 302), response.status_code


# --- 3. Personal workspaces in the organization admin --------------------------------------------------


def test_staff_unticking_personal_on_a_users_workspace_does_not_leave_them_unable_to_chat(staff, alice):
    """Every user has a personal workspace: new conversations are billed to it (chat.services.
    _personal_organization), it cannot be left, and it admits nobody by domain. The organization
    admin lets staff untick "personal" on it like any checkbox (no rule, no read-only field):
    saved, and Alice's "New conversation" is a 404 ("You have no organization to bill this
    conversation to"), in the API too. Correct: `is_personal` is not staff's to flip (read-only,
    or a form error), and Alice can still start a conversation."""
    workspace = _personal(alice)
    with rls.privileged(reason="test"):
        owner = Membership.objects.get(organization=workspace, user=alice)
    form = _organization_form(
        workspace, [{"id": str(owner.pk), "user": str(alice.pk), "role": OWNER}], is_personal=None, name="Alice's team now"
    )
    staff.post(reverse("admin:accounts_organization_change", args=[workspace.pk]), form)
    response = _signed_in(alice).post(reverse("chat:new"))
    assert response.status_code == 302, response.status_code


def test_staff_cannot_take_a_personal_workspace_from_its_user_in_the_members_inline(staff, alice):
    """membership_role_change and membership_remove refuse to demote or remove the user a personal
    workspace was made for (personal_workspace_keeps_its_user: "A personal workspace stays its own
    user's"). The organization admin's Members inline checks only that an owner remains: staff add
    Bob as owner and delete Alice's row, it saves, and Alice no longer belongs to her own workspace
    (her new conversations have nowhere to be billed: 404). Correct: the inline refuses it with a
    form error, as the service does."""
    bob = make_user(email="bob@example.com")
    workspace = _personal(alice)
    with rls.privileged(reason="test"):
        owner = Membership.objects.get(organization=workspace, user=alice)
    form = _organization_form(
        workspace,
        [{"id": str(owner.pk), "user": str(alice.pk), "role": OWNER, "DELETE": "on"}, {"id": "", "user": str(bob.pk), "role": OWNER}],
    )
    response = staff.post(reverse("admin:accounts_organization_change", args=[workspace.pk]), form)
    with rls.privileged(reason="test"):
        still_hers = Membership.objects.filter(organization=workspace, user=alice, role=OWNER).exists()
    assert still_hers, response.status_code
    assert response.status_code == 200


# --- 4. Staff setting a user's password in admin ------------------------------------------------------


def test_staff_setting_a_new_password_in_admin_leaves_no_other_session_listed_as_signed_in(staff, alice):
    """A user tells staff their account was taken over; staff set a new password with the user
    admin's "Set a new password" (Django's user_change_password view). The intruder's browser is
    signed out (its auth hash no longer matches), but nothing ends its session record: Settings →
    Sessions still lists the intruder as signed in, and its session data stays stored, which the
    password reset page (PasswordResetConfirmView.form_valid: user_sessions_end_all) and
    deactivation were fixed not to do. Correct: the same as a reset, every session is ended."""
    intruder = Client()
    assert intruder.post("/accounts/login/", {"username": alice.email, "password": PASSWORD}).status_code == 302
    new = "a-brand-new-passphrase-42"
    response = staff.post(
        reverse("admin:auth_user_password_change", args=[alice.pk]), {"password1": new, "password2": new, "usable_password": "true"}
    )
    assert response.status_code == 302, response.status_code
    assert intruder.get("/settings/profile/").status_code == 302  # really signed out
    with rls.privileged(reason="test: the sessions Alice's page lists"):
        listed = UserSession.objects.filter(user=alice, ended_at__isnull=True).count()
    assert listed == 0, f"{listed} session(s) still listed as signed in"
