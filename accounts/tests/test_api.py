"""The accounts REST API: one test per endpoint, its happy path and each error path;
other tenants' ids answer 404; secrets never leave the response they were made in."""

import re
import time
from datetime import timedelta

import pytest
import yaml
from django.core.cache import cache
from django.db import connections
from django.utils import timezone
from openapi_spec_validator import validate
from rest_framework.test import APIClient

import accounts.services as services_module
from accounts import services
from accounts.models import ApiKey, Membership, ProviderCredential, UserSession
from accounts.services import api_keys
from accounts.tests.factories import mail_arrives, make_user
from config.crypto import token_digest
from config.db import rls
from config.tests.races import Paused, hold_in_thread, until

pytestmark = pytest.mark.django_db(transaction=True)

READ, WRITE = "account:read", "account:write"
OPENAI_KEY = "sk-" + "a" * 36 + "f3a9"
OTHER_OPENAI_KEY = "sk-" + "b" * 36 + "9z8y"
API = "/api/v1"


def session_client(user) -> APIClient:
    client = APIClient()
    client.force_login(user)
    return client


def key_client(user, scopes=(READ, WRITE), **kwargs) -> APIClient:
    with rls.privileged(reason="test: issue an API key"):
        client = APIClient()
        client.api_key, client.secret = services.api_key_create(user=user, name="test key", scopes=list(scopes), **kwargs)
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {client.secret}")
    return client


def bearer(raw: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=raw)
    return client


def privileged(model):
    return model.objects.using("privileged")


def assert_error(response, status: int, fragment: str = ""):
    body = response.json()
    assert response.status_code == status, body
    assert set(body) == {"message", "extra"}, body
    assert fragment.lower() in body["message"].lower(), body
    return body


def personal_org_id(user):
    return privileged(Membership).get(user=user, organization__is_personal=True).organization_id


@pytest.fixture
def acme(alice, bob, celery_worker):
    """Alice's organization "Acme", which Bob joined through an emailed invitation (mailed by a real worker)."""
    client = session_client(alice)
    org_id = client.post(f"{API}/organizations", {"name": "Acme"}, format="json").json()["id"]
    client.post(f"{API}/organizations/{org_id}/invitations", {"email": "bob@example.com"}, format="json")
    token = re.search(r"/accounts/invitations/([^/\s]+)/", mail_arrives()[-1].body).group(1)
    assert session_client(bob).post(f"{API}/invitations/accept", {"token": token}, format="json").status_code == 201
    memberships = {m.user.email: m.pk for m in privileged(Membership).filter(organization_id=org_id).select_related("user")}
    return {"id": org_id, "alice_membership": memberships["alice@example.com"], "bob_membership": memberships["bob@example.com"]}


# --- Root, schema, authentication ---------------------------------------------------------


def test_root_lists_the_account_endpoints(client):
    endpoints = client.get(f"{API}/").json()["endpoints"]
    assert {"me", "preferences", "organizations", "api-keys", "provider-credentials", "sessions", "invitation-accept"} <= set(endpoints)
    assert endpoints["api-keys"].endswith("/api/v1/api-keys")


def test_openapi_schema_validates_and_lists_every_account_path(client):
    response = client.get("/api/schema/")
    assert response.status_code == 200
    schema = yaml.safe_load(response.content)
    validate(schema)
    expected = {
        "/api/v1/me": {"get", "patch"},
        "/api/v1/preferences": {"get", "patch"},
        "/api/v1/organizations": {"get", "post"},
        "/api/v1/organizations/{organization_id}": {"get", "patch"},
        "/api/v1/organizations/{organization_id}/leave": {"post"},
        "/api/v1/organizations/{organization_id}/members": {"get"},
        "/api/v1/organizations/{organization_id}/members/{membership_id}": {"patch", "delete"},
        "/api/v1/organizations/{organization_id}/invitations": {"get", "post"},
        "/api/v1/organizations/{organization_id}/invitations/{invitation_id}": {"delete"},
        "/api/v1/invitations/accept": {"post"},
        "/api/v1/api-keys": {"get", "post"},
        "/api/v1/api-keys/{api_key_id}": {"get", "delete"},
        "/api/v1/provider-credentials": {"get", "post"},
        "/api/v1/provider-credentials/{credential_id}": {"get", "delete"},
        "/api/v1/sessions": {"get"},
        "/api/v1/sessions/{user_session_id}": {"delete"},
    }
    for path, methods in expected.items():
        assert set(schema["paths"][path]) == methods, path
    # Lists are paginated; secrets have no output field except the one-time `key`.
    assert schema["paths"]["/api/v1/api-keys"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "PaginatedApiKeyOutList"
    )
    components = schema["components"]["schemas"]
    assert "key" not in components["ApiKeyOut"]["properties"]
    assert "key" in components["ApiKeyCreatedOut"]["properties"]
    assert "api_key" not in components["ProviderCredentialOut"]["properties"]
    assert (
        components["ProviderCredentialInRequest"]["properties"]["api_key"]["writeOnly"] is True
    )  # requests apart (COMPONENT_SPLIT_REQUEST)


def test_requests_without_credentials_are_401(client):
    for path in ("me", "preferences", "organizations", "api-keys", "provider-credentials", "sessions"):
        assert_error(client.get(f"{API}/{path}"), 401)


def test_unknown_malformed_revoked_and_expired_keys_are_401(alice):
    assert_error(bearer("Bearer ck_abcdefghij_" + "x" * 43).get(f"{API}/me"), 401, "unknown api key")
    assert_error(bearer("Bearer not-a-key").get(f"{API}/me"), 401, "malformed")
    assert_error(bearer("Bearer two words").get(f"{API}/me"), 401, "malformed")

    revoked = key_client(alice)
    with rls.privileged(reason="test: revoke"):
        services.api_key_revoke(user=alice, api_key=revoked.api_key)
    assert_error(revoked.get(f"{API}/me"), 401, "revoked")

    expired = key_client(alice)
    with rls.privileged(reason="test"):
        ApiKey.objects.filter(pk=expired.api_key.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    response = expired.get(f"{API}/me")
    assert_error(response, 401, "expired")
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_key_scopes_are_enforced(alice):
    read_only = key_client(alice, scopes=[READ])
    assert read_only.get(f"{API}/me").status_code == 200
    assert_error(read_only.patch(f"{API}/me", {"display_name": "x"}, format="json"), 403, "'account:write' scope")
    assert_error(read_only.post(f"{API}/api-keys", {"name": "n", "scopes": [READ]}, format="json"), 403, "account:write")
    other = key_client(alice, scopes=["chat:read"])
    assert_error(other.get(f"{API}/me"), 403, "'account:read' scope")
    # A session is the user in the browser: not scope-limited.
    assert session_client(alice).patch(f"{API}/me", {"display_name": "x"}, format="json").status_code == 200


def test_last_used_at_is_written_at_most_once_a_minute(alice, monkeypatch):
    client = key_client(alice, scopes=[READ])
    assert privileged(ApiKey).get(pk=client.api_key.pk).last_used_at is None
    assert client.get(f"{API}/me").status_code == 200
    first = privileged(ApiKey).get(pk=client.api_key.pk).last_used_at
    assert first is not None
    assert client.get(f"{API}/me").status_code == 200
    assert privileged(ApiKey).get(pk=client.api_key.pk).last_used_at == first
    # Once the minute is over (in this process's clock and in Redis), the next use writes again.
    later = time.monotonic() + 61
    monkeypatch.setattr(api_keys.time, "monotonic", lambda: later)
    cache.delete(f"apikey-used:{client.api_key.pk}")
    assert client.get(f"{API}/me").status_code == 200
    assert privileged(ApiKey).get(pk=client.api_key.pk).last_used_at > first


# --- Me and preferences --------------------------------------------------------------------


def test_me_read_and_update(alice):
    client = key_client(alice)
    me = client.get(f"{API}/me").json()
    assert me["email"] == "alice@example.com"
    assert me["display_name"] == "Alice"
    assert "password" not in me

    response = client.patch(
        f"{API}/me", {"display_name": "Al", "timezone": "Europe/Paris", "email": "evil@example.com", "role": "staff"}, format="json"
    )
    assert response.status_code == 200, response.json()
    assert response.json()["display_name"] == "Al"
    assert response.json()["timezone"] == "Europe/Paris"
    stored = privileged(type(alice)).get(pk=alice.pk)
    assert (stored.display_name, stored.timezone, stored.email, stored.role) == ("Al", "Europe/Paris", "alice@example.com", "member")

    body = assert_error(client.patch(f"{API}/me", {"timezone": "Mars/Olympus"}, format="json"), 400, "Invalid input: timezone")
    assert "timezone" in body["extra"]["fields"]
    body = assert_error(client.patch(f"{API}/me", {"avatar_url": "not a url"}, format="json"), 400, "avatar_url")
    assert "avatar_url" in body["extra"]["fields"]
    assert_error(client.patch(f"{API}/me", {"display_name": "x" * 151}, format="json"), 400, "display_name")
    assert privileged(type(alice)).get(pk=alice.pk).timezone == "Europe/Paris"


def test_preferences_read_and_update(alice):
    client = key_client(alice)
    prefs = client.get(f"{API}/preferences").json()
    assert (prefs["temperature"], prefs["theme"], prefs["preferred_provider"]) == ("0.70", "system", "echo")

    response = client.patch(f"{API}/preferences", {"temperature": "1.5", "theme": "dark", "extra": {"font": "mono"}}, format="json")
    assert response.status_code == 200, response.json()
    assert (response.json()["temperature"], response.json()["theme"], response.json()["extra"]) == ("1.50", "dark", {"font": "mono"})
    assert client.get(f"{API}/preferences").json()["theme"] == "dark"

    for bad, field in (
        ({"temperature": "2.5"}, "temperature"),
        ({"temperature": "-0.1"}, "temperature"),
        ({"temperature": "warm"}, "temperature"),
        ({"theme": "neon"}, "theme"),
        ({"extra": [1, 2]}, "extra"),
    ):
        body = assert_error(client.patch(f"{API}/preferences", bad, format="json"), 400, f"Invalid input: {field}")
        assert field in body["extra"]["fields"]
    assert client.get(f"{API}/preferences").json()["temperature"] == "1.50"


# --- API keys ----------------------------------------------------------------------------


def test_api_key_create_shows_the_secret_once_and_it_authenticates(alice):
    client = session_client(alice)
    expires = (timezone.now() + timedelta(days=30)).isoformat()
    response = client.post(f"{API}/api-keys", {"name": "CI", "scopes": [READ], "expires_at": expires}, format="json")
    assert response.status_code == 201, response.json()
    created = response.json()
    secret = created["key"]
    assert secret.startswith(f"ck_{created['prefix']}_")
    assert created["masked"] == f"ck_{created['prefix']}_…"
    assert created["scopes"] == [READ]
    assert created["expires_at"] is not None

    listed = client.get(f"{API}/api-keys")
    assert listed.status_code == 200
    assert listed.json()["count"] == 1
    assert secret not in listed.content.decode()
    assert "key" not in listed.json()["results"][0]
    detail = client.get(f"{API}/api-keys/{created['id']}")
    assert detail.status_code == 200
    assert secret not in detail.content.decode()
    assert "key_hash" not in detail.json()

    # The secret works, and only as itself.
    assert bearer(f"Bearer {secret}").get(f"{API}/me").json()["email"] == "alice@example.com"
    assert bearer(f"Bearer {secret[:-1]}{'A' if secret[-1] != 'A' else 'B'}").get(f"{API}/me").status_code == 401


def test_api_key_create_refuses_bad_input(alice):
    client = session_client(alice)
    assert_error(client.post(f"{API}/api-keys", {"name": "", "scopes": [READ]}, format="json"), 400, "Invalid input: name")
    assert_error(client.post(f"{API}/api-keys", {"name": "n", "scopes": []}, format="json"), 400, "Invalid input: scopes")
    assert_error(client.post(f"{API}/api-keys", {"name": "n", "scopes": ["root"]}, format="json"), 400, "scopes")
    past = (timezone.now() - timedelta(days=1)).isoformat()
    assert_error(client.post(f"{API}/api-keys", {"name": "n", "scopes": [READ], "expires_at": past}, format="json"), 400, "in the future")
    assert_error(client.post(f"{API}/api-keys", {"name": "   ", "scopes": [READ]}, format="json"), 400, "name")
    # A key cannot mint a wider key than itself.
    narrow = key_client(alice, scopes=[READ, WRITE])
    assert_error(narrow.post(f"{API}/api-keys", {"name": "wide", "scopes": [READ, "chat:write"]}, format="json"), 403, "scopes it has")
    assert narrow.post(f"{API}/api-keys", {"name": "same", "scopes": [READ]}, format="json").status_code == 201
    assert privileged(ApiKey).filter(user=alice).count() == 2


def test_api_key_revoke_keeps_the_row_and_stops_the_key(alice):
    client = session_client(alice)
    created = client.post(f"{API}/api-keys", {"name": "temp", "scopes": [READ]}, format="json").json()
    assert client.delete(f"{API}/api-keys/{created['id']}").status_code == 204
    row = client.get(f"{API}/api-keys/{created['id']}").json()
    assert row["is_active"] is False
    assert row["revoked_at"] is not None
    assert client.get(f"{API}/api-keys").json()["count"] == 1
    assert_error(bearer(f"Bearer {created['key']}").get(f"{API}/me"), 401, "revoked")
    assert_error(client.get(f"{API}/api-keys/00000000-0000-0000-0000-000000000000"), 404)
    assert_error(client.delete(f"{API}/api-keys/00000000-0000-0000-0000-000000000000"), 404)


def test_a_key_revoked_while_it_mints_a_key_leaves_no_key_behind(alice, monkeypatch):
    """Whoever holds a leaked key (account:write) asks it for a new key; the owner revokes the
    leaked key meanwhile, and the revoke commits first. The request, authenticated before the
    revoke, then creates the child key anyway (201, a working secret): revoking the key did not
    stop what it was doing, and the attacker keeps the account through the child. The
    creation should re-check the parent under a lock (SELECT ... FOR SHARE WHERE is_active) in
    its transaction and refuse (401/403) once it is revoked: it acts first or not at all."""
    client = key_client(alice, scopes=[READ, WRITE])
    client.raise_request_exception = False
    assert client.get(f"{API}/me").status_code == 200  # its use recorded: the next request writes nothing on the key
    reached, release = hold_in_thread(monkeypatch, services_module, "api_key_create", "minter", after=False)
    minter = Paused(lambda: client.post(f"{API}/api-keys", {"name": "child", "scopes": [READ]}, format="json"), "minter")
    minter.start()
    assert reached.wait(60), "the request never reached the key's creation"

    def revoke():
        with rls.privileged(reason="test: the owner revokes the leaked key"):
            services.api_key_revoke(user=alice, api_key=privileged(ApiKey).get(pk=client.api_key.pk))

    revoker = Paused(revoke, "revoker")
    revoker.start()
    until(lambda: not revoker.is_alive(), "the revoke committed (nothing holds the key's row)")
    release.set()
    minter.join(60)
    assert not isinstance(revoker.result, Exception), revoker.result
    response = minter.result
    assert not privileged(ApiKey).filter(user=alice, name="child").exists(), (
        f"a key revoked before it minted a child still made one: {response.status_code} {response.content[:200]!r}"
    )
    assert_error(response, 401, "revoked")  # what the revoked key is answered from now on


# --- Provider credentials -----------------------------------------------------------------


def test_provider_credentials_are_masked_encrypted_and_replaced_in_place(alice):
    client = key_client(alice)
    response = client.post(f"{API}/provider-credentials", {"provider": "openai", "api_key": OPENAI_KEY}, format="json")
    assert response.status_code == 201, response.json()
    created = response.json()
    assert created["api_key_mask"] == "sk-…f3a9"
    assert (created["provider"], created["access_type"], created["is_active"]) == ("openai", "user_api_key", True)
    assert "api_key" not in created and "api_key_encrypted" not in created

    replaced = client.post(f"{API}/provider-credentials", {"provider": "openai", "api_key": OTHER_OPENAI_KEY}, format="json")
    assert replaced.status_code == 200, replaced.json()
    assert replaced.json()["id"] == created["id"]
    assert replaced.json()["api_key_mask"] == "sk-…9z8y"
    listed = client.get(f"{API}/provider-credentials")
    assert listed.json()["count"] == 1
    detail = client.get(f"{API}/provider-credentials/{created['id']}")
    assert detail.status_code == 200
    for body in (response, replaced, listed, detail):
        text = body.content.decode()
        assert OPENAI_KEY not in text and OTHER_OPENAI_KEY not in text and "a" * 36 not in text

    with connections["owner"].cursor() as cur:
        cur.execute("SELECT api_key_encrypted FROM accounts_providercredential WHERE id = %s", [created["id"]])
        (ciphertext,) = cur.fetchone()
    assert ciphertext and OTHER_OPENAI_KEY not in ciphertext and "b" * 36 not in ciphertext

    assert client.delete(f"{API}/provider-credentials/{created['id']}").status_code == 204
    assert_error(client.get(f"{API}/provider-credentials/{created['id']}"), 404)
    assert not privileged(ProviderCredential).filter(user=alice).exists()


def test_provider_credential_refuses_malformed_keys_without_echoing_them(alice):
    client = session_client(alice)
    body = assert_error(
        client.post(f"{API}/provider-credentials", {"provider": "openai", "api_key": "pk-not-a-real-key-123456"}, format="json"),
        400,
        "does not look like",
    )
    assert body["extra"] == {"code": "malformed_provider_key", "field": "api_key"}
    assert "pk-not-a-real-key" not in str(body)
    assert_error(
        client.post(f"{API}/provider-credentials", {"provider": "anthropic", "api_key": ""}, format="json"), 400, "paste the api key"
    )
    assert_error(
        client.post(f"{API}/provider-credentials", {"provider": "openai", "api_key": "sk-abc def" + "x" * 20}, format="json"), 400, "spaces"
    )
    assert_error(
        client.post(f"{API}/provider-credentials", {"provider": "mistral", "api_key": OPENAI_KEY}, format="json"),
        400,
        "Invalid input: provider",
    )
    assert_error(client.post(f"{API}/provider-credentials", {"provider": "openai", "base_url": "nope"}, format="json"), 400, "base_url")
    # A self-hosted OpenAI-compatible server may use any token; managed access needs no key.
    local = client.post(
        f"{API}/provider-credentials",
        {"provider": "openai", "api_key": "local-token", "base_url": "http://localhost:11434/v1"},
        format="json",
    )
    assert local.status_code == 201, local.json()
    managed = client.post(f"{API}/provider-credentials", {"provider": "gemini", "access_type": "free_tier"}, format="json")
    assert managed.status_code == 201, managed.json()
    assert managed.json()["api_key_mask"] == ""
    assert client.get(f"{API}/provider-credentials").json()["count"] == 2


# --- Organizations, members, invitations ------------------------------------------------------


def test_organization_list_create_read_update(alice, bob, acme):
    client = session_client(alice)
    orgs = client.get(f"{API}/organizations").json()
    assert orgs["count"] == 2
    assert [(o["name"], o["role"], o["is_personal"]) for o in orgs["results"]] == [
        ("Alice's workspace", "owner", True),
        ("Acme", "owner", False),
    ]
    bob_orgs = session_client(bob).get(f"{API}/organizations").json()["results"]
    assert [(o["name"], o["role"]) for o in bob_orgs] == [("Bob's workspace", "owner"), ("Acme", "member")]

    created = client.post(f"{API}/organizations", {"name": "  Globex  "}, format="json")
    assert created.status_code == 201, created.json()
    assert (created.json()["name"], created.json()["role"], created.json()["is_personal"]) == ("Globex", "owner", False)
    assert_error(client.post(f"{API}/organizations", {"name": ""}, format="json"), 400, "Invalid input: name")

    detail = client.get(f"{API}/organizations/{acme['id']}")
    assert detail.json()["name"] == "Acme"
    services.email_verify(token=services.email_verification_token(user=alice))  # a domain needs a verified owner at it
    updated = client.patch(f"{API}/organizations/{acme['id']}", {"name": "Acme Inc", "auto_join_domain": "@Example.com"}, format="json")
    assert updated.status_code == 200, updated.json()
    assert (updated.json()["name"], updated.json()["auto_join_domain"], updated.json()["role"]) == ("Acme Inc", "example.com", "owner")
    assert_error(client.patch(f"{API}/organizations/{acme['id']}", {"auto_join_domain": "not a domain"}, format="json"), 400, "domain like")
    assert_error(client.patch(f"{API}/organizations/{acme['id']}", {"name": "  "}, format="json"), 400, "name")
    assert_error(session_client(bob).patch(f"{API}/organizations/{acme['id']}", {"name": "Mine"}, format="json"), 403, "owners and admins")
    assert client.get(f"{API}/organizations/{acme['id']}").json()["name"] == "Acme Inc"


def test_invitations_create_list_accept(alice, bob, mailoutbox, celery_worker):
    client = session_client(alice)
    org_id = client.post(f"{API}/organizations", {"name": "Acme"}, format="json").json()["id"]
    response = client.post(f"{API}/organizations/{org_id}/invitations", {"email": "Bob@Example.com", "role": "admin"}, format="json")
    assert response.status_code == 201, response.json()
    invitation = response.json()
    assert (invitation["email"], invitation["role"], invitation["status"]) == ("bob@example.com", "admin", "pending")
    assert len(mail_arrives()) == 1 and mailoutbox[0].to == ["bob@example.com"]
    link = re.search(r"http://testserver/accounts/invitations/([^/\s]+)/", mailoutbox[0].body)
    token = link.group(1)
    assert token not in response.content.decode()
    listed = client.get(f"{API}/organizations/{org_id}/invitations")
    assert listed.json()["count"] == 1 and token not in listed.content.decode()

    assert_error(client.post(f"{API}/organizations/{org_id}/invitations", {"email": "nope"}, format="json"), 400, "Invalid input: email")
    assert_error(
        client.post(f"{API}/organizations/{org_id}/invitations", {"email": "x@example.com", "role": "king"}, format="json"), 400, "role"
    )
    assert_error(
        client.post(f"{API}/organizations/{org_id}/invitations", {"email": "alice@example.com"}, format="json"), 400, "already a member"
    )

    # Someone else cannot use Bob's token; Bob can, once.
    carol = make_user(email="carol@example.com")
    assert_error(session_client(carol).post(f"{API}/invitations/accept", {"token": token}, format="json"), 404)
    assert_error(session_client(carol).post(f"{API}/invitations/accept", {"token": "made-up"}, format="json"), 404)
    bob_client = key_client(bob)
    joined = bob_client.post(f"{API}/invitations/accept", {"token": token}, format="json")
    assert joined.status_code == 201, joined.json()
    assert (joined.json()["id"], joined.json()["name"], joined.json()["role"]) == (org_id, "Acme", "admin")
    assert_error(bob_client.post(f"{API}/invitations/accept", {"token": token}, format="json"), 400, "already been accepted")
    assert_error(bob_client.post(f"{API}/invitations/accept", {}, format="json"), 400, "Invalid input: token")

    members = client.get(f"{API}/organizations/{org_id}/members").json()
    assert members["count"] == 2
    assert sorted((m["user"]["email"], m["role"]) for m in members["results"]) == [
        ("alice@example.com", "owner"),
        ("bob@example.com", "admin"),
    ]
    assert bob_client.get(f"{API}/organizations/{org_id}/members").json()["count"] == 2
    assert client.get(f"{API}/organizations/{org_id}/invitations").json()["results"][0]["status"] == "accepted"


def test_invitation_revoke_and_rules(alice, bob, acme, mailoutbox):
    client = session_client(alice)
    invitation = client.post(f"{API}/organizations/{acme['id']}/invitations", {"email": "carol@example.com"}, format="json").json()
    token = re.search(r"/accounts/invitations/([^/\s]+)/", mail_arrives(2)[-1].body).group(1)
    # Bob is a plain member: he can neither invite nor withdraw.
    assert_error(
        session_client(bob).post(f"{API}/organizations/{acme['id']}/invitations", {"email": "dan@example.com"}, format="json"), 403
    )
    assert_error(session_client(bob).delete(f"{API}/organizations/{acme['id']}/invitations/{invitation['id']}"), 403)
    assert client.delete(f"{API}/organizations/{acme['id']}/invitations/{invitation['id']}").status_code == 204
    assert client.get(f"{API}/organizations/{acme['id']}/invitations").json()["results"][0]["status"] == "revoked"
    carol = make_user(email="carol@example.com")
    assert_error(session_client(carol).post(f"{API}/invitations/accept", {"token": token}, format="json"), 400, "withdrawn")
    assert_error(client.delete(f"{API}/organizations/{acme['id']}/invitations/00000000-0000-0000-0000-000000000000"), 404)


def test_member_role_change_rules(alice, bob, acme):
    alice_client, bob_client = session_client(alice), session_client(bob)
    member_url = f"{API}/organizations/{acme['id']}/members"
    # A member cannot change roles, not even their own.
    assert_error(bob_client.patch(f"{member_url}/{acme['alice_membership']}", {"role": "member"}, format="json"), 403)
    assert_error(bob_client.patch(f"{member_url}/{acme['bob_membership']}", {"role": "owner"}, format="json"), 403)
    # The last owner cannot be demoted.
    assert_error(
        alice_client.patch(f"{member_url}/{acme['alice_membership']}", {"role": "admin"}, format="json"), 400, "at least one owner"
    )
    assert_error(alice_client.patch(f"{member_url}/{acme['bob_membership']}", {"role": "boss"}, format="json"), 400, "Invalid input: role")
    promoted = alice_client.patch(f"{member_url}/{acme['bob_membership']}", {"role": "admin"}, format="json")
    assert promoted.status_code == 200, promoted.json()
    assert (promoted.json()["role"], promoted.json()["user"]["email"]) == ("admin", "bob@example.com")
    # An admin cannot make owners; an owner can, and then may step down.
    assert_error(bob_client.patch(f"{member_url}/{acme['bob_membership']}", {"role": "owner"}, format="json"), 403, "only owners")
    assert alice_client.patch(f"{member_url}/{acme['bob_membership']}", {"role": "owner"}, format="json").status_code == 200
    assert alice_client.patch(f"{member_url}/{acme['alice_membership']}", {"role": "member"}, format="json").status_code == 200
    assert_error(alice_client.patch(f"{member_url}/00000000-0000-0000-0000-000000000000", {"role": "admin"}, format="json"), 404)


def test_member_remove_rules(alice, bob, acme):
    alice_client, bob_client = session_client(alice), session_client(bob)
    member_url = f"{API}/organizations/{acme['id']}/members"
    assert_error(bob_client.delete(f"{member_url}/{acme['alice_membership']}"), 403)
    assert_error(alice_client.delete(f"{member_url}/{acme['alice_membership']}"), 400, "last owner")
    assert alice_client.delete(f"{member_url}/{acme['bob_membership']}").status_code == 204
    assert alice_client.get(member_url).json()["count"] == 1
    assert_error(bob_client.get(f"{API}/organizations/{acme['id']}"), 404)
    assert_error(alice_client.delete(f"{member_url}/{acme['bob_membership']}"), 404)


def test_leave_rules(alice, bob, acme):
    alice_client, bob_client = session_client(alice), session_client(bob)
    assert_error(alice_client.post(f"{API}/organizations/{personal_org_id(alice)}/leave"), 400, "personal workspace")
    assert_error(alice_client.post(f"{API}/organizations/{acme['id']}/leave"), 400, "last owner")
    assert bob_client.post(f"{API}/organizations/{acme['id']}/leave").status_code == 204
    assert_error(bob_client.get(f"{API}/organizations/{acme['id']}"), 404)
    assert_error(bob_client.post(f"{API}/organizations/{acme['id']}/leave"), 404)
    assert [o["name"] for o in bob_client.get(f"{API}/organizations").json()["results"]] == ["Bob's workspace"]
    assert [m["user"]["email"] for m in alice_client.get(f"{API}/organizations/{acme['id']}/members").json()["results"]] == [
        "alice@example.com"
    ]


# --- Sessions -------------------------------------------------------------------------------


def test_sessions_list_marks_the_current_one_and_revoke_signs_out(alice):
    laptop, phone = session_client(alice), session_client(alice)
    listed = laptop.get(f"{API}/sessions")
    assert listed.status_code == 200
    sessions = listed.json()["results"]
    assert len(sessions) == 2
    assert sorted(s["current"] for s in sessions) == [False, True]
    assert all("session_key" not in s and "session_key_digest" not in s for s in sessions)
    for s in sessions:
        assert s["id"] and s["started_at"] and s["ended_at"] is None
    other = next(s for s in sessions if not s["current"])

    assert laptop.delete(f"{API}/sessions/{other['id']}").status_code == 204
    assert_error(phone.get(f"{API}/me"), 401)
    assert len(laptop.get(f"{API}/sessions").json()["results"]) == 1
    assert privileged(UserSession).get(pk=other["id"]).ended_at is not None
    assert_error(laptop.delete(f"{API}/sessions/00000000-0000-0000-0000-000000000000"), 404)
    # Through an API key no session is "current".
    assert [s["current"] for s in key_client(alice).get(f"{API}/sessions").json()["results"]] == [False]


# --- Other tenants ----------------------------------------------------------------------------


def test_other_tenants_ids_are_404_not_403(alice, bob, acme):
    with rls.privileged(reason="test: alice's rows"):
        alice_key, _ = services.api_key_create(user=alice, name="mine", scopes=[READ])
        credential = services.provider_credential_set(user=alice, provider="openai", api_key=OPENAI_KEY)
        alice_session = UserSession.objects.create(user=alice, session_key_digest=token_digest("s" * 32))
        organization = Membership.objects.get(pk=acme["alice_membership"]).organization
        invitation, _ = services.invitation_create(actor=alice, organization=organization, email="dan@example.com")
    alice_personal = personal_org_id(alice)
    alice_personal_membership = privileged(Membership).get(organization_id=alice_personal).pk
    mallory = make_user(email="mallory@example.com")
    for client in (session_client(mallory), key_client(mallory)):
        for method, path in (
            ("get", f"api-keys/{alice_key.pk}"),
            ("delete", f"api-keys/{alice_key.pk}"),
            ("get", f"provider-credentials/{credential.pk}"),
            ("delete", f"provider-credentials/{credential.pk}"),
            ("delete", f"sessions/{alice_session.pk}"),
            ("get", f"organizations/{acme['id']}"),
            ("patch", f"organizations/{acme['id']}"),
            ("post", f"organizations/{acme['id']}/leave"),
            ("get", f"organizations/{acme['id']}/members"),
            ("patch", f"organizations/{acme['id']}/members/{acme['alice_membership']}"),
            ("delete", f"organizations/{acme['id']}/members/{acme['bob_membership']}"),
            ("get", f"organizations/{acme['id']}/invitations"),
            ("post", f"organizations/{acme['id']}/invitations"),
            ("delete", f"organizations/{acme['id']}/invitations/{invitation.pk}"),
        ):
            body = {"role": "owner", "name": "x", "email": "m@example.com"} if method in ("patch", "post") else None
            assert_error(getattr(client, method)(f"{API}/{path}", body, format="json"), 404)
    # Bob shares Acme with Alice, not her personal workspace: its membership ids are 404 even under Acme's id.
    bob_client = session_client(bob)
    assert_error(bob_client.get(f"{API}/organizations/{alice_personal}/members"), 404)
    assert_error(
        bob_client.patch(f"{API}/organizations/{acme['id']}/members/{alice_personal_membership}", {"role": "member"}, format="json"), 404
    )
    # Nothing changed.
    assert privileged(ApiKey).get(pk=alice_key.pk).is_active
    assert privileged(ProviderCredential).filter(pk=credential.pk).exists()
    assert privileged(UserSession).get(pk=alice_session.pk).ended_at is None
    assert privileged(Membership).filter(organization_id=acme["id"]).count() == 2
