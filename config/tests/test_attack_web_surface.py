"""Attack review of the browser-facing web surface: redirects (next=, Referer, Stripe return
URLs, invitation and verification), CSRF (pages, htmx, logout, login CSRF, the API under a
session), headers on every kind of response (pages, 400/403/404/405, the share page, downloads,
the browsable API, Swagger UI, admin), session fixation across sign-in and sign-up, and what a
signed-out visitor is shown.

Most of it held (see the review's report); what did not is below. Each test failed on the code
as reviewed."""

import pytest
from django.test import Client

pytestmark = pytest.mark.django_db(transaction=True)

# Where an operator's Redis lives: an internal name the public internet has no business knowing.
INTERNAL_REDIS = "redis://:s3cret-pass@cache.internal.invalid:6379/0"


def test_the_public_readiness_check_does_not_tell_a_signed_out_visitor_where_the_servers_are(settings):
    """Done: Redis (cache and broker) is unreachable, as in any outage; a signed-out visitor, from
    anywhere and with any Host header (the health checks answer whatever the Host, and production
    exempts them from the HTTPS redirect), asks GET /health/ready.
    Was: the 503 body carries each failing check's exception text verbatim
    (`"error": "ConnectionError: Error -2 connecting to cache.internal.invalid:6379. Name or service
    not known."`): the internal host names and ports of Redis and the Celery broker (and, for a
    PostgreSQL failure, psycopg's text: the server's address and the database role) go to anyone
    on the internet, exactly when the system is degraded.
    Should: name the failing parts (`failing`, each check's `ok` and latency, as the README
    promises) and keep the exception's text for the log, not the anonymous response body."""
    settings.CACHES = {**settings.CACHES, "default": {**settings.CACHES["default"], "LOCATION": INTERNAL_REDIS}}
    settings.CELERY_BROKER_URL = INTERNAL_REDIS

    response = Client().get("/health/ready", HTTP_HOST="203.0.113.9")

    assert response.status_code == 503
    body = response.json()
    assert set(body["failing"]) == {"redis", "celery_broker"}  # the failing parts are named, as promised
    assert "cache.internal.invalid" not in response.content.decode(), body["checks"]
    assert "6379" not in response.content.decode(), body["checks"]
