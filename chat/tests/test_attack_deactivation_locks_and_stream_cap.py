"""A review of the session's own fixes: the deactivation's locks against grants made with an API
key, the PendingCall a deleted conversation keeps, the stream cap on the built-in provider. Each
test's docstring: what is done, what happened ("Was:"), what should ("Should:")."""

from __future__ import annotations

import pytest
from asgiref.sync import async_to_sync

from accounts import services as account_services
from accounts.models import ApiKey, Membership, User
from accounts.services import api_keys as api_key_services
from accounts.tests.factories import make_user
from accounts.tests.test_api import API, key_client, privileged
from accounts.tests.test_attack_lifecycle import _no_raise
from chat import services
from chat.models import Conversation, Message
from config.db import rls
from config.tests.races import Paused, hold_in_thread, until, waiting_locks

pytestmark = pytest.mark.django_db(transaction=True)


# --- user_held_active against user_deactivate ------------------------------------------------------


def test_an_api_key_minted_by_an_api_key_as_staff_deactivate_the_account_is_not_a_deadlock(alice, monkeypatch):
    """Alice's script mints a key with her API key (POST /api-keys signed in by a key: by_key) as
    staff deactivate her. api_key_create now takes, in order, the calling key FOR SHARE
    (_api_key_held), then the user row (user_held_active, new today); user_deactivate takes the
    user row (its UPDATE, first), then every active key (the revoking UPDATE). Opposite orders:
    with the creation between its two locks when the deactivation starts, each waits for the
    other.
    Was: PostgreSQL finds a deadlock and aborts one of them: the API answers 500 (or staff's
    deactivation fails with a traceback).
    Should: the two queue: the deactivation goes through and the creation is refused (401/403)
    or comes first and its key is revoked with the others (e.g. lock the user row before the
    calling key, as the deactivation does)."""
    minter = _no_raise(key_client(alice, scopes=("account:read", "account:write")))
    reached, release = hold_in_thread(monkeypatch, api_key_services, "user_held_active", "mint", after=False)
    mint = Paused(lambda: minter.post(f"{API}/api-keys", {"name": "fresh", "scopes": ["account:read"]}, format="json"), "mint")
    mint.start()
    assert reached.wait(60), "the creation never held its calling key"

    def deactivate():
        with rls.privileged(reason="test: staff deactivate"):
            account_services.user_deactivate(user=User.objects.get(pk=alice.pk))

    staff = Paused(deactivate, "staff")
    staff.start()
    until(lambda: waiting_locks() > 0 or not staff.is_alive(), "the deactivation waits on the calling key, or is done")
    release.set()
    mint.join(60), staff.join(60)
    status = getattr(mint.result, "status_code", mint.result)
    active = list(privileged(ApiKey).filter(user_id=alice.pk, is_active=True).values_list("name", flat=True))
    assert not isinstance(staff.result, Exception) and status in (201, 401, 403) and active == [], (
        f"staff: {staff.result!r}; mint: {status} {getattr(mint.result, 'content', b'')[:200]!r}; active keys: {active}"
    )


def test_an_invitation_sent_with_an_api_key_as_staff_deactivate_the_inviter_is_not_a_deadlock(alice, monkeypatch):
    """Mallory, admin of Acme, sends an invitation from a script (her API key) as staff ban her.
    The request's authentication writes the key's last_used_at (its first use in the interval),
    so the request's transaction holds the key's row; invitation_create then holds her
    membership and, new today, her user row (user_held_active). user_deactivate updates the user
    row first, then revokes her keys: the same two rows in the other order.
    Was: deadlock detected; one side is aborted (the API's 500, or staff's deactivation fails and
    Mallory stays active with her keys and her pending invitation).
    Should: the two queue: the deactivation goes through and the invitation is refused or
    withdrawn with the others (e.g. the key's last_used_at written outside the request's
    transaction, and api_key_create taking the user row before the calling key)."""
    from accounts.models import Invitation
    from accounts.services import organizations as org_services

    mallory = make_user(email="mallory@example.com")
    with rls.privileged(reason="test"):
        acme = account_services.organization_create(user=alice, name="Acme")
        Membership.objects.create(organization=acme, user=mallory, role=Membership.Role.ADMIN)
    script = _no_raise(key_client(mallory, scopes=("account:read", "account:write")))
    reached, release = hold_in_thread(monkeypatch, org_services, "user_held_active", "invite", after=False)
    invite = Paused(
        lambda: script.post(f"{API}/organizations/{acme.pk}/invitations", {"email": "alt@example.com", "role": "admin"}, format="json"),
        "invite",
    )
    invite.start()
    assert reached.wait(60), "the invitation never reached user_held_active"

    def deactivate():
        with rls.privileged(reason="test: staff deactivate"):
            account_services.user_deactivate(user=User.objects.get(pk=mallory.pk))

    staff = Paused(deactivate, "staff")
    staff.start()
    until(lambda: waiting_locks() > 0 or not staff.is_alive(), "the deactivation waits on the key's row, or is done")
    release.set()
    invite.join(60), staff.join(60)
    status = getattr(invite.result, "status_code", invite.result)
    pending = privileged(Invitation).filter(invited_by=mallory, accepted_at__isnull=True, revoked_at__isnull=True).count()
    active = privileged(User).get(pk=mallory.pk).is_active
    assert not isinstance(staff.result, Exception) and status in (201, 401, 403) and (pending, active) == (0, False), (
        f"staff: {staff.result!r}; invite: {status}; pending invitations: {pending}; Mallory active: {active}"
    )


# --- conversation_delete keeping a streaming reply's call as a PendingCall -------------------------


def test_a_member_who_left_the_organization_can_still_delete_a_conversation_whose_reply_streams(alice, plans):
    """Alice sends in a conversation of Acme (an organization she belongs to), then leaves Acme
    (or is removed) while the reply still streams, or after its worker died and left it
    `streaming`. Her conversations stay hers (README: a member removed keeps them; the
    organization can neither see nor delete them), and she deletes this one. Today's
    _calls_kept_from inserts a PendingCall for the streaming reply under her own context, and
    chat_pendingcall's WITH CHECK wants the row's organization among hers (Acme no longer is).
    Was: 'new row violates row-level security policy for table chat_pendingcall': the delete fails
    (a 500) until the stale pass has closed the reply, 15 to 20 minutes later.
    Should: the conversation is deleted and the call is still metered once (e.g. the PendingCall
    written through the privileged context, as the stale pass that reads it is)."""
    owner = make_user(email="owner@example.com")
    with rls.privileged(reason="test"):
        acme = account_services.organization_create(user=owner, name="Acme")
        Membership.objects.create(organization=acme, user=alice, role=Membership.Role.MEMBER)
    conversation = services.conversation_create(user=alice, organization_id=acme.pk)
    pending = services.message_prepare(
        user=alice, content="one two three", conversation_id=conversation.pk, provider="echo", model="echo-1"
    )
    with rls.privileged(reason="test: Alice leaves Acme"):
        Membership.objects.filter(organization=acme, user=alice).delete()
    try:
        services.conversation_delete(user=alice, conversation=conversation)
        outcome = "deleted"
    except Exception as exc:  # what the API turns into a 500
        outcome = repr(exc)[:300]
    with rls.privileged(reason="test"):
        left = Conversation.objects.filter(pk=conversation.pk).exists()
    assert (outcome, left) == ("deleted", False), outcome
    services.streams_close_stale(older_than_minutes=0)
    from analytics.models import TokenUsage

    with rls.privileged(reason="test"):
        assert TokenUsage.objects.filter(request_id=pending.request_id).count() == 1


# --- The stream cap (chat/services.py _StreamCap) --------------------------------------------------


def test_a_streamed_echo_reply_within_its_cap_is_not_cut_where_the_same_reply_unstreamed_is_whole(alice, plans, settings):
    """The plan caps a reply at 20 tokens. Alice, on the built-in echo provider (a token is a
    whitespace-separated word: README, chat/providers/echo.py), sends a message holding a long
    URL. Echo's reply, "You said: <url>", is 3 tokens, well within the cap, and the echo provider
    reports it exactly. Sent without streaming, the reply is whole; streamed, today's _StreamCap
    allows only 32 characters a token (640) and cuts the URL there.
    Was: the streamed reply is cut at 640 characters, stored as finished for `length`, and metered
    as an estimate, though the provider sent 3 tokens within a cap of 20 and counted them.
    Should: a reply within its cap is never cut ("A reply within its cap is never cut", the cap's
    own docstring): the streamed reply equals the unstreamed one, metered exactly."""
    from billing.models import Plan
    from billing.tests.factories import current_subscription, organization_of

    settings.CHAT_ECHO_DELAY = 0
    plan = current_subscription(organization_of(alice)).plan
    with rls.privileged(reason="test: a plan with a small output cap"):
        Plan.objects.filter(pk=plan.pk).update(max_output_tokens=20)
    content = "check https://example.com/download?token=" + "a1b2c3d4" * 90
    whole = services.message_send(user=alice, content=content, provider="echo", model="echo-1").message.content
    pending = services.message_prepare(user=alice, content=content, provider="echo", model="echo-1")

    async def read():
        events = [event async for event in services.message_stream(pending=pending)]
        await services.stream_endings_wait()
        return events

    events = async_to_sync(read)()
    streamed = "".join(event["text"] for event in events if event["type"] == "delta")
    with rls.privileged(reason="test"):
        stored = Message.objects.get(pk=pending.message.pk)
    assert (len(streamed), stored.metadata.get("estimated")) == (len(whole), False), (
        f"streamed {len(streamed)} characters of {len(whole)}; finish {stored.metadata.get('finish_reason')!r}, "
        f"estimated {stored.metadata.get('estimated')}"
    )
