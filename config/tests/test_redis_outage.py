"""Redis stopped under traffic is not an outage: API-key calls and sign-in POSTs keep
answering (never a 500), throttles count per process, logs are written through to
PostgreSQL, live counters fall back to the ledger, and /health/ready names Redis.

The test runs its own redis-server, so stopping it leaves the suite's server alone.
Signed-in session pages depend on the session store (tested with sessions); this test
signs in with the database session engine so only the parts under test touch Redis.
"""

import socket
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from django.core import mail
from django.db import connections, transaction
from django.test import Client
from rest_framework.test import APIClient

from accounts import services as accounts_services
from accounts.tests.factories import PASSWORD, make_user
from analytics import counters
from analytics import services as analytics_services
from analytics.tests.factories import usage_fields
from config import embedded
from config.db import rls

pytestmark = pytest.mark.django_db(transaction=True)


def _owner_count(sql: str, params) -> int:
    with connections["owner"].cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchone()[0]


def test_stopping_redis_under_traffic_returns_no_500(own_redis):
    user = make_user(email="steady@example.com")
    with rls.privileged(reason="test: issue an API key"):
        _, secret = accounts_services.api_key_create(user=user, name="outage", scopes=["account:read", "account:write"])
    seen: dict[str, Counter] = {"before": Counter(), "after": Counter()}
    phase = ["before"]
    stop = threading.Event()
    lock = threading.Lock()

    def record(name, response):
        with lock:
            seen[phase[0]][(name, response.status_code)] += 1

    def api_traffic():
        client = APIClient(raise_request_exception=False)
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
        try:
            while not stop.is_set():
                record("me", client.get("/api/v1/me"))
                record("events", client.post("/api/v1/events", {"events": [{"name": "page_view"}]}, format="json"))
        finally:
            connections.close_all()

    def login_traffic():
        client = Client(REMOTE_ADDR="198.51.100.20", raise_request_exception=False)
        n = 0
        try:
            while not stop.is_set():
                n += 1
                record("login", client.post("/accounts/login/", {"username": f"guess{n}@example.com", "password": "wrong-password-1"}))
        finally:
            connections.close_all()

    def page_traffic():
        # A signed-in browser: its session is cached in Redis before the stop, read from the database after.
        client = Client(raise_request_exception=False)
        client.force_login(user)
        try:
            while not stop.is_set():
                record("page", client.get("/settings/profile/"))
        finally:
            connections.close_all()

    def requests_in(name_phase, of: str) -> int:
        with lock:
            return sum(count for (name, _), count in seen[name_phase].items() if name == of)

    threads = [threading.Thread(target=target) for target in (api_traffic, login_traffic, page_traffic)]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + 60
        while min(requests_in("before", of) for of in ("me", "login", "page")) < 10 and time.monotonic() < deadline:
            time.sleep(0.05)
        embedded.redis_stop(own_redis)
        with lock:
            phase[0] = "after"
        while min(requests_in("after", of) for of in ("me", "login", "page")) < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)

    after = seen["after"]
    assert not [key for counter in seen.values() for key in counter if key[1] >= 500], seen
    assert after[("me", 200)] >= 20 and after[("events", 202)] >= 19 and after[("login", 200)] >= 20, seen
    assert after[("page", 200)] >= 20, seen  # still signed in: a lost session would redirect (302) to the login page
    assert set(after) == {("me", 200), ("events", 202), ("login", 200), ("page", 200)}, seen

    # Logs the request path could not queue were written straight to PostgreSQL.
    assert _owner_count("SELECT count(*) FROM analytics_event WHERE user_id = %s", [user.pk]) >= after[("events", 202)]
    assert _owner_count("SELECT count(*) FROM analytics_apilog WHERE api_key_id IS NOT NULL", []) >= after[("me", 200)]
    # Audit entries too (those queued before the stop are still in the stopped Redis, not here).
    assert _owner_count("SELECT count(*) FROM analytics_auditlog WHERE action = 'login_failed' AND ip = '198.51.100.20'", []) > 0

    # Sign-in throttling still holds, counted in this process: the guesser is stopped, the owner is not.
    guesser, owner = Client(REMOTE_ADDR="198.51.100.77"), Client(REMOTE_ADDR="203.0.113.77")
    for _ in range(5):
        assert guesser.post("/accounts/login/", {"username": "steady@example.com", "password": "wrong-password-1"}).status_code == 200
    refused = guesser.post("/accounts/login/", {"username": "steady@example.com", "password": PASSWORD})
    assert refused.status_code == 200 and b"Too many failed sign-in attempts" in refused.content
    assert owner.post("/accounts/login/", {"username": "steady@example.com", "password": PASSWORD}).status_code == 302

    # Password-reset mail is still sent, and still throttled per email.
    for _ in range(3):
        assert Client(REMOTE_ADDR="203.0.113.78").post("/accounts/password-reset/", {"email": "steady@example.com"}).status_code == 302
    assert Client(REMOTE_ADDR="203.0.113.79").post("/accounts/password-reset/", {"email": "steady@example.com"}).status_code == 429
    assert len(mail.outbox) == 3

    # Account mail queued after commit is sent in the request when the broker (this Redis) is gone.
    newcomer = make_user(email="newcomer@example.com", email_verified=False)
    signed_in = Client(raise_request_exception=False)
    signed_in.force_login(newcomer)
    assert signed_in.post("/accounts/verify-email/resend/").status_code == 302
    assert [m.to for m in mail.outbox[3:]] == [["newcomer@example.com"]]

    # Usage is recorded (the ledger is the truth) and the live counter reads from it.
    organization_id = user.memberships.using("privileged").values_list("organization_id", flat=True).first()
    with transaction.atomic():
        rls.context_set(user_id=user.pk)
        row = analytics_services.usage_record(**usage_fields(user, organization_id))
    assert row is not None
    assert counters.counters_read(scope="user", owner_id=user.pk).calls == 1

    ready = Client().get("/health/ready")
    assert ready.status_code == 503 and "redis" in ready.json()["failing"]


def test_a_hung_redis_costs_a_sign_in_its_timeouts_not_the_request(settings):
    """A server that accepts connections and never answers (a stuck Redis): the socket
    timeouts in settings end each call and the fallbacks answer."""
    with tempfile.TemporaryDirectory(prefix="confab-hang-") as tmp:
        path = str(Path(tmp) / "redis.sock")
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(path)
        server.listen(64)  # the kernel completes connections; nothing ever replies
        settings.CACHES = {**settings.CACHES, "default": {**settings.CACHES["default"], "LOCATION": f"unix://{path}?db=0"}}
        statuses = []

        def sign_in():
            try:
                statuses.append(
                    Client(REMOTE_ADDR="192.0.2.9", raise_request_exception=False)
                    .post("/accounts/login/", {"username": "a@example.com", "password": "wrong-password-1"})
                    .status_code
                )
            finally:
                connections.close_all()

        started = time.monotonic()
        thread = threading.Thread(target=sign_in)
        thread.start()
        thread.join(timeout=30)
        elapsed = time.monotonic() - started
        server.close()
        thread.join(timeout=30)
    # Four Redis calls (two throttle checks, the failure count, the audit entry) at REDIS_SOCKET_TIMEOUT (1 s) each;
    # the client's own default (5 s each) would take 20 s.
    assert statuses == [200] and elapsed < 8, (statuses, elapsed)
