"""Settings shared by every environment. Values come from the environment (django-environ)."""

from pathlib import Path

import environ
from celery.schedules import crontab
from csp.constants import NONE, SELF, UNSAFE_INLINE
from django.core.exceptions import ImproperlyConfigured

from config.celery import celery_broker_url
from config.db.rls import pool_connection_reset
from config.settings.environment import CheckedEnv, postgres_url

BASE_DIR = Path(__file__).resolve().parent.parent.parent
env = CheckedEnv()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

SECRET_KEY = env("DJANGO_SECRET_KEY", default="insecure-local-only-key-change-me")
DEBUG = env.bool("DJANGO_DEBUG", default=False)
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
# The origin of links that leave the site (emails): never the Host a request came with, which
# chose where a reset link pointed whenever more than one host is allowed. Empty: the request's
# (local use); production derives it from DJANGO_ALLOWED_HOSTS when unset.
SITE_URL = env("SITE_URL", default="")
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    # config first: its `migrate` (defaulting to the owner role) overrides Django's.
    "config.apps.ConfigAppConfig",
    "config.apps.ConfabAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "csp",
    "accounts.apps.AccountsConfig",
    "analytics.apps.AnalyticsConfig",
    "billing.apps.BillingConfig",
    "chat.apps.ChatConfig",
]

MIDDLEWARE = [
    # /health/live and /health/ready, whatever the Host (config/health.py).
    "config.health.HealthFirstMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # django-csp's, with the policy built once (config/csp.py).
    "config.csp.CSPMiddleware",
    # Times the whole API request and queues its log row (analytics/buffer.py).
    "analytics.middleware.ApiLogMiddleware",
    # Unknown /api/ paths answer JSON, also with DEBUG on (inside ApiLogMiddleware, which logs the answer).
    "config.api.middleware.ApiNotFoundMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # Opens the request's transaction and sets its row-level security context.
    "config.db.rls.RLSContextMiddleware",
    # Audit entries made during the request name its user, IP and user agent.
    "analytics.middleware.AuditContextMiddleware",
    "accounts.middleware.SessionActivityMiddleware",
    # A signed-in user's pages show times in their own time zone.
    "accounts.middleware.UserTimeZoneMiddleware",
    # A signed-in user's responses are private, not kept by shared caches (unless a view says otherwise).
    "accounts.middleware.PrivateResponseMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "accounts.context_processors.theme",
            ]
        },
    }
]

# --- Databases ---------------------------------------------------------------
# Three roles on one database (see docs/architecture.md): `owner` runs migrations and
# partition DDL, `default` is the web app's role under row-level security, and
# `privileged` is the worker role (BYPASSRLS), entered only through rls.privileged().
# No fallback here: local.py and test.py point unset URLs at the embedded servers first.
DATABASE_URL = env("DATABASE_URL", default=None)
if not DATABASE_URL:
    raise ImproperlyConfigured(
        "Production needs DATABASE_URL (the owner role's PostgreSQL URL), with DATABASE_APP_URL and DATABASE_WORKER_URL; see .env.example."
    )
_db_urls = {
    "owner": postgres_url("DATABASE_URL", DATABASE_URL),
    "default": postgres_url("DATABASE_APP_URL", env("DATABASE_APP_URL", default=None)),
    "privileged": postgres_url("DATABASE_WORKER_URL", env("DATABASE_WORKER_URL", default=None)),
}
# Per alias and process. Django's pool (ASGI runs requests on many threads) needs CONN_MAX_AGE 0;
# each connection is RESET ALL as it goes back to the pool (rls.pool_connection_reset), or with
# its last COMMIT when nothing ran after it (config/db/backend).
# The hot path's statements are prepared once per connection (config/db/rows.prepared_cursor);
# Django binds the rest on the client, which never prepares, so the threshold is never reached.
# Off (None) for a pooler in transaction mode that cannot keep prepared statements.
DATABASE_PREPARE_THRESHOLD = 1_000_000 if env.bool("DATABASE_PREPARED_STATEMENTS", default=True) else None
DATABASE_POOL_OPTIONS = {
    "min_size": env.int("DATABASE_POOL_MIN_SIZE", default=1),
    "max_size": env.int("DATABASE_POOL_MAX_SIZE", default=8),
    "timeout": env.float("DATABASE_POOL_TIMEOUT", default=10.0),
    "reset": pool_connection_reset,
}
DATABASES = {}
for _alias, _url in _db_urls.items():
    _db = env.db_url_config(_url)
    _options = _db.get("OPTIONS", {})
    if "host" in _options and not _db["HOST"]:
        _db["HOST"] = _options.pop("host")  # a unix socket directory given as ?host=/dir
    # UTC as the session default, so RESET ALL on check-in restores it.
    _options["options"] = "-c timezone=UTC"
    _options["prepare_threshold"] = DATABASE_PREPARE_THRESHOLD
    _options["pool"] = DATABASE_POOL_OPTIONS
    # Django's backend, except that the pool pings only connections idle a while (config/db/backend).
    _db.update({"ENGINE": "config.db.backend", "OPTIONS": _options, "CONN_MAX_AGE": 0, "CONN_HEALTH_CHECKS": True})
    DATABASES[_alias] = _db
DATABASE_ROUTERS = ["config.db.routers.PrivilegedRouter"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis: cache, sessions, Celery broker ---------------------------------
REDIS_URL = env("REDIS_URL", default=None)
if not REDIS_URL:
    raise ImproperlyConfigured("Production needs REDIS_URL (cache, sessions, counters and the Celery broker); see .env.example.")
# A Redis that hangs holds a request this long (seconds) per call before its fallback runs.
REDIS_SOCKET_TIMEOUT = env.float("REDIS_SOCKET_TIMEOUT", default=1.0)
CACHES = {
    "default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": REDIS_URL,
        "OPTIONS": {
            "CLIENT_CLASS": "django_redis.client.DefaultClient",
            "SOCKET_CONNECT_TIMEOUT": REDIS_SOCKET_TIMEOUT,
            "SOCKET_TIMEOUT": REDIS_SOCKET_TIMEOUT,
        },
        "KEY_PREFIX": env("CACHE_KEY_PREFIX", default="confab"),
    }
}
# Sessions under the hash of their key, cached in Redis, from the database when Redis is down.
SESSION_ENGINE = "accounts.session_store"
SESSION_COOKIE_AGE = env.int("SESSION_COOKIE_AGE", default=60 * 60 * 24 * 14)

CELERY_BROKER_URL = env("CELERY_BROKER_URL", default=None) or celery_broker_url(REDIS_URL)
CELERY_RESULT_BACKEND = env("CELERY_RESULT_BACKEND", default=None) or celery_broker_url(REDIS_URL)
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_RESULT_EXPIRES = 60 * 60
CELERY_TIMEZONE = "UTC"
CELERY_TASK_TIME_LIMIT = env.int("CELERY_TASK_TIME_LIMIT", default=5 * 60)
CELERY_TASK_SOFT_TIME_LIMIT = env.int("CELERY_TASK_SOFT_TIME_LIMIT", default=4 * 60)
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Static schedule; each app's tasks join it as they arrive.
CELERY_BEAT_SCHEDULE = {
    "health-heartbeat": {"task": "config.tasks.heartbeat", "schedule": crontab(minute="*")},
    "usage-rollup": {"task": "analytics.tasks.usage_rollup_task", "schedule": crontab(minute="*")},
    "usage-counters-reconcile": {"task": "analytics.tasks.usage_counters_reconcile_task", "schedule": crontab(minute=17)},
    "partitions-upkeep": {"task": "analytics.tasks.partitions_upkeep_task", "schedule": crontab(hour=3, minute=5)},
    "usage-requests-prune": {"task": "analytics.tasks.usage_requests_prune_task", "schedule": crontab(hour=3, minute=35)},
    # API logs, events and audit entries wait in Redis until this writes them (seconds).
    "logs-flush": {"task": "analytics.tasks.logs_flush_task", "schedule": 10.0, "options": {"expires": 30}},
    "billing-periods-advance": {"task": "billing.tasks.subscription_periods_advance_task", "schedule": crontab(minute="*/5")},
}

# --- Auth ------------------------------------------------------------------
AUTH_USER_MODEL = "accounts.User"
AUTHENTICATION_BACKENDS = ["accounts.backends.EmailBackend"]
PASSWORD_HASHERS = ["django.contrib.auth.hashers.Argon2PasswordHasher", "django.contrib.auth.hashers.PBKDF2PasswordHasher"]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 10}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/"

# --- Client address and throttles (config/http.py, accounts/services/throttling.py) ---
# Proxies in front of the app that each append to X-Forwarded-For; 0 trusts no header.
TRUSTED_PROXY_COUNT = env.int("TRUSTED_PROXY_COUNT", default=0)
# name: (limit, window in seconds); README "Redis outages and throttles" says why each.
THROTTLES = {
    "login_email_ip": (env.int("THROTTLE_LOGIN_EMAIL_IP", default=5), 15 * 60),
    "login_ip": (env.int("THROTTLE_LOGIN_IP", default=30), 15 * 60),
    "login_email": (env.int("THROTTLE_LOGIN_EMAIL", default=100), 15 * 60),
    "password_reset_email": (env.int("THROTTLE_PASSWORD_RESET_EMAIL", default=3), 60 * 60),
    "password_reset_ip": (env.int("THROTTLE_PASSWORD_RESET_IP", default=20), 60 * 60),
    "api": (env.int("THROTTLE_API_PER_MINUTE", default=1200), 60),  # per API key or user; 0 turns it off
    # Mails sent on someone's asking: a confirmation link again, per user; invitations per
    # organization and address, and per inviter (fewer while the inviter's own email is unconfirmed).
    "verification_email": (env.int("THROTTLE_VERIFICATION_EMAIL", default=3), 60 * 60),
    "invitation_address": (env.int("THROTTLE_INVITATION_ADDRESS", default=3), 24 * 60 * 60),
    "invitations_inviter": (env.int("THROTTLE_INVITATIONS_INVITER", default=100), 60 * 60),
    "invitations_unconfirmed_inviter": (env.int("THROTTLE_INVITATIONS_UNCONFIRMED_INVITER", default=10), 24 * 60 * 60),
}

# --- I18N / time -----------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# --- Static ----------------------------------------------------------------
STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = BASE_DIR / "var" / "staticfiles"

# --- API -------------------------------------------------------------------
# Each web process remembers the API keys it read until PostgreSQL announces a change to the key
# or its owner (accounts/api_key_cache.py); off, every API request reads its key from the database.
API_KEY_CACHE = env.bool("API_KEY_CACHE", default=True)
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.authentication.ApiKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated", "config.api.permissions.HasRequiredScope"],
    # DRF's, safe for a lone surrogate quoted back from the request (config/api/renderers.py).
    "DEFAULT_RENDERER_CLASSES": ["config.api.renderers.JSONRenderer", "rest_framework.renderers.BrowsableAPIRenderer"],
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": "config.api.negotiation.ContentNegotiation",  # the common Accept headers' answer kept
    # Request bodies are JSON only, bounded in size and nesting depth (a 400, not a RecursionError);
    # any other body is a 415, and the schema offers JSON only. A form carries text alone, where an
    # empty value meant "not given" and "0" a false: not the API's types (schemathesis, 2026-12-03).
    # The file upload (POST /api/v1/imports) names its own multipart parser.
    "DEFAULT_PARSER_CLASSES": ["config.api.parsers.BoundedJSONParser"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "config.api.pagination.Pagination",
    "EXCEPTION_HANDLER": "config.api.errors.exception_handler",
    "DEFAULT_THROTTLE_CLASSES": ["accounts.throttles.ApiRequestThrottle"],
    "PAGE_SIZE": 50,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Confab API",
    "DESCRIPTION": "Accounts, chat, usage and billing for the Confab AI-chat platform.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SCHEMA_PATH_PREFIX": r"/api/v1",
    # Swagger UI from drf-spectacular-sidecar's static files: no CDN, works offline.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # Two choice sets share the field name `role`; name each enum after its model.
    "ENUM_NAME_OVERRIDES": {"UserRoleEnum": "accounts.models.User.Role", "MembershipRoleEnum": "accounts.models.Membership.Role"},
    # The default enum hook, then paged lists' 404 for a page past the end and every operation's
    # 429 from the API throttle (config/api/errors.py); then a body's 415, the streamed send's 200
    # and the search's `q` (config/api/schema.py).
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "config.api.errors.paging_documented",
        "config.api.errors.throttled_documented",
        "config.api.schema.json_only_documented",
        "config.api.schema.not_acceptable_documented",
        "config.api.schema.streams_documented",
        "config.api.schema.search_query_documented",
    ],
    # A text field that may not be blank says so (minLength 1), as its 400 does.
    "ENFORCE_NON_BLANK_FIELDS": True,
    # Request and response components apart, so that rule (and writeOnly fields) bind requests only.
    "COMPONENT_SPLIT_REQUEST": True,
}

# --- Content-Security-Policy (django-csp) ----------------------------------------
# Our own files only: HTMX, Chart.js, app.js and Swagger UI are served from static/. The one
# inline allowance is style attributes (a meter's width), which cannot run script.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF],
        "style-src-attr": [UNSAFE_INLINE],
        "img-src": [SELF, "data:"],
        "font-src": [SELF],
        "connect-src": [SELF],
        "object-src": [NONE],
        "base-uri": [SELF],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    }
}

# Secrets at rest (config/crypto.py): Fernet keys, newest first. `make run` keeps a
# generated key in var/ when unset; production must set it.
FIELD_ENCRYPTION_KEYS = env.list("FIELD_ENCRYPTION_KEYS", default=[])

EMAIL_BACKEND = env("EMAIL_BACKEND", default="django.core.mail.backends.console.EmailBackend")
DEFAULT_FROM_EMAIL = env("DEFAULT_FROM_EMAIL", default="Confab <no-reply@confab.local>")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.choice("LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"))},
    # The stripe library logs each error's message at INFO, word for word; billing logs what it needs.
    "loggers": {"stripe": {"level": "WARNING"}},
}

# --- Partitioned tables (config/db/partitions.py) ----------------------------
PARTITION_MONTHS_AHEAD = env.int("PARTITION_MONTHS_AHEAD", default=3)
PARTITIONED_TABLES = {
    "analytics_tokenusage": {"retention_months": env.int("RETENTION_MONTHS_TOKEN_USAGE", default=36)},
    "analytics_apilog": {"retention_months": env.int("RETENTION_MONTHS_API_LOG", default=3)},
    "analytics_event": {"retention_months": env.int("RETENTION_MONTHS_EVENT", default=13)},
    "analytics_auditlog": {"retention_months": env.int("RETENTION_MONTHS_AUDIT_LOG", default=24)},
}

# --- Audit log (analytics/audit.py) ------------------------------------------------
# Models whose creates, updates and deletes are written to the audit log with old/new values.
AUDITED_MODELS = [
    "accounts.User",
    "accounts.Organization",
    "accounts.Membership",
    "accounts.ApiKey",
    "accounts.ProviderCredential",
    "accounts.Invitation",
]

# --- Billing (billing/) ----------------------------------------------------------
# Days a past-due subscription keeps its plan before it gets the free plan's limits.
BILLING_GRACE_DAYS = env.int("BILLING_GRACE_DAYS", default=7)
# Output tokens one call may ask for: its plan's cap when lower, this when the plan sets none (the
# reservation's upper bound). A plan's cap above it is refused in admin (billing/admin.py).
CHAT_MAX_OUTPUT_TOKENS = env.int("CHAT_MAX_OUTPUT_TOKENS", default=4096)
# The most bytes one provider response may send (as sent, before any decompression): past it the
# call fails. A server at a user's base URL could otherwise send a body without end.
CHAT_PROVIDER_RESPONSE_MAX_BYTES = env.int("CHAT_PROVIDER_RESPONSE_MAX_BYTES", default=64 * 1024 * 1024)
# Seconds an unsettled reservation holds quota (a killed worker's); longer than a provider call may take.
ENTITLEMENT_RESERVATION_TIMEOUT = env.int("ENTITLEMENT_RESERVATION_TIMEOUT", default=900)
CELERY_BEAT_SCHEDULE["billing-reservations-expire"] = {"task": "billing.tasks.reservations_expire_task", "schedule": crontab(minute="*")}

# --- Stripe (billing/stripe_services.py) -----------------------------------------
# Unset secret key: payment is not configured and staff change plans in admin.
STRIPE_SECRET_KEY = env("STRIPE_SECRET_KEY", default="")
STRIPE_WEBHOOK_SECRET = env("STRIPE_WEBHOOK_SECRET", default="")
# Where the library sends API calls (tests point it at a local server speaking Stripe's wire format).
STRIPE_API_BASE = env("STRIPE_API_BASE", default="https://api.stripe.com")
CELERY_BEAT_SCHEDULE["billing-revenue-snapshot"] = {"task": "billing.tasks.revenue_snapshot_task", "schedule": crontab(minute=7)}

# --- Chat (chat/) ------------------------------------------------------------------
CHAT_DEFAULT_PROVIDER = env("CHAT_DEFAULT_PROVIDER", default="echo")
CHAT_DEFAULT_MODEL = env("CHAT_DEFAULT_MODEL", default="echo-1")
# Seconds the echo provider waits before each word: enough to see a stream (the serving bench sets 0).
CHAT_ECHO_DELAY = env.float("CHAT_ECHO_DELAY", default=0.05)
# Seconds a reply stays in the response cache (chat/response_cache.py; opt-in per plan, persona, request).
CHAT_RESPONSE_CACHE_TTL = env.int("CHAT_RESPONSE_CACHE_TTL", default=1800)
# The platform's keys: managed (paid plans) and free tier; unset means that access is not offered.
OPENAI_API_KEY = env("OPENAI_API_KEY", default=None)
ANTHROPIC_API_KEY = env("ANTHROPIC_API_KEY", default=None)
GEMINI_API_KEY = env("GEMINI_API_KEY", default=None)
OPENAI_FREE_TIER_API_KEY = env("OPENAI_FREE_TIER_API_KEY", default=None)
ANTHROPIC_FREE_TIER_API_KEY = env("ANTHROPIC_FREE_TIER_API_KEY", default=None)
GEMINI_FREE_TIER_API_KEY = env("GEMINI_FREE_TIER_API_KEY", default=None)
# Paths the API log records (analytics/middleware.py): the API and the OpenAI-compatible gateway (chat/gateway.py).
API_LOG_PATH_PREFIX = ("/api/", "/v1/")
# A process sends its API log rows to Redis together, at most this many seconds after the first
# (analytics/buffer.buffer_push_soon): a process killed outright loses its last interval's rows.
# 0: each request pushes its own.
API_LOG_BATCH_SECONDS = env.float("API_LOG_BATCH_SECONDS", default=0.05)
# A reply still `streaming` after this many minutes lost its worker: closed as interrupted and metered.
CHAT_STREAM_STALE_MINUTES = env.int("CHAT_STREAM_STALE_MINUTES", default=15)
CELERY_BEAT_SCHEDULE["chat-streams-close-stale"] = {"task": "chat.tasks.streams_close_stale_task", "schedule": crontab(minute="*/5")}
# Import and export (chat/porting/): limits of one imported file (over one: refused, nothing imported).
CHAT_IMPORT_MAX_BYTES = env.int("CHAT_IMPORT_MAX_BYTES", default=200 * 1024 * 1024)
# Request bodies (config/asgi.py answers 413 past them, before reading more): an upload path's
# the largest upload, an import, plus its form's framing, for a caller signed in (a session or an
# API key, checked before the body is read); any other request's what Django reads of
# a JSON or form body (DATA_UPLOAD_MAX_MEMORY_SIZE, Django's default written out) plus a little,
# so an anonymous client cannot have hundreds of megabytes spooled to disk on any page.
UPLOAD_PATHS = ("/chat/porting/", "/api/v1/imports")
UPLOAD_BODY_MAX_BYTES = env.int("UPLOAD_BODY_MAX_BYTES", default=CHAT_IMPORT_MAX_BYTES + 1024 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = 2_621_440
REQUEST_BODY_MAX_BYTES = env.int("REQUEST_BODY_MAX_BYTES", default=DATA_UPLOAD_MAX_MEMORY_SIZE + 64 * 1024)
CHAT_IMPORT_MAX_UNCOMPRESSED_BYTES = env.int("CHAT_IMPORT_MAX_UNCOMPRESSED_BYTES", default=1024 * 1024 * 1024)
CHAT_IMPORT_MAX_CONVERSATIONS = env.int("CHAT_IMPORT_MAX_CONVERSATIONS", default=20_000)
CHAT_IMPORT_MAX_MESSAGES = env.int("CHAT_IMPORT_MAX_MESSAGES", default=500_000)
# Where export zips are built (private: served only through the signed, owner-only link) and hours they live.
CHAT_EXPORT_DIR = Path(env("CHAT_EXPORT_DIR", default=str(BASE_DIR / "var" / "exports")))
CHAT_EXPORT_HOURS = env.int("CHAT_EXPORT_HOURS", default=24)
# Every 10 minutes: an export whose worker died blocks its user's next export until this fails it
# (then expired exports' files are removed).
CELERY_BEAT_SCHEDULE["chat-exports-expire"] = {"task": "chat.tasks.exports_expire_task", "schedule": crontab(minute="*/10")}
# Where uploads wait for their import task (private; named by job id), and the sweep of jobs that never finished.
CHAT_IMPORT_DIR = Path(env("CHAT_IMPORT_DIR", default=str(BASE_DIR / "var" / "imports")))
# Every 10 minutes: a job whose worker died blocks its user's next import until this fails it.
CELERY_BEAT_SCHEDULE["chat-imports-fail-stale"] = {"task": "chat.tasks.import_jobs_fail_stale_task", "schedule": crontab(minute="*/10")}

# Hosts a user-set URL (a provider base URL) may reach although they are not public (config/outbound.py).
OUTBOUND_ALLOWED_HOSTS = env.list("OUTBOUND_ALLOWED_HOSTS", default=[])

# Reconciliation with the provider's bill (manage.py usage_reconcile; daily for yesterday when an admin key is set).
OPENAI_ADMIN_KEY = env("OPENAI_ADMIN_KEY", default=None)
ANTHROPIC_ADMIN_KEY = env("ANTHROPIC_ADMIN_KEY", default=None)
OPENAI_ADMIN_BASE_URL = env("OPENAI_ADMIN_BASE_URL", default="https://api.openai.com")
ANTHROPIC_ADMIN_BASE_URL = env("ANTHROPIC_ADMIN_BASE_URL", default="https://api.anthropic.com")
USAGE_RECONCILE_TOLERANCE = str(env.decimal("USAGE_RECONCILE_TOLERANCE", "0.001"))  # a fraction of the ledger's tokens (read as a Decimal)
CELERY_BEAT_SCHEDULE["usage-reconcile"] = {"task": "analytics.tasks.usage_reconcile_task", "schedule": crontab(hour=4, minute=20)}
