"""A local HTTP server speaking Stripe's wire format for the endpoints Confab calls (the
library is pointed at it through STRIPE_API_BASE; nothing leaves the machine), and
webhook deliveries signed the way Stripe signs them."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl

import stripe

SECRET_KEY = "sk_test_confab"
WEBHOOK_SECRET = "whsec_confab_test"
_ids = itertools.count(1)


def _error(status: int, message: str, code: str = "resource_missing") -> tuple[int, dict]:
    return status, {"error": {"type": "invalid_request_error", "code": code, "message": message}}


class FakeStripe:
    """What the server was asked (`requests`), the subscriptions it knows (`subscriptions`) and
    the Checkout sessions it made (`sessions`: a test completes one by setting its status)."""

    def __init__(self):
        self.requests: list[dict] = []
        self.subscriptions: dict[str, dict] = {}
        self.sessions: dict[str, dict] = {}
        # Called with (method, path) before a request is answered: a test's way to make Stripe slow,
        # or to change an object's state between two of Confab's calls.
        self.before: Callable[[str, str], None] | None = None
        self.fail_with: int | None = None  # answer every request with this status
        self.url = ""

    def handle(self, method: str, path: str, form: dict, headers) -> tuple[int, dict]:
        self.requests.append({"method": method, "path": path, "form": form, "idempotency_key": headers.get("Idempotency-Key")})
        if headers.get("Authorization") != f"Bearer {SECRET_KEY}":
            return _error(401, "Invalid API Key provided.", "api_key_invalid")
        if self.before is not None:
            self.before(method, path)
        if self.fail_with:
            return _error(self.fail_with, "Something went wrong on Stripe's end.", "api_error")
        n = next(_ids)
        if method == "POST" and path == "/v1/customers":
            return 200, {"id": f"cus_test{n}", "object": "customer", "email": form.get("email"), "name": form.get("name")}
        if method == "POST" and path == "/v1/checkout/sessions":
            session = {"id": f"cs_test_{n}", "object": "checkout.session", "mode": form.get("mode"), "customer": form.get("customer")}
            session.update(status="open", created=int(time.time()), url=f"https://checkout.stripe.com/c/pay/cs_test_{n}")
            self.sessions[session["id"]] = session
            return 200, session
        if method == "GET" and path == "/v1/checkout/sessions":
            return 200, _listed(path, self.sessions.values(), form, ("customer", "status"))
        if method == "GET" and path.startswith("/v1/checkout/sessions/"):
            session_id = path.rsplit("/", 1)[1]
            if session_id not in self.sessions:
                return _error(404, f"No such checkout.session: '{session_id}'")
            return 200, self.sessions[session_id]
        if method == "POST" and path.startswith("/v1/checkout/sessions/") and path.endswith("/expire"):
            session = self.sessions.get(path.split("/")[4])
            if session is None:
                return _error(404, f"No such checkout.session: '{path.split('/')[4]}'")
            if session["status"] != "open":
                return _error(400, "Only Checkout Sessions with a status of `open` can be expired.", "checkout_session_not_open")
            session.update(status="expired", url=None)
            return 200, session
        if method == "GET" and path == "/v1/subscriptions":
            return 200, _listed(
                path, self.subscriptions.values(), form, ("customer", "status") if form.get("status") != "all" else ("customer",)
            )
        if method == "POST" and path == "/v1/billing_portal/sessions":
            return 200, {"id": f"bps_test{n}", "object": "billing_portal.session", "url": f"https://billing.stripe.com/p/session/test_{n}"}
        if method == "GET" and path.startswith("/v1/subscriptions/"):
            subscription_id = path.rsplit("/", 1)[1]
            if subscription_id not in self.subscriptions:
                return _error(404, f"No such subscription: '{subscription_id}'")
            return 200, self.subscriptions[subscription_id]
        return _error(404, f"Unrecognized request URL ({method}: {path}).", "url_invalid")


def _listed(path: str, objects, query: dict, filters: tuple[str, ...]) -> dict:
    """A Stripe list of the objects matching the query's filters, newest first."""
    data = [o for o in objects if all(o.get(name) == query[name] for name in filters if name in query)]
    data.sort(key=lambda o: o.get("created", 0), reverse=True)
    return {"object": "list", "url": path, "has_more": False, "data": data}


class _Handler(BaseHTTPRequestHandler):
    def _answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode() if length else ""
        path, _, query = self.path.partition("?")
        form = dict(parse_qsl(body or query, keep_blank_values=True))
        status, payload = self.server.fake.handle(self.command, path, form, self.headers)
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Request-Id", f"req_test{next(_ids)}")
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_DELETE = _answer

    def log_message(self, *args):
        pass


@contextmanager
def fake_stripe_running():
    fake = FakeStripe()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.fake = fake
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()


def signed(event: dict, *, secret: str = WEBHOOK_SECRET, timestamp: int | None = None) -> tuple[str, str]:
    """The body and Stripe-Signature header of a delivery (t=<ts>,v1=<HMAC-SHA256 of "ts.body">)."""
    payload = json.dumps(event)
    return payload, stripe.WebhookSignature.generate_signature_header(payload, secret, timestamp=timestamp)


def subscription_object(
    subscription_id: str,
    *,
    price: str,
    status: str = "active",
    organization_id=None,
    customer: str = "cus_test",
    period_start: int | None = None,
    trial_end: int | None = None,
    cancel_at_period_end: bool = False,
) -> dict:
    """A Stripe subscription as the current API version sends it (periods on the item)."""
    start = period_start or int(time.time())
    item = {"id": f"si_{subscription_id}", "object": "subscription_item", "price": {"id": price, "object": "price"}}
    item.update(current_period_start=start, current_period_end=start + 30 * 86400)
    return {
        "id": subscription_id,
        "object": "subscription",
        "customer": customer,
        "status": status,
        "cancel_at_period_end": cancel_at_period_end,
        "trial_end": trial_end,
        "metadata": {"organization_id": str(organization_id)} if organization_id else {},
        "items": {"object": "list", "data": [item]},
    }


def event(event_type: str, obj: dict, *, created: int | None = None, event_id: str | None = None) -> dict:
    return {
        "id": event_id or f"evt_test{next(_ids)}",
        "object": "event",
        "api_version": stripe.api_version,
        "created": created or int(time.time()),
        "livemode": False,
        "type": event_type,
        "data": {"object": obj},
    }
