"""DRF throttle: API requests per API key (or per user for session calls), counted in Redis."""

from rest_framework.throttling import BaseThrottle

from accounts.services import api_request_throttle


class ApiRequestThrottle(BaseThrottle):
    """Refusals become 429 with Retry-After and {"message", "extra": {"code": "throttled"}}."""

    def allow_request(self, request, view):
        key = getattr(request.auth, "pk", None)
        user = request.user
        if key is None and not (user and user.is_authenticated):
            return True  # an anonymous request is refused by authentication, not counted
        self.retry_after = api_request_throttle(subject=f"key:{key}" if key else f"user:{user.pk}")
        return self.retry_after is None

    def wait(self):
        return self.retry_after
