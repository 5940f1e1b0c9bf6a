"""A real ASGI server in tests and benchmarks (config/tests/serving.py): the test settings
with the PostgreSQL pool on, as production runs, and test-only views under /_serving/."""

from .test import *  # noqa: F403
from .test import DATABASE_POOL_OPTIONS, DATABASES

for _db in DATABASES.values():
    _db["OPTIONS"]["pool"] = DATABASE_POOL_OPTIONS
    _db["CONN_MAX_AGE"] = 0
# Real servers see committed changes, as in production (the bench measures the path with it).
API_KEY_CACHE = env.bool("API_KEY_CACHE", default=True)  # noqa: F405
API_LOG_BATCH_SECONDS = env.float("API_LOG_BATCH_SECONDS", default=0.05)  # noqa: F405
ROOT_URLCONF = "config.tests.serving_urls"
# The stream touches no database; the context probes go through the RLS middleware like any page.
RLS_EXEMPT_PATHS = ("/health/", "/static/", "/_serving/stream")
WHITENOISE_USE_FINDERS = True  # static files from the app directories, as `make run` (DEBUG) serves them
