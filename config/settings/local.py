"""Developer machine: `make run`, embedded PostgreSQL and Redis under var/ by default."""

from config import embedded

embedded.environ_setdefault()  # before base: unset DATABASE_URL / REDIS_URL mean the embedded servers

from .base import *  # noqa: E402, F403
from .base import env  # noqa: E402

DEBUG = env.bool("DJANGO_DEBUG", default=True)

# `make run` generates a key under var/ on first start (config/embedded.py).
if not env.list("FIELD_ENCRYPTION_KEYS", default=[]):
    from pathlib import Path

    from .base import BASE_DIR

    _key_file = Path(env("CONFAB_VAR_DIR", default=str(BASE_DIR / "var"))) / "field-encryption.key"
    if _key_file.exists():
        FIELD_ENCRYPTION_KEYS = [_key_file.read_text().strip()]
