from accounts.services import user_session_touch


class SessionActivityMiddleware:
    """Keeps each signed-in session's last activity current (written at most once a minute)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if getattr(request, "user", None) is not None and request.user.is_authenticated and hasattr(request, "session"):
            user_session_touch(request=request)
        return self.get_response(request)
