"""Timestamps are read by psycopg's C parser, with the values Django's own loader gives
(config/db/backend FastTzLoader)."""

import datetime

import psycopg
import pytest
from django.db import DataError, connection
from django.db.backends.postgresql.psycopg_any import register_tzloader
from django.utils import timezone

from accounts.tests.factories import make_user
from config.db import rls
from config.db.backend.base import TIMESTAMPTZ_OID, FastTzLoader

pytestmark = pytest.mark.django_db

VALUES = [
    "2026-11-30 19:10:11.123456+00",
    "2026-11-30 19:10:11+00",
    "0001-01-01 00:00:00+00",
    "9999-12-31 23:59:59.999999+00",
    "2026-03-29 01:30:00+01",  # a daylight-saving change in Europe
    "2026-11-01 01:30:00-04",  # and in America
    "1969-12-31 23:59:59.5+00",  # before the epoch, with a fraction
    "2026-06-30 23:59:59.000001+05:30",
    "1900-01-01 00:00:00+00",
]


def _read(cursor, values):
    """Each value as read, or the class of the error reading it (a year outside 1 to 9999 in the
    session's zone)."""
    read = []
    for value in values:
        try:
            read.append(cursor.execute("SELECT %s::timestamptz", [value]).fetchone()[0])
        except psycopg.DataError as error:
            read.append(type(error))
    return read


@pytest.mark.parametrize("session_zone", ["UTC", "Asia/Kolkata", "America/New_York"])
def test_timestamps_read_as_djangos_own_loader_reads_them(session_zone):
    connection.ensure_connection()
    raw = connection.connection
    with connection.cursor() as cur:
        cur.execute("SELECT set_config('TimeZone', %s, false)", [session_zone])
    try:
        fast = raw.cursor()
        django_own = raw.cursor()
        register_tzloader(connection.timezone, django_own)  # Django's pure-Python loader, on this cursor only
        assert issubclass(fast.adapters.get_loader(TIMESTAMPTZ_OID, 0), FastTzLoader)
        assert not issubclass(django_own.adapters.get_loader(TIMESTAMPTZ_OID, 0), FastTzLoader)

        ours, theirs = _read(fast, VALUES), _read(django_own, VALUES)

        assert ours == theirs
        read = [v for v in ours if isinstance(v, datetime.datetime)]
        assert len(read) >= len(VALUES) - 1  # year 1 or 9999 can fall outside in another zone
        assert {v.tzinfo for v in read} == {connection.timezone}
        assert {v.utcoffset() for v in read} == {datetime.timedelta(0)}
        if session_zone == "UTC":  # as Django connects; in another zone both give its wall time as UTC
            assert ours[0] == datetime.datetime(2026, 11, 30, 19, 10, 11, 123456, tzinfo=datetime.UTC)
            assert ours[4] == datetime.datetime(2026, 3, 29, 0, 30, tzinfo=datetime.UTC)
            assert ours[7] == datetime.datetime(2026, 6, 30, 18, 29, 59, 1, tzinfo=datetime.UTC)
    finally:
        with connection.cursor() as cur:
            cur.execute("SELECT set_config('TimeZone', 'UTC', false)")


def test_an_infinite_timestamp_is_an_error_as_with_djangos_loader():
    with connection.cursor() as cur, pytest.raises(DataError, match="too large"):  # as psycopg's pure-Python loader says it
        cur.execute("SELECT 'infinity'::timestamptz")
        cur.fetchone()


def test_models_read_through_the_orm_get_aware_datetimes():
    user = make_user()
    with rls.privileged(reason="test: read a user's timestamps back"):
        read = type(user).objects.get(pk=user.pk)
    assert timezone.is_aware(read.created_at)
    assert read.created_at == user.created_at
    with connection.cursor() as cur:
        assert issubclass(cur.cursor.adapters.get_loader(TIMESTAMPTZ_OID, 0), FastTzLoader)
