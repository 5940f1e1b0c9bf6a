"""What a Redis outage raises: the raw client's errors and django-redis's cache wrapper."""

from django_redis.exceptions import ConnectionInterrupted
from redis.exceptions import RedisError

REDIS_ERRORS = (RedisError, ConnectionInterrupted)
