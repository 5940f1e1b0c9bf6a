"""The process's one Redis client (config/cache.py)."""

from unittest import mock

import pytest
from asgiref.sync import async_to_sync
from django_redis.client.default import DefaultClient

from config.asgi import OneHopASGIHandler
from config.cache import redis_client, redis_script
from config.tests.test_asgi_handler import _get

pytestmark = pytest.mark.django_db(transaction=True)  # the request runs on another thread's connection


def test_requests_share_one_redis_client_instead_of_building_one_each():
    """Django's cache handler is local to each request's context under ASGI: calling
    get_redis_connection() in each request built a client every time (and billing kept a
    registered script per client, which grew without end)."""
    handler, built = OneHopASGIHandler(), []
    init = DefaultClient.__init__

    def counted_init(self, *args, **kwargs):
        built.append(self)
        init(self, *args, **kwargs)

    serve = async_to_sync(_get)
    assert serve(handler, "/health/ready") == 200  # the first may build the process's client
    with mock.patch.object(DefaultClient, "__init__", counted_init):
        for _ in range(3):
            assert serve(handler, "/health/ready") == 200
    assert built == []


def test_a_script_is_registered_once_on_the_shared_client():
    source = "return 7"
    assert redis_script(source) is redis_script(source)
    assert redis_script(source).registered_client is redis_client()
    assert redis_script(source)() == 7


def test_pointing_the_cache_elsewhere_forgets_the_client(settings):
    before = redis_client()
    settings.CACHES = {**settings.CACHES, "default": {**settings.CACHES["default"], "KEY_PREFIX": "elsewhere"}}
    assert redis_client() is not before


def test_the_client_parses_replies_with_hiredis():
    """requirements.txt pins hiredis: redis-py parses with it when it is installed (a script call
    costs about 40 us less CPU than with its Python parser), and says nothing when it is not."""
    pool = redis_client().connection_pool
    connection = pool.get_connection()
    try:
        assert type(connection._parser).__name__ == "_HiredisParser"
    finally:
        pool.release(connection)
    assert redis_script("return {1, 'two', {3}}")() == [1, b"two", [3]]
