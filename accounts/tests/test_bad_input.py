"""Bad input never 500s: names refuse control and bidi-override characters (models, forms,
serializers, services alike), a mail subject stays one line whatever it is given,
accepting an invitation when already a member is a 400, and /events accepts only what
it will store."""

import pytest
from django.core import mail
from django.core.exceptions import ValidationError
from django.db import connections
from django.test import Client
from rest_framework.test import APIClient

from accounts import services
from accounts.errors import InvitationInvalid, OrganizationRuleBroken
from accounts.models import Membership, Organization, Preferences, User
from accounts.tasks import mail_send_task
from accounts.tests.factories import PASSWORD, make_user
from analytics import buffer
from analytics.models import Event
from config.db import rls

pytestmark = pytest.mark.django_db(transaction=True)

BAD_NAMES = ["Acme\r\nBcc: victim@example.com", "Acme\x00", "Acme\tInc", "Evil\u202eCorp", "a\u2066b", "\x1b[31mred"]
FINE_NAMES = ["Zoë & Co", "Ärzte ohne Grenzen", "李小龍", "👩\u200d💻 team", "O'Brien-Smith"]


def _api(user) -> APIClient:
    client = APIClient()
    client.force_login(user)
    return client


def _page(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.mark.parametrize("name", BAD_NAMES)
def test_services_refuse_names_with_control_characters(name):
    user = make_user()
    with rls.privileged(reason="test"), pytest.raises(OrganizationRuleBroken) as refused:
        services.organization_create(user=user, name=name)
    assert refused.value.extra["field"] == "name" and "control" in refused.value.message
    with pytest.raises(ValidationError) as invalid:
        services.user_update(user=user, display_name=name)
    assert "control" in str(invalid.value.message_dict["display_name"])
    with rls.privileged(reason="test"), pytest.raises(ValidationError):
        services.user_create(email="new@example.com", password=PASSWORD, first_name=name)
    assert not User.objects.using("privileged").filter(email="new@example.com").exists()


@pytest.mark.parametrize("name", ["\u200b", "\u200b\u200c\ufeff", "\u3164", "\u2800\u2800", "\u2060 \u2003"])
def test_names_of_only_characters_that_draw_nothing_are_refused(name):
    """Zero-width spaces, joiners, fillers and blank braille alone: a member list entry, an
    organization in the switcher or a name in a mail that no one can see or click."""
    user = make_user()
    with rls.privileged(reason="test"), pytest.raises(OrganizationRuleBroken) as refused:
        services.organization_create(user=user, name=name)
    assert "shows nothing" in refused.value.message
    with pytest.raises(ValidationError) as invalid:
        services.user_update(user=user, display_name=name)
    assert "shows nothing" in str(invalid.value.message_dict["display_name"])
    response = _api(user).post("/api/v1/organizations", {"name": name}, format="json")
    assert response.status_code == 400, response.json()
    page = _page(user).post("/settings/organization/new/", {"name": name}, follow=True)
    assert page.status_code == 200 and page.context["create_form"].errors["name"]
    assert Organization.objects.using("privileged").filter(memberships__user=user).count() == 1  # the personal one only


@pytest.mark.parametrize("name", FINE_NAMES)
def test_ordinary_names_in_any_script_are_kept(name):
    user = make_user()
    with rls.privileged(reason="test"):
        organization = services.organization_create(user=user, name=name)
        services.user_update(user=user, display_name=name, last_name=name)
    assert organization.name == name and User.objects.using("privileged").get(pk=user.pk).display_name == name


def test_model_fields_carry_the_validator():
    organization = Organization(name="Acme\n", slug="acme")
    with pytest.raises(ValidationError) as invalid:
        organization.full_clean(exclude=["created_by"])
    assert "name" in invalid.value.message_dict
    user = User(email="x@example.com", first_name="a\u202eb", last_name="c\r", display_name="d\x07")
    with pytest.raises(ValidationError) as invalid:
        user.full_clean(exclude=["password"], validate_unique=False)
    assert {"first_name", "last_name", "display_name"} <= set(invalid.value.message_dict)


def test_the_api_answers_400_with_a_message_for_a_name_with_a_newline():
    user = make_user()
    client = _api(user)
    created = client.post("/api/v1/organizations", {"name": "Acme\r\nBcc: x@example.com"}, format="json")
    assert created.status_code == 400 and "control" in str(created.json())
    me = client.patch("/api/v1/me", {"display_name": "Bob\u202e"}, format="json")
    assert me.status_code == 400 and "control" in str(me.json())
    organization = Membership.objects.using("privileged").select_related("organization").get(user=user).organization
    renamed = client.patch(f"/api/v1/organizations/{organization.pk}", {"name": "A\nB"}, format="json")
    assert renamed.status_code == 400 and "control" in str(renamed.json())


def test_the_pages_show_a_form_error_for_a_name_with_a_newline():
    response = Client().post(
        "/accounts/signup/",
        {"email": "new@example.com", "display_name": "New\r\nPerson", "password": PASSWORD, "password_confirm": PASSWORD},
    )
    assert response.status_code == 400 and "control" in response.context["form"].errors["display_name"][0]
    user = make_user()
    response = _page(user).post("/settings/profile/", {"display_name": "x\u202ey", "timezone": "UTC", "locale": "en"})
    assert response.status_code == 400 and "control" in response.context["form"].errors["display_name"][0]
    response = _page(user).post("/settings/organization/new/", {"name": "Acme\r\nX"}, follow=True)
    assert response.status_code == 200 and "control" in response.context["create_form"].errors["name"][0]


@pytest.mark.parametrize("path,field", [("me", "locale"), ("preferences", "language"), ("preferences", "default_persona")])
def test_account_text_fields_refuse_control_and_bidi_characters(path, field):
    """PATCH /api/v1/me {"locale": "en\\x1b[2J\\u202e"} (or the preferences' language or default
    persona) answers 200 and stores the escape sequence and the right-to-left override, which
    then show on the settings pages and in admin. Names refuse these (validate_name); these
    fields take anything but NUL. It should be a 400 naming the field."""
    client = _api(make_user())
    client.raise_request_exception = False
    response = client.patch(f"/api/v1/{path}", {field: "en\x1b[2J\u202e"}, format="json")
    assert response.status_code == 400, (response.status_code, response.content[:300])
    assert set(response.json()) == {"message", "extra"}
    assert field in response.json()["extra"]["fields"]


def test_the_settings_pages_refuse_a_locale_or_language_that_is_no_language_tag():
    """The profile and preferences pages show a form error on the field, and store nothing."""
    user = make_user()
    response = _page(user).post("/settings/profile/", {"display_name": "A", "timezone": "UTC", "locale": "en\u202e"})
    assert response.status_code == 400 and "language tag" in response.context["form"].errors["locale"][0]
    response = _page(user).post(
        "/settings/preferences/", {"theme": "dark", "temperature": "0.7", "language": "de\nBcc", "default_persona": "x\u2066y"}
    )
    assert response.status_code == 400
    assert {"language", "default_persona"} <= set(response.context["form"].errors)
    assert User.objects.using("privileged").get(pk=user.pk).locale == "en"
    assert not Preferences.objects.using("privileged").filter(user=user, theme="dark").exists()


@pytest.mark.parametrize("tag", ["en", "fr-CA", "de-AT", "zh-Hant-TW", "pt_BR", "klingon"])
def test_language_tags_are_kept(tag):
    client = _api(make_user())
    assert client.patch("/api/v1/me", {"locale": tag}, format="json").json()["locale"] == tag
    assert client.patch("/api/v1/preferences", {"language": tag}, format="json").json()["language"] == tag


def test_a_mail_subject_is_one_line_whatever_it_is_given():
    mail_send_task(subject="Join Acme\r\nBcc: victim@example.com\x00 now", body="Hello", recipients=["a@example.com"])
    assert len(mail.outbox) == 1
    assert mail.outbox[0].subject == "Join Acme Bcc: victim@example.com now" and mail.outbox[0].to == ["a@example.com"]


def test_an_invitation_from_an_organization_whose_stored_name_has_a_newline_is_created():
    """Rows from before the validator: the invitation is made and its mail queued, no 500."""
    owner = make_user()
    with rls.privileged(reason="test"):
        organization = services.organization_create(user=owner, name="Acme")
    with connections["owner"].cursor() as cur:
        cur.execute("UPDATE accounts_organization SET name = %s WHERE id = %s", ["Acme\r\nBcc: x@example.com", organization.pk])
    response = _page(owner).post(f"/settings/organization/{organization.pk}/invitations/", {"email": "guest@example.com", "role": "member"})
    assert response.status_code == 302


# --- Accepting an invitation when already a member -------------------------------------


@pytest.fixture
def member_with_pending_invitation():
    """Bob holds a pending invitation to Acme and is already a member (joined another way)."""
    alice = make_user(email="alice@example.com")
    bob = make_user(email="bob@example.com")
    with rls.privileged(reason="test"):
        acme = services.organization_create(user=alice, name="Acme")
        _, token = services.invitation_create(actor=alice, organization=acme, email=bob.email)
        Membership.objects.create(organization=acme, user=bob, role=Membership.Role.MEMBER)
    return bob, acme, token


def test_accepting_an_invitation_when_already_a_member_is_refused_by_the_service(member_with_pending_invitation):
    bob, _acme, token = member_with_pending_invitation
    with rls.privileged(reason="test"), pytest.raises(InvitationInvalid) as refused:
        services.invitation_accept(user=bob, token=token)
    assert refused.value.status_code == 400 and "already a member" in refused.value.message


def test_accepting_an_invitation_when_already_a_member_is_a_400_in_the_api(member_with_pending_invitation):
    bob, _acme, token = member_with_pending_invitation
    response = _api(bob).post("/api/v1/invitations/accept", {"token": token}, format="json")
    assert response.status_code == 400, response.content
    assert "already a member" in response.json()["message"]


def test_accepting_an_invitation_when_already_a_member_shows_an_error_on_the_page(member_with_pending_invitation):
    bob, _acme, token = member_with_pending_invitation
    response = _page(bob).post(f"/accounts/invitations/{token}/")
    assert response.status_code == 400
    assert "already a member" in response.content.decode()


def test_two_accepts_racing_one_joins_and_the_other_is_told_it_is_already_a_member():
    """A second acceptance that passed the membership check before the first committed gets
    the unique constraint, reported as a 400, not an IntegrityError (two real connections)."""
    import threading

    import psycopg

    alice, bob = make_user(email="alice@example.com"), make_user(email="bob@example.com")
    with rls.privileged(reason="test"):
        acme = services.organization_create(user=alice, name="Acme")
        _, token = services.invitation_create(actor=alice, organization=acme, email=bob.email)
    params = connections["owner"].get_connection_params()
    for name in ("context", "cursor_factory", "prepare_threshold"):
        params.pop(name, None)
    first = psycopg.connect(**params)  # the first acceptance, not yet committed
    first.execute(
        "INSERT INTO accounts_membership (id, organization_id, user_id, role, created_at) VALUES (gen_random_uuid(), %s, %s, 'member', now())",
        [acme.pk, bob.pk],
    )
    outcome = {}

    def second():
        try:
            with rls.privileged(reason="test: second acceptance"):
                services.invitation_accept(user=bob, token=token)
        except Exception as exc:  # the test reads what was raised
            outcome["error"] = exc
        finally:
            connections.close_all()

    thread = threading.Thread(target=second)
    thread.start()
    thread.join(timeout=1)
    assert thread.is_alive()  # waiting on the first acceptance's row
    first.commit()
    first.close()
    thread.join(timeout=10)
    assert isinstance(outcome.get("error"), InvitationInvalid), outcome
    assert outcome["error"].status_code == 400 and "already a member" in outcome["error"].message
    assert Membership.objects.using("privileged").filter(organization=acme, user=bob).count() == 1


# --- /events: accepted means stored ----------------------------------------------------


def test_events_reports_as_accepted_exactly_what_is_stored():
    user = make_user()
    events = [
        {"name": "ok", "properties": {"path": "/chat"}},
        {"name": "nul in a value", "properties": {"q": "a\u0000b"}},
        {"name": "nul in a key", "properties": {"a\u0000": 1}},
        {"name": "lone surrogate", "properties": {"q": "\ud800"}},
        {"name": "surrogate in session", "session_id": "s\udfff"},
        {"name": "nested nul", "properties": {"list": [{"deep": ["x\u0000"]}]}},
        {"name": "also ok", "properties": {"emoji": "👩\u200d💻", "n": 1.5}},
    ]
    # A raw body: the JSON escapes for NUL and lone surrogates are what a client can send.
    import json

    body = json.dumps({"events": events})
    response = _api(user).post("/api/v1/events", body, content_type="application/json")
    assert response.status_code == 202, response.content
    answer = response.json()
    assert [r["index"] for r in answer["rejected"]] == [1, 2, 3, 4, 5]
    assert all(r["errors"] for r in answer["rejected"])
    buffer.buffer_flush("event")
    stored = Event.objects.using("privileged").filter(user_id=user.pk)
    assert answer["accepted"] == stored.count() == 2
    assert buffer.buffer_length("event") == 0
