"""`make test`: real PostgreSQL and Redis (embedded unless DATABASE_URL / REDIS_URL are set)."""

from config import embedded

embedded.environ_setdefault()  # before base: unset DATABASE_URL / REDIS_URL mean the embedded servers

from .base import *  # noqa: E402, F403
from .base import DATABASES  # noqa: E402

DEBUG = False
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # speed only; Argon2 is tested explicitly
# The owner alias creates and migrates the test database; the app and worker aliases
# point at it with their own roles (MIRROR copies NAME only, USER stays).
for _alias in ("default", "privileged"):
    DATABASES[_alias]["TEST"] = {"MIRROR": "owner"}
EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
CELERY_TASK_TIME_LIMIT = 60
CELERY_TASK_SOFT_TIME_LIMIT = 50
# Two fixed keys: tests encrypt under the first and can rotate from the second.
FIELD_ENCRYPTION_KEYS = ["wF0xF3H0n2xkXm9mZcCqD0nUq3s8b1n8o8q2QbV2n3U=", "0u6m8mVq1b5Xn0xkq2VtTqW3n8c5F9mJp0yJYxH1k2E="]
# pytest-django's test database and the in-process tests keep one connection per alias and
# thread; the pool runs under a real server in config/tests/test_serving.py.
for _db in DATABASES.values():
    _db["OPTIONS"].pop("pool")
    _db["CONN_MAX_AGE"] = 60

# Test transactions never commit, so PostgreSQL would never announce a key's change to the
# cache (accounts/api_key_cache.py); its own tests commit and turn it on.
API_KEY_CACHE = False
# Each API request pushes its own log row, there for the test to read when the response is
# (analytics/tests/test_buffer_batch.py turns the batch on).
API_LOG_BATCH_SECONDS = 0

# The provider tests' wire-format servers listen on loopback.
OUTBOUND_ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
