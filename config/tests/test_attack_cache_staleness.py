"""Caches and remembered values against changes to what they remember: change the thing, then
check the very next request sees the change (or within the staleness the README states). Each
test's docstring: what is done, what happens now ("Was:"), what should ("Should:")."""

import threading

import pytest
from django.test import Client

from accounts import session_store
from accounts.models import UserSession
from accounts.tests.factories import make_user
from accounts.tests.test_sessions_store import _sign_in, _store
from billing.tests.conftest import plans  # noqa: F401  (a fixture)
from config.crypto import token_digest

pytestmark = pytest.mark.django_db(transaction=True)


# --- Sessions (accounts/session_store.py) ----------------------------------------------------------


def test_a_session_saved_just_before_its_revoke_is_cached_back_and_stays_signed_in(monkeypatch):
    """Alice's phone session was stolen. The thief's browser keeps sending requests that write to
    the session (a refused organization form keeps its input there; any flash message that spills
    into it), so SessionMiddleware saves it: accounts_session_update commits, then the store `set`s
    the cache. Alice signs the phone out from her laptop (Settings -> Sessions -> revoke) between
    those two steps: the row is deleted and the DELETED marker written, and then the thief's save
    `set`s its copy of the session over the marker. The README: "A deleted or revoked session
    leaves a marker in its place for those 5 minutes, so a request that read it just before cannot
    cache it back" -- load's fill uses `add` for that reason, but save's write is a plain `set`.
    Was: the revoked session, gone from the database, is served from Redis for up to 5 minutes:
    the thief's next page is a 200 signed in as Alice.
    Should: a save cannot undo a delete (e.g. write the cache only if the key holds no DELETED
    marker -- a Lua `SET` unless the value is the marker -- or re-check the row after the set and
    evict again): the thief's next request is sent to log in."""
    alice = make_user(email="alice@example.com")
    laptop, phone = Client(), Client()
    _sign_in(laptop, alice.email)
    phone_key = _sign_in(phone, alice.email)
    assert phone.get("/settings/profile/").status_code == 200
    phone_session = UserSession.objects.using("privileged").get(user=alice, session_key_digest=token_digest(phone_key))

    original = session_store._call
    revoked = []

    def _call(function, *args):
        result = original(function, *args)
        if function == "accounts_session_update" and args[0] == phone_key and not revoked:
            # The thief's update has committed; its cache write has not happened yet. Alice revokes now.
            def revoke():
                revoked.append(laptop.post(f"/settings/sessions/{phone_session.pk}/revoke/").status_code)

            worker = threading.Thread(target=revoke)
            worker.start()
            worker.join(60)
        return result

    monkeypatch.setattr(session_store, "_call", _call)
    thief = _store(phone_key)  # what SessionMiddleware does with a modified session
    thief["organization_refused_form:rename"] = {"data": {"name": ""}, "errors": {}}
    thief.save()
    monkeypatch.undo()
    assert revoked == [302]

    # The database has no such session any more...
    assert _store(phone_key).exists(phone_key) is False
    # ...and the thief's very next page must not be signed in.
    response = phone.get("/settings/profile/")
    assert response.status_code == 302, "the revoked session is still signed in (served from the cache)"


# --- Live counters and reservations (billing/services.py, analytics/counters.py) ------------------


def test_calls_in_progress_from_before_a_plan_change_count_against_the_new_plans_limits(catalog, plans):  # noqa: F811
    """Acme is on a bespoke plan with no monthly limits (staff made it in admin: "an empty limit is
    unlimited"); its calls then reserve nothing in Redis (the script reserves only when a limit
    exists). While one of its replies still streams, staff move Acme to a plan with 1 message a
    month (a downgrade "now", or the period's end bringing a scheduled plan). The live counter
    exists (it is kept for the month whatever the plan), so the next check reads it and the
    reservations Redis holds -- none -- and never learns of the reply still streaming.
    README: "A call is refused only when settled usage plus the calls in progress plus this one
    would exceed a limit ... a call in progress also counts as a message."
    Was: the next message is allowed although the call in progress already uses the one message.
    Should: calls in progress count whatever plan they started under (e.g. reserve on every plan,
    limits or not, or hold the organization's unreserved calls in progress again -- as after a lost
    counter -- when the plan in force has limits and the call did not): the next send is a 402."""
    from analytics import counters
    from billing.tests.factories import organization_of, plan_with_limits, put_on_plan
    from chat import services as chat_services
    from config.errors import ApplicationError

    alice = make_user(email="alice@example.com")
    organization = organization_of(alice)
    put_on_plan(organization, plan_with_limits("bespoke-unlimited"))
    counters.counters_read(scope="org", owner_id=organization.pk)  # the month's counter exists (0 used)

    chat_services.message_prepare(user=alice, content="Write me a long essay")  # streaming, not yet metered

    put_on_plan(organization, plan_with_limits("one-message", monthly_messages=1))
    with pytest.raises(ApplicationError) as refused:
        chat_services.message_prepare(user=alice, content="And another one")
    assert refused.value.status_code == 402
