"""Project-wide pages: home, and error handlers that answer /api/ in JSON."""

from django.shortcuts import render
from django.views import defaults

from config.api.errors import api_bad_request, api_not_found, api_server_error


def home(request):
    return render(request, "home.html")


def bad_request(request, exception=None):
    if request.path.startswith("/api/"):
        return api_bad_request(request, exception)
    return defaults.bad_request(request, exception)


def not_found(request, exception=None):
    if request.path.startswith("/api/"):
        return api_not_found(request, exception)
    return defaults.page_not_found(request, exception)


def server_error(request):
    if request.path.startswith("/api/"):
        return api_server_error(request)
    return defaults.server_error(request)
