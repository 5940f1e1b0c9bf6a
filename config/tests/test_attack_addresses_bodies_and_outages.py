"""Attacks on the cross-cutting parts: the client address behind dual-stack sockets, JSON depth on
the admin's pages, the log write-through while Redis is down, a base URL's lookup held outside any
transaction, request-body bounds by path, and health checks that answer HEAD.

Each test failed on the code it was written against; see each docstring."""

from __future__ import annotations

import json
import uuid

import pytest
from django.db import connections
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from redis.exceptions import ConnectionError as RedisConnectionError

from accounts.tests.factories import PASSWORD, make_user

pytestmark = pytest.mark.django_db(transaction=True)


def _owner_count(sql: str, params) -> int:
    with connections["owner"].cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchone()[0]


# --- Client address: IPv4 clients seen through a dual-stack socket ----------------------------


def test_ipv4_clients_behind_a_dual_stack_proxy_do_not_share_one_sign_in_throttle(settings):
    """A proxy (nginx `listen [::]:80 ipv6only=off`, or gunicorn bound to `[::]`) reports IPv4
    clients as IPv4-mapped IPv6 addresses (::ffff:203.0.113.9). An attacker at 203.0.113.9 fails
    five sign-ins on the victim's email; the victim, at 198.51.100.7, then cannot sign in: the
    throttle buckets every IPv6 address by its /64, and ::ffff:203.0.113.9 and ::ffff:198.51.100.7
    are both in ::/64, so every IPv4 client on the internet shares one bucket (the per-IP ceiling
    too: 30 failures lock out all IPv4 sign-ins). A mapped address should count as its IPv4
    address (config/http.client_ip, or accounts.services.throttling._ip_bucket)."""
    settings.TRUSTED_PROXY_COUNT = 1
    make_user(email="victim@example.com")
    attacker = Client(raise_request_exception=False)
    for _ in range(5):
        attacker.post(
            "/accounts/login/",
            {"username": "victim@example.com", "password": "wrong-password-1"},
            HTTP_X_FORWARDED_FOR="::ffff:203.0.113.9",
        )
    victim = Client(raise_request_exception=False).post(
        "/accounts/login/", {"username": "victim@example.com", "password": PASSWORD}, HTTP_X_FORWARDED_FOR="::ffff:198.51.100.7"
    )
    assert victim.status_code == 302, "the victim, at another IPv4 address, was locked out by the attacker's failures"


# --- JSON depth on pages: the admin's JSON fields ---------------------------------------------


def test_deeply_nested_json_in_an_admin_json_field_is_a_form_error_not_a_500():
    """Staff paste (or are tricked into submitting) a user's metadata nested 5,000 levels deep.
    Django's forms.JSONField catches only JSONDecodeError, so json.loads' RecursionError escapes
    config.admin.StorableJSONForm and the admin answers 500. The API bounds the depth at 64
    (config/api/parsers.py); the admin's JSON fields should refuse it as a form error."""
    from accounts.models import User

    staff = make_user(email="root@example.com", role="staff", is_superuser=True)
    member = make_user(email="meta@example.com")
    client = Client(raise_request_exception=False)
    client.force_login(staff)
    form = {
        "email": member.email,
        "display_name": member.display_name,
        "first_name": "",
        "last_name": "",
        "avatar_url": "",
        "timezone": "UTC",
        "locale": "en",
        "role": member.role,
        "is_active": "on",
        "metadata": "[" * 5000 + "]" * 5000,
    }
    response = client.post(reverse("admin:accounts_user_change", args=[member.pk]), form)
    assert response.status_code == 200, response.status_code  # the form again, with its error
    assert User.objects.using("privileged").get(pk=member.pk).metadata == {}


# --- Redis down: the API log's write-through ---------------------------------------------------


def _api_log_row(error: str) -> str:
    return json.dumps(
        {
            "request_uuid": str(uuid.uuid4()),
            "created_at": timezone.now().isoformat(),
            "user_id": None,
            "api_key_id": None,
            "route": "api/v1/provider-credentials",
            "method": "POST",
            "status": 400,
            "duration_ms": 3,
            "ip": "203.0.113.9",
            "user_agent": "test",
            "error": error,
        }
    )


def test_redis_down_one_bad_api_log_row_does_not_lose_the_rest_of_the_batch(monkeypatch):
    """Redis is down; a web process sends its batch of API log rows (buffer_push_soon) straight
    to PostgreSQL. One of the requests was a 400 whose message quotes the client's input with a
    lone surrogate ('"\\udc80" is not a valid choice.'), which jsonb refuses (a DataError). The
    write-through catches it inside the same privileged transaction and retries row by row
    (_insert_each) — but the transaction is already aborted, so the SAVEPOINT fails too and every
    row of the batch is lost, the good ones included ("one row's data: the others still go in").
    The flush does it right (a privileged block of its own for the retry)."""
    from analytics import buffer

    def unreachable():
        raise RedisConnectionError("Redis is down")

    monkeypatch.setattr(buffer, "redis_client", unreachable)
    good, bad = _api_log_row("Invalid input: provider: a fine message."), _api_log_row('Invalid input: "\udc80" is not a valid choice.')
    good_id = json.loads(good)["request_uuid"]
    buffer._push("api_log", [good, bad])
    assert _owner_count("SELECT count(*) FROM analytics_apilog WHERE request_uuid = %s", [good_id]) == 1


# --- Outbound: the save-time lookup of a user's base URL ---------------------------------------


def test_saving_a_base_url_holds_no_transaction_while_its_host_is_looked_up(monkeypatch):
    """A user saves a provider base URL whose host's nameserver is theirs and answers slowly (or
    never: the resolver waits out its timeouts, 10-20 s). base_url_refusal resolves the host
    inside the request's transaction (RLSContextMiddleware's; the view already queried), so the
    request holds a pooled PostgreSQL connection and an open transaction for as long as the
    attacker's DNS likes: eight such requests take a web process's whole pool (DATABASE_POOL_MAX_SIZE)
    and every other request waits. The rule: no transaction held open while waiting on a provider.
    The lookup should run before the transaction (the view owning its transactions) or off it."""
    import socket

    from accounts.tests.test_api import key_client

    user = make_user(email="dns@example.com")
    client = key_client(user, scopes=["account:read", "account:write"])
    lookups = []
    real = socket.getaddrinfo

    def slow_nameserver(host, *args, **kwargs):
        if host != "llm.slow-dns.example":
            return real(host, *args, **kwargs)
        lookups.append(connections["default"].in_atomic_block)  # the moment the request waits on the attacker
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", slow_nameserver)
    response = client.post(
        "/api/v1/provider-credentials",
        {"provider": "openai", "api_key": "sk-" + "a" * 40, "base_url": "https://llm.slow-dns.example/v1"},
        format="json",
    )
    assert response.status_code == 201, response.content
    assert lookups == [False], "the host was looked up with the request's transaction open"


# --- Request bodies: the import's bound on every path -------------------------------------------


def test_an_anonymous_body_far_over_what_any_form_or_json_api_takes_is_refused_before_it_is_read(settings):
    """An anonymous client POSTs a 10 MiB body to a JSON API path (or the sign-in form), declared
    in Content-Length. Only the import upload takes more than DATA_UPLOAD_MAX_MEMORY_SIZE (2.5 MB),
    but config/asgi.py bounds every path by REQUEST_BODY_MAX_BYTES (the import's 201 MB): the
    whole body is read and spooled to disk, then refused by the parser at 2.5 MB. Many such
    requests fill the disk (PostgreSQL's too, on one machine) with no account at all. A body
    declared (or counted) over what its path can take should be a 413 before it is read."""
    from asgiref.sync import async_to_sync

    from config.tests.test_asgi_handler import MIB, _post

    assert settings.UPLOAD_BODY_MAX_BYTES > 100 * MIB  # as configured: the import's bound, which these paths no longer take
    for path in ("/api/v1/conversations", "/accounts/login/"):
        status, _body, read = async_to_sync(_post)(path, iter([b"x" * MIB] * 10), declared=10 * MIB)
        assert (status, read) == (413, 0), (path, status, read)  # was: all 10 chunks read, then a 401 / 400


# --- Health checks -------------------------------------------------------------------------------


def test_the_health_checks_answer_head_as_they_answer_get(client):
    """A monitor or load balancer probing with HEAD (UptimeRobot's HEAD checks, many HTTP
    pingers) gets 405 from /health/live and /health/ready (require_GET), and marks a running
    service down. HTTP requires HEAD wherever GET is answered (RFC 9110 9.1): require_safe."""
    assert client.head("/health/live").status_code == 200
    assert client.head("/health/ready").status_code == 200
