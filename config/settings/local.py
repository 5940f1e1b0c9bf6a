"""Developer machine: `make run`, embedded PostgreSQL and Redis under var/ by default."""

from .base import *  # noqa: F403
from .base import env

DEBUG = env.bool("DJANGO_DEBUG", default=True)

# `make run` generates a key under var/ on first start (config/embedded.py).
if not env.list("FIELD_ENCRYPTION_KEYS", default=[]):
    from pathlib import Path

    from .base import BASE_DIR

    _key_file = Path(env("CONFAB_VAR_DIR", default=str(BASE_DIR / "var"))) / "field-encryption.key"
    if _key_file.exists():
        FIELD_ENCRYPTION_KEYS = [_key_file.read_text().strip()]
