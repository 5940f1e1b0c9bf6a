"""Unknown /api/ paths answer the API's JSON error shape, with DEBUG on too.

Django answers a URL no pattern matches with handler404, or with its debug page when
DEBUG is on; this replaces either, for /api/ only, with {"message", "extra": {"code"}}.
"""

from config.api.errors import api_not_found


class ApiNotFoundMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if response.status_code == 404 and request.resolver_match is None and request.path.startswith("/api/"):
            return api_not_found(request)
        return response
