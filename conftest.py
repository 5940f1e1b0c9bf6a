"""Shared fixtures: real PostgreSQL (three roles), real Redis, a real Celery worker."""

import contextlib

import celery.contrib.testing.tasks  # noqa: F401  registers celery.ping for the worker's start check
import pytest
from celery.signals import setup_logging
from django.db import connections

pytest_plugins = ("celery.contrib.pytest", "config.tests.browser")


def pytest_collection_modifyitems(items):
    # Every database test may touch all three aliases (owner creates fixtures' schema,
    # app and worker roles read): include them so transactional tests flush the owner's.
    for item in items:
        marker = item.get_closest_marker("django_db")
        if marker and "databases" not in marker.kwargs:
            item.add_marker(pytest.mark.django_db(*marker.args, databases="__all__", **marker.kwargs), append=False)


@pytest.fixture(scope="session")
def django_db_setup(request, django_test_environment, django_db_blocker, django_db_modify_db_settings):
    """Create the test database once as the owner role; the app and worker aliases mirror it."""
    from django.test.utils import setup_databases, teardown_databases

    with django_db_blocker.unblock():
        config = setup_databases(verbosity=request.config.option.verbose, interactive=False, aliases={"owner", "default", "privileged"})
    yield
    with django_db_blocker.unblock():
        for connection in connections.all():
            connection.close()
        try:
            teardown_databases(config, verbosity=request.config.option.verbose)
        except Exception as exc:  # as pytest-django does: the throwaway server goes away anyway
            request.node.warn(pytest.PytestWarning(f"Error when trying to teardown test databases: {exc!r}"))


@setup_logging.connect(weak=False)
def _celery_keeps_the_test_logging(**kwargs):
    """A receiver here stops each in-thread worker from resetting the root logger (its level
    to ERROR, its handlers), which silenced warnings that later tests read with caplog."""


@pytest.fixture(scope="session")
def celery_app():
    from config.celery import app

    return app


@pytest.fixture(scope="session")
def celery_worker_parameters():
    return {"shutdown_timeout": 30}


@pytest.fixture
def raw_app_connection(django_db_blocker):
    """A fresh psycopg connection as the app role to the test database (autocommit off)."""
    import psycopg

    from config.db.rows import direct_connection_params

    with django_db_blocker.unblock():
        conn = psycopg.connect(**direct_connection_params("default"))
    yield conn
    conn.close()


@pytest.fixture(autouse=True)
def _request_threads_stopped():
    """Requests served in-process by the ASGI handler leave its reused threads, and their open
    connections, behind (config/threads.py): stopped after each test."""
    yield
    from config.threads import idle_threads_stop

    idle_threads_stop()


@pytest.fixture(autouse=True)
def _redis_clean(request):
    """Each test starts with an empty Redis (counters, throttles, buffers, broker queues)."""
    from django_redis import get_redis_connection

    get_redis_connection("default").flushdb()
    yield


@pytest.fixture(autouse=True)
def _catalog_fresh():
    """Each test reads the model catalog from its own database: a flush between tests fires no
    signal, so the per-process catalog (chat.selectors) would otherwise outlive its rows."""
    from chat import selectors

    selectors._catalog_clear()
    yield


@pytest.fixture
def catalog(django_db_blocker):
    """The model catalog with its prices (a transactional test's flush removes the seeded one)."""
    from chat.tests.factories import make_catalog

    with django_db_blocker.unblock():
        return make_catalog()


@pytest.fixture
def own_redis(settings):
    """A redis-server of the test's own, the cache and the Celery broker pointed at it, so a
    test may stop it (embedded.redis_stop(own_redis)) without touching the suite's server."""
    import tempfile
    from pathlib import Path

    from config import embedded
    from config.celery import celery_broker_url

    with tempfile.TemporaryDirectory(prefix="confab-o-") as tmp:
        redis_dir = Path(tmp)
        sock = embedded.redis_start(redis_dir, persist=False)
        url = f"unix://{sock}?db=0"
        settings.CACHES = {**settings.CACHES, "default": {**settings.CACHES["default"], "LOCATION": url}}
        with _celery_broker(celery_broker_url(url)):
            yield redis_dir
        embedded.redis_stop(redis_dir)


@contextlib.contextmanager
def _celery_broker(url: str):
    """Point the already-configured Celery app at this broker (its pools are rebuilt, as after a fork)."""
    from config.celery import app as celery_app

    previous = celery_app.conf.broker_url
    celery_app.conf.broker_url = url
    celery_app._after_fork()
    try:
        yield
    finally:
        celery_app.conf.broker_url = previous
        celery_app._after_fork()
