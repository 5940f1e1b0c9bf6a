"""Attack probes: secrets and personal data where they should not be (logs, rows, Redis,
the database's own views, error answers). Each test failed on the code it was written against."""

from __future__ import annotations

import os
from importlib import import_module

import pytest
from django.conf import settings
from django.core.cache import caches

from accounts.tests.factories import make_user

pytestmark = pytest.mark.django_db(transaction=True)


def _store(session_key=None):
    return import_module(settings.SESSION_ENGINE).SessionStore(session_key)


def _seen_in_pg_stat_activity(raw_app_connection, secret: str) -> list[str]:
    """What another connection of the web role (an attacker's raw SQL) reads of the other backends'
    statements: every pg_stat_activity query text that holds `secret`."""
    with raw_app_connection.cursor() as cur:
        cur.execute("SELECT query FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND strpos(query, %s) > 0", [secret])
        rows = [row[0] for row in cur.fetchall()]
    raw_app_connection.rollback()
    return rows


def test_a_session_key_is_readable_by_the_web_roles_sql_in_pg_stat_activity(raw_app_connection):
    """Done: a user's session is saved and loaded through the store (accounts.session_store), then
    another connection of the web role reads pg_stat_activity, as raw SQL of that role may.
    Was: the statement text there is `SELECT ... accounts_session_load('<the raw session key>')`
    (Django's client-side binding writes the key into the SQL), so the web role's SQL collects live
    session keys of every user, a cookie away from their accounts, though `accounts_session` itself
    is unreadable to it. Should: only the key's SHA-256 (what the table keeps) travels in SQL."""
    user = make_user(email="victim@example.com")
    store = _store()
    store["_auth_user_id"] = str(user.pk)
    store.create()
    key = store.session_key
    caches[settings.SESSION_CACHE_ALIAS].clear()  # a cache miss: the next request reads the database
    loaded = _store(key)
    assert loaded.load().get("_auth_user_id") == str(user.pk)
    assert _seen_in_pg_stat_activity(raw_app_connection, key) == []


def test_the_web_servers_access_log_keeps_a_live_password_reset_link(tmp_path):
    """Done: `make run`'s and docker-compose's web server (gunicorn + uvicorn workers with
    `--access-logfile -`, embedded.web_command) serves a user opening the password-reset link
    from their mail (`/accounts/password-reset/<uid>/<token>/`); its access log is read.
    Was: the log line holds the whole request line, the live reset token in it (valid for
    PASSWORD_RESET_TIMEOUT, until the password changes: a user who opens the link and does not go
    on leaves their account to whoever reads the logs); the verification, invitation and share
    links (`/accounts/verify-email/<token>/`, `/accounts/invitations/<token>/`, `/s/<token>/`) the same.
    Should: a path's token is not written down (a log format or filter that masks it)."""
    import signal
    import subprocess
    import time

    import httpx
    from django.contrib.auth.tokens import default_token_generator
    from django.utils.encoding import force_bytes
    from django.utils.http import urlsafe_base64_encode

    from config import embedded
    from config.tests.serving import _free_port, server_env

    user = make_user(email="resetting@example.com")
    token = default_token_generator.make_token(user)
    path = f"/accounts/password-reset/{urlsafe_base64_encode(force_bytes(user.pk))}/{token}/"
    port = _free_port()
    log = tmp_path / "web.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            embedded.web_command(bind=f"127.0.0.1:{port}", workers=1),  # access_log as make run has it
            cwd=settings.BASE_DIR,
            env=server_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 90
            while True:
                assert proc.poll() is None, log.read_text()
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/health/live", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline
                time.sleep(0.2)
            response = httpx.get(f"http://127.0.0.1:{port}{path}", timeout=30)
            assert response.status_code == 302  # the token is good: the view keeps it in the session
            time.sleep(0.5)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
    written = log.read_text()
    assert "/health/live" in written  # the access log is on, as make run and docker-compose run it
    assert token not in written


class _EchoingServer:
    """A server that answers every request 401 with a body quoting the credentials it was sent,
    as a gateway or proxy in front of a provider does ("Invalid API key: <what you sent>")."""

    def __init__(self):
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format, *args):
                pass

            def _answer(self):
                length = int(self.headers.get("content-length") or 0)
                if length:
                    self.rfile.read(length)
                said = self.headers.get("authorization") or self.headers.get("x-api-key") or ""
                body = json.dumps(
                    {
                        "error": {
                            "message": f"Incorrect API key provided: {said.removeprefix('Bearer ')}",
                            "type": "invalid_request_error",
                            "code": "invalid_api_key",
                        }
                    }
                ).encode()
                self.send_response(401)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def echoing_server():
    server = _EchoingServer()
    yield server
    server.stop()


ADMIN_KEY = "sk-admin-Zq8yV3mL1pT7rW2nX5cB9dF4gH6jK0"


def test_the_daily_reconciliation_writes_the_admin_key_an_error_body_quotes_into_the_log_and_task_result(settings, echoing_server, caplog):
    """Done: the daily reconciliation (analytics.tasks.usage_reconcile_task) runs with
    OPENAI_ADMIN_KEY set, against an endpoint that refuses it with a 401 whose body quotes the key
    (a proxy or gateway that echoes the request, as the brief's "provider answering 401 quoting the key").
    Was: ReconciliationFailed's message is `HTTP 401: <the body's first 300 characters>`, key and
    all; it is logged at ERROR (confab.analytics.reconcile) and returned as the task's result, which
    the Celery result backend keeps in Redis for an hour (and the command prints it). The chat path
    takes care to keep a provider's words out for this very reason (ProviderError: "a provider's
    words can echo part of our key"; chat.services._failure replaces the key in a traceback).
    Should: the status and a sentence, with the key (or the whole body) left out or masked."""
    from analytics import tasks

    settings.OPENAI_ADMIN_KEY, settings.OPENAI_ADMIN_BASE_URL = ADMIN_KEY, echoing_server.url
    settings.ANTHROPIC_ADMIN_KEY = None
    with caplog.at_level("INFO"):
        result = tasks.usage_reconcile_task()
    assert "failed" in result["openai"]  # the refusal reached the task
    assert ADMIN_KEY not in caplog.text
    assert ADMIN_KEY not in str(result)


def test_a_share_links_token_is_readable_by_the_web_roles_sql_in_pg_stat_activity(raw_app_connection):
    """Done: a visitor opens a share link (chat.sharing.share_link_open, as /s/<token>/ does), then
    another connection of the web role reads pg_stat_activity.
    Was: the statement `SELECT ... FROM chat_share_link_open('<the raw token>')` is there, so the
    web role's SQL collects the tokens of every link being opened (the table keeps only their
    SHA-256 so that a database reader cannot). Should: the token's digest travels, not the token."""
    from chat import services as chat_services
    from chat import sharing

    owner = make_user(email="sharer@example.com")
    conversation = chat_services.conversation_create(user=owner, title="private plans")
    link, token = sharing.share_link_create(user=owner, conversation=conversation, audience="anyone")
    assert sharing.share_link_open(token=token).id == link.id
    assert _seen_in_pg_stat_activity(raw_app_connection, token) == []


STRIPE_KEY = "sk_live_51Hq8yV3mL1pT7rW2nX5cB9dF4gH6jK0aQ"


def test_a_stripe_refusal_quoting_the_secret_key_is_logged_with_it(settings, echoing_server, caplog):
    """Done: an owner starts a checkout (billing.stripe_services.checkout_session_create) and the
    Stripe endpoint (STRIPE_API_BASE: a proxy or a Stripe-compatible server in front of it) refuses
    with a 401 whose message quotes the key it was sent.
    Was: `_stripe_call` logs `Stripe call failed: <the library's message>` at WARNING
    (confab.billing.stripe), and that message is the body's, secret key and all; the stripe
    library's own INFO line ("Stripe v1 API error received", logger `stripe`) repeats it, and
    LOGGING lets it through at the default LOG_LEVEL=INFO. (api.stripe.com itself masks the key.)
    Should: the error's class, status and request id, not the provider's words; `stripe` at WARNING."""
    from billing import stripe_services
    from billing.tests.factories import make_plans, organization_of
    from config.db import rls
    from config.errors import ApplicationError

    plans = make_plans()
    with rls.privileged(reason="test factory"):
        plans["pro"].stripe_monthly_price_id = "price_pro_month"
        plans["pro"].save(update_fields=["stripe_monthly_price_id"])
    settings.STRIPE_SECRET_KEY, settings.STRIPE_WEBHOOK_SECRET = STRIPE_KEY, "whsec_test"
    settings.STRIPE_API_BASE = echoing_server.url
    owner = make_user(email="payer@example.com")
    with caplog.at_level("INFO"), pytest.raises(ApplicationError) as refused:
        stripe_services.checkout_session_create(
            actor=owner, organization=organization_of(owner), plan=plans["pro"], interval="month", return_url="http://testserver/billing/"
        )
    assert refused.value.extra["code"] == "stripe_error"  # the refusal reached the call
    assert STRIPE_KEY not in caplog.text
