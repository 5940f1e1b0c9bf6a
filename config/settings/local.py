"""Developer machine: `make run`, embedded PostgreSQL and Redis under var/ by default."""
from .base import *  # noqa: F403
from .base import env

DEBUG = env.bool("DJANGO_DEBUG", default=True)
