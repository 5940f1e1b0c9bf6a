"""Attacks on the serving layer (config/asgi.py, config/threads.py, config/resolving.py and the
middleware chain): what one request leaves behind for the next, and input that must end in a
clear 4xx, never a 500, a response that never comes, or a connection the server keeps reading."""

import asyncio
import datetime
import socket
import time

import pytest
from asgiref.sync import async_to_sync
from django.conf import settings
from django.core.cache import caches
from django.utils import timezone

from accounts.models import UserSession
from accounts.tests.factories import PASSWORD, make_user
from config.asgi import OneHopASGIHandler
from config.crypto import token_digest
from config.tests.asgi_scope import http_scope
from config.tests.serving import served

pytestmark = pytest.mark.django_db(transaction=True)  # the request runs on another thread's connection

# A session cookie whose value is quoted with an octal escape: plain ASCII on the wire, which
# Django's parse_cookie unquotes (http.cookies._unquote) into a session key starting with NUL.
NUL_SESSION_COOKIE = (b"cookie", b'sessionid="\\000abcdefghijklmnop"')


async def _serve(handler, method: str, path: str, *, headers=(), body: bytes = b"") -> dict:
    """One request through the handler as uvicorn drives it; what it sent, and what it raised
    (uvicorn answers a bare 500, or drops the connection, for an exception out of the app)."""
    scope = http_scope(method, path, list(headers))
    answer = {"status": None, "body": b"", "raised": None}
    sent_body, done = False, asyncio.Event()

    async def receive():
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": body, "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]
        elif message["type"] == "http.response.body":
            answer["body"] += message.get("body", b"")
            if not message.get("more_body"):
                done.set()

    try:
        await asyncio.wait_for(handler(scope, receive, send), 20)
    except Exception as exc:
        answer["raised"] = exc
    return answer


def serve(*args, **kwargs) -> dict:
    return async_to_sync(_serve)(*args, **kwargs)


# --- A session cookie the database cannot be asked about -------------------------------------


def test_an_upload_path_with_a_nul_in_the_session_cookie_gets_an_answer_not_an_exception_out_of_the_handler():
    """An anonymous client POSTs to the import page (/chat/porting/, an upload path) with
    `Cookie: sessionid="\\000abcdefghijklmnop"` (ASCII on the wire; Django's cookie parser
    unquotes the octal escape into a NUL). Was: the handler asks accounts whether the caller is
    signed in before it reads the body (_caller_signed_in); the session store sends the key to
    PostgreSQL, which refuses a NUL (DataError), and the exception leaves OneHopASGIHandler with no
    response at all: uvicorn answers its bare "Internal Server Error" 500, outside Django's error
    handling and its error page. Should: a key no session can have is nobody: the small bound
    applies and the page answers as to anyone not signed in (a 4xx or a redirect to sign in)."""
    answer = serve(OneHopASGIHandler(), "POST", "/chat/porting/", headers=[NUL_SESSION_COOKIE], body=b"x")
    assert answer["raised"] is None, f"the handler raised {answer['raised']!r} and sent no response"
    assert answer["status"] is not None and answer["status"] < 500, answer


@pytest.mark.parametrize("path", ["/settings/profile/", "/api/v1/me"])
def test_a_nul_in_the_session_cookie_is_no_session_not_a_500(path):
    """GET a page or the API with the same cookie. Was: SessionMiddleware's lazy session is loaded
    by RLSContextMiddleware (request.session.get), the store's accounts_session_load(%s) gets a
    NUL, PostgreSQL refuses it and every page and API path answers 500 (logged as a server error)
    for one forged cookie. Should: an impossible session key is no session: the page redirects to
    sign in, the API answers 401."""
    answer = serve(OneHopASGIHandler(), "GET", path, headers=[NUL_SESSION_COOKIE])
    assert answer["raised"] is None
    assert answer["status"] in (302, 401), (answer["status"], answer["body"][:200])


# --- The once-a-minute session activity, on a request that owns its transactions ------------


def test_a_signed_in_post_to_a_view_owning_its_transactions_records_the_sessions_activity(client):
    """Alice, signed in, saves a provider key on /settings/credentials/ (a POST marked
    rls.own_transactions: the RLS middleware holds no transaction for it), her first request in
    the minute. Was: SessionActivityMiddleware runs after RLSContextMiddleware has closed the short
    transaction that loaded her; user_session_touch takes the minute's Redis mark, then its UPDATE
    runs outside any transaction with no row-level security context, so it matches no row (the
    policy hides her own UserSession) and writes nothing, silently. The mark then suppresses every
    other write for a minute: the Sessions page shows her browser idle for hours while she uses it.
    Should: the touch is written under her context (or the mark is taken only when a row was)."""
    alice = make_user()
    assert client.post("/accounts/login/", {"username": alice.email, "password": PASSWORD}).status_code == 302
    digest = token_digest(client.session.session_key)
    sessions = UserSession.objects.using("privileged").filter(session_key_digest=digest)
    hours_ago = timezone.now() - datetime.timedelta(hours=3)
    sessions.update(last_activity_at=hours_ago)  # her last activity, three hours ago
    caches[settings.SESSION_CACHE_ALIAS].delete(f"session-touch:{digest}")  # and the minute's mark long gone

    client.post("/settings/credentials/", {"provider": "openai", "api_key": ""})  # a form error: still her activity
    client.get("/settings/profile/")  # and a page, within the same minute

    assert sessions.get().last_activity_at > hours_ago, "two requests of hers, and the session still reads idle since 3 hours ago"


# --- A refused body is not read on -------------------------------------------------------------


def test_after_a_413_the_server_stops_reading_the_refused_body():
    """An anonymous client declares a 50 GB body to an API path over keep-alive and keeps sending.
    Was: the handler answers 413 at once, as README promises ("answers 413 before reading
    more"), but without `Connection: close`, so uvicorn keeps the connection and reads the whole
    declared body, discarding it: in this test it took gigabytes in a few seconds and never closed,
    one client holding a worker's event loop busy for as long as it likes. Should: the 413 ends the
    connection (RFC 9110 15.5.14: the server may close it), so nothing past the bound is read."""
    with served(workers=1, REQUEST_BODY_MAX_BYTES="1000000") as base:
        host, port = base.removeprefix("http://").split(":")
        conn = socket.create_connection((host, int(port)), timeout=5)
        conn.sendall(
            b"POST /api/v1/conversations HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 50000000000\r\n\r\n"
        )
        conn.setblocking(False)
        sent, answer, closed = 0, b"", False
        started = time.monotonic()
        try:
            while time.monotonic() - started < 8 and not closed:
                try:
                    sent += conn.send(b"x" * 65536)
                except BlockingIOError:
                    time.sleep(0.005)
                except OSError:  # reset: the server closed it
                    closed = True
                try:
                    chunk = conn.recv(65536)
                    answer += chunk
                    closed = closed or chunk == b""
                except BlockingIOError:
                    pass
                except OSError:
                    closed = True
        finally:
            conn.close()
    assert answer.startswith(b"HTTP/1.1 413"), answer[:100]
    assert closed, f"8 s after its 413 the server still read on: {sent / 1e9:.1f} GB of the refused body taken"
