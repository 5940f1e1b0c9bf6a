"""Liveness and readiness: /health/live answers while the process runs; /health/ready
checks PostgreSQL, Redis and the Celery broker, each with its latency."""

import logging
import time

from django.conf import settings
from django.db import connections
from django.http import JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe
from kombu import Connection

from config.cache import redis_client

CHECK_TIMEOUT_SECONDS = 2
logger = logging.getLogger("confab.health")


def _postgres() -> None:
    with connections["default"].cursor() as cur:
        cur.execute("SELECT 1")


def _redis() -> None:
    redis_client().ping()


def _celery_broker() -> None:
    with Connection(settings.CELERY_BROKER_URL, connect_timeout=CHECK_TIMEOUT_SECONDS) as conn:
        conn.ensure_connection(max_retries=1, timeout=CHECK_TIMEOUT_SECONDS)
        conn.default_channel.client.ping()


CHECKS = {"postgres": _postgres, "redis": _redis, "celery_broker": _celery_broker}


def _run(check) -> dict:
    start = time.perf_counter()
    try:
        check()
    except Exception as exc:  # any failure makes the service not ready: the answer says which, the log why
        # The exception's text names internal hosts, ports and roles; anyone may call this check.
        logger.warning("readiness check %s failed: %s: %s", check.__name__.lstrip("_"), type(exc).__name__, exc)
        return {"ok": False, "latency_ms": round((time.perf_counter() - start) * 1000, 2), "error": type(exc).__name__}
    return {"ok": True, "latency_ms": round((time.perf_counter() - start) * 1000, 2)}


@never_cache
@require_safe  # GET and HEAD: monitors probe with either
def live(request):
    return JsonResponse({"status": "ok"})


@never_cache
@require_safe  # GET and HEAD: monitors probe with either
def ready(request):
    results = {name: _run(check) for name, check in CHECKS.items()}
    failing = [name for name, r in results.items() if not r["ok"]]
    body = {"status": "ok" if not failing else "unavailable", "failing": failing, "checks": results}
    return JsonResponse(body, status=503 if failing else 200)


class HealthFirstMiddleware:
    """The health checks answer before anything reads the Host header (first in MIDDLEWARE): a load
    balancer or a container's probe asks by IP (docker-compose's, http://127.0.0.1:8000/health/ready),
    which DJANGO_ALLOWED_HOSTS, naming the site's domain, would refuse with a 400."""

    VIEWS = {"/health/live": live, "/health/ready": ready}

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        view = self.VIEWS.get(request.path_info)
        return view(request) if view is not None else self.get_response(request)
