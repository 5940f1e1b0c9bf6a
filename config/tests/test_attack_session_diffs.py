"""Attacks on the day's changes (3c61417..HEAD): provider responses decoded by Confab itself,
the billing views with their own transactions and the Redis checkout lock, the pool's unread
check and the prepared statements forgotten on failure, the session key check, the 413's close
and the session touch under its user's context. Each test failed on the code it was written against."""

from __future__ import annotations

import zlib

import pytest
from django.db import connections

from accounts.tests.factories import make_user
from billing import stripe_services
from billing.tests.factories import organization_of, put_on_plan
from chat.tests.provider_servers import Reply, openai_completion
from chat.tests.test_attack_wire import OK_OPENAI, _metered_once, _send
from config.db import rls

pytestmark = pytest.mark.django_db(transaction=True)


# Chat's and billing's fixtures, which config's tests do not see otherwise.
from billing.tests.conftest import fake_stripe  # noqa: E402, F401
from billing.tests.test_stripe_checkout import owner  # noqa: E402, F401
from chat.tests.conftest import alice, plans, server  # noqa: E402, F401
from chat.tests.test_attack_wire import wired  # noqa: E402, F401

# --- 1. A provider response decoded by Confab -----------------------------------------------------


@pytest.mark.parametrize(("header", "compressed"), [("gzip, ", "gzip"), (", gzip", "gzip"), ("", None), ("identity, ", None)])
def test_a_content_encoding_list_with_an_empty_element_is_read_not_a_failed_call(wired, server, header, compressed):  # noqa: F811  (the imported fixtures)
    """A provider (or the proxy before it) answers `Content-Encoding: gzip, ` (a trailing comma),
    `, gzip` or an empty `Content-Encoding:`. Was: `_size_bounded` keeps the empty list element as
    an encoding of its own (""), so the answer reads "encoded as gzip, , which Confab does not
    read" and the call fails, although the reply arrived whole (httpx, before today, skipped it).
    Should: RFC 9110 5.6.1 says a recipient MUST parse and ignore empty list elements: the reply
    is decoded and stored."""
    server.queue(Reply(body=openai_completion("Paris.", OK_OPENAI), compressed=compressed, headers={"content-encoding": header}))
    message, _events = _send(wired, "openai", "whole")
    assert (message.status, message.content) == ("complete", "Paris."), (message.status, message.error)
    _metered_once(wired)


@pytest.mark.parametrize("first_chunk", [1, 64])
def test_a_raw_deflate_body_is_decoded_to_its_last_byte_whatever_its_chunks(first_chunk):
    """A server sends `Content-Encoding: deflate` as raw deflate (no zlib header), in chunks.
    Was: the inflater never flushed, so a body ending in a long repeat lost its last bytes, and a
    first chunk of one byte (no error yet) left it reading raw deflate as zlib: a failed call.
    Should: the whole body, whatever the chunks."""
    from chat.providers.base import _Inflater

    body = b'{"choices": [{"message": {"content": "' + b"x" * 600 + b'"}}]}'
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    raw = compressor.compress(body) + compressor.flush()
    inflater = _Inflater("deflate")
    chunks = [raw[:first_chunk], *(raw[i : i + 7] for i in range(first_chunk, len(raw), 7))]
    decoded = b"".join(piece for chunk in chunks for piece in inflater.pieces(chunk, 64)) + inflater.rest()
    assert decoded == body


# --- 2. Billing's views with their own transactions -----------------------------------------------


@pytest.mark.parametrize("path", ["checkout page", "plan change page", "subscription API", "portal page"])
def test_no_database_connection_is_held_while_stripe_answers(client, owner, plans, fake_stripe, monkeypatch, path):  # noqa: F811  (the imported fixtures)
    """An owner starts a checkout (or opens the portal) while Stripe is slow: each call may take
    20 s, three times with the library's retries, and a second checkout of the organization waits
    15 s on the Redis lock first. Was: the views now hold no transaction, but the request's
    database connection stays checked out of the pool (Django gives it back only when the request
    ends): nothing calls rls.connection_release() as chat's send does before its provider, so
    eight checkouts at once (an owner's script, or a double click times eight) take a worker's
    whole pool (DATABASE_POOL_MAX_SIZE 8) for as long as Stripe takes, and every other request
    of the worker waits for a connection, then fails. The commit says "No transaction or
    connection is held while Stripe answers"; the house rule says the same. Should: every
    connection of the request's thread is given back before each Stripe call."""
    from billing.tests.test_attack_billing import subscription_api

    held = []
    call = stripe_services._stripe_call

    def watched(method, *args, **kwargs):
        def at_the_call(*args, **kwargs):  # as the request goes to Stripe
            held.append(sorted(alias for alias in ("default", "privileged") if connections[alias].connection is not None))
            return method(*args, **kwargs)

        return call(at_the_call, *args, **kwargs)

    monkeypatch.setattr(stripe_services, "_stripe_call", watched)
    org = organization_of(owner)
    if path == "portal page":
        put_on_plan(org, plans["free"], stripe_customer_id="cus_1")
    connections.close_all()  # only what the request itself opens counts
    if path == "portal page":
        response = client.post("/billing/portal/", {"organization": org.pk})
    elif path == "checkout page":
        response = client.post("/billing/checkout/", {"organization": org.pk, "plan": "pro", "interval": "month"})
    elif path == "plan change page":
        response = client.post(f"/billing/{org.pk}/change/", {"plan": "pro", "interval": "month"})
    else:
        response = client.post(subscription_api(org), {"plan": "pro"}, content_type="application/json")
    assert response.status_code in (201, 302), response.content[:300]
    assert held and all(aliases == [] for aliases in held), f"connections held at each Stripe call: {held}"


# --- 3. The pool's check of a connection checked in moments ago -----------------------------------


@pytest.fixture
def pooled_past_fd_1024(request):
    """config's `pooled`, its connection opened once the process has more than 1024 descriptors
    open (a worker with a few hundred streams open: each a client socket and a provider socket;
    the provider pool allows 1000 connections per loop)."""
    import os

    pipes = [os.pipe() for _ in range(520)]
    try:
        wrapper = request.getfixturevalue("pooled")
        yield wrapper
    finally:
        for read, write in pipes:
            os.close(read)
            os.close(write)


def test_a_connection_checked_in_moments_ago_is_not_pinged_when_its_descriptor_is_past_1024(pooled_past_fd_1024, monkeypatch):
    """Check a pooled connection in and out again at once, in a process with over 1024 open
    descriptors. Was: `_has_unread` asks select.select(), which refuses a descriptor of 1024 or
    more (ValueError, "filedescriptor out of range in select()"); the error is taken for "no socket
    any more", so every checkout of such a connection pings the server: the round trip the check
    exists to save (docs/performance.md counts them), for every request of a busy streaming
    worker. Should: a descriptor past 1024 is asked without select() (select.poll), and a
    connection checked in moments ago with nothing to read is handed out without a round trip."""
    from psycopg_pool import ConnectionPool

    import config.db.backend.base as backend

    pooled = pooled_past_fd_1024
    pooled.connection = pooled.pool.getconn()
    fd = pooled.connection.pgconn.socket
    assert fd >= 1024, fd
    pooled.close()  # checked in, reset and stamped
    pings = []
    check = ConnectionPool.check_connection
    monkeypatch.setattr(backend.ConnectionPool, "check_connection", staticmethod(lambda conn: (pings.append(1), check(conn))[1]))
    pooled.connection = pooled.pool.getconn()
    assert pooled.connection.pgconn.socket == fd  # the same connection
    pooled.close()
    assert pings == [], "a connection checked in moments ago, with nothing to read, was pinged"


def test_the_404_of_the_plan_change_form_shows_the_users_theme(client, plans):  # noqa: F811  (the imported fixtures)
    """Bob, who chose the dark theme, posts the plan change form of an organization that is not
    his (a stale tab after he left it, or a forged id). Was: plan_change is now marked
    own_transactions, so Django renders its 404 page outside any transaction: the theme context
    processor reads Bob's preferences with no row-level security context, sees no row, and the
    page comes out in the system theme (the cancel form's 404, still inside the request's
    transaction, is dark). Cosmetic, but the same holds for any page rendered by Django after
    such a view raised (the CSRF failure page too). Should: the 404 page of every billing form is drawn in the user's theme."""
    import uuid

    from accounts.models import Preferences

    bob = make_user()
    with rls.privileged(reason="test: bob's theme"):
        Preferences.objects.filter(user_id=bob.pk).update(theme="dark")
    client.force_login(bob)
    response = client.post(f"/billing/{uuid.uuid4()}/change/", {"plan": "pro", "interval": "month"})
    assert response.status_code == 404
    assert b'data-theme="dark"' in response.content, response.content[:200]
