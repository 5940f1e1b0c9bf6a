"""Fixtures shared by config's tests."""

import threading

import pytest
from django.db import connections

from config.db.backend.base import DatabaseWrapper
from config.db.rls import pool_connection_reset


@pytest.fixture
def pooled():
    """A Django connection of the app role through a pool of one. Checked out with the pool's
    getconn() as Django's connect() does; not registered in `connections`, so connect() itself
    (its connection_created receivers look the alias up) is not used."""
    settings = connections["default"].settings_dict

    def reset(connection):  # the app's check-in reset, noting the thread it ran on
        pool_connection_reset(connection)
        reset_threads.append(threading.get_ident())

    reset.sql = pool_connection_reset.sql  # as the app's: it may go with a COMMIT

    reset_threads = []
    options = {**settings["OPTIONS"], "pool": {"min_size": 1, "max_size": 1, "reset": reset}}
    wrapper = DatabaseWrapper({**settings, "OPTIONS": options, "CONN_MAX_AGE": 0, "CONN_HEALTH_CHECKS": True}, alias="pool_check_test")
    wrapper.pool.open(wait=True)
    wrapper.reset_threads = reset_threads
    yield wrapper
    wrapper.close()
    wrapper.close_pool()
