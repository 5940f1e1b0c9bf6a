"""config/csp.CSPMiddleware builds each policy once and answers as django-csp's own does,
case by case."""

import pytest
from csp.constants import HEADER, HEADER_REPORT_ONLY, NONCE, SELF
from csp.exceptions import CSPNonceError
from csp.middleware import CSPMiddleware as LibraryCSPMiddleware
from django.http import HttpResponse, JsonResponse
from django.test import RequestFactory, override_settings

from config.csp import CSPMiddleware

STRICT = {"DIRECTIVES": {"default-src": ["'none'"], "frame-ancestors": ["'none'"]}}


def _headers(middleware_class, response_made, *, path="/api/v1/models", use_nonce=False):
    """The CSP headers the middleware puts on the response, and the request after it."""
    request = RequestFactory().get(path)

    def view(request):
        if use_nonce:
            str(request.csp_nonce)  # a template that used the nonce
        return response_made()

    response = middleware_class(view)(request)
    return {name: response.get(name) for name in (HEADER, HEADER_REPORT_ONLY)}, request


def _same(response_made, **kwargs):
    ours, _ = _headers(CSPMiddleware, response_made, **kwargs)
    theirs, _ = _headers(LibraryCSPMiddleware, response_made, **kwargs)
    assert ours == theirs
    return ours


def _directives(header: str) -> set[str]:
    return {part.strip() for part in header.split(";")}


def _with(response, **attributes):
    for name, value in attributes.items():
        setattr(response, name, value)
    return response


def test_an_uncustomised_response_gets_the_settings_policy():
    headers = _same(lambda: JsonResponse({"ok": True}))
    assert "default-src 'self'" in headers[HEADER] and "frame-ancestors 'none'" in headers[HEADER]
    assert headers[HEADER_REPORT_ONLY] is None


@pytest.mark.parametrize("status", [404, 500])
def test_debug_error_pages_are_left_alone_and_others_are_not(status):
    with override_settings(DEBUG=True):
        assert _same(lambda: HttpResponse(status=status))[HEADER] is None
        assert _same(lambda: HttpResponse(status=403))[HEADER] is not None
    assert _same(lambda: HttpResponse(status=status))[HEADER] is not None


def test_exempt_responses_and_headers_already_set_are_kept():
    assert _same(lambda: _with(HttpResponse(), _csp_exempt=True))[HEADER] is None
    preset = HttpResponse()
    preset[HEADER] = "default-src 'none'"
    assert _same(lambda: preset)[HEADER] == "default-src 'none'"


def test_a_view_customised_policy_goes_to_django_csp():
    headers = _same(lambda: _with(HttpResponse(), _csp_update={"img-src": ["https://images.example"]}))
    assert "https://images.example" in headers[HEADER]
    headers = _same(lambda: _with(HttpResponse(), _csp_replace={"default-src": ["'none'"]}))
    assert "default-src 'none'" in headers[HEADER]


@override_settings(CONTENT_SECURITY_POLICY={"DIRECTIVES": {"script-src": [SELF, NONCE]}})
def test_a_page_that_used_the_nonce_gets_it_in_its_policy():
    headers, request = _headers(CSPMiddleware, HttpResponse, use_nonce=True)
    assert f"script-src 'self' 'nonce-{request._csp_nonce}'" in _directives(headers[HEADER])
    assert "script-src 'self'" in _directives(_headers(CSPMiddleware, HttpResponse)[0][HEADER])


def test_the_nonce_cannot_be_taken_after_the_header_is_written():
    _, request = _headers(CSPMiddleware, HttpResponse)
    with pytest.raises(CSPNonceError):
        str(request.csp_nonce)


def test_a_settings_change_is_seen_and_excluded_prefixes_and_report_only_are_honoured():
    _same(HttpResponse)  # the policy is now built and kept
    with override_settings(CONTENT_SECURITY_POLICY=STRICT, CONTENT_SECURITY_POLICY_REPORT_ONLY=STRICT):
        headers = _same(HttpResponse)
        assert _directives(headers[HEADER]) == {"default-src 'none'", "frame-ancestors 'none'"}
        assert headers[HEADER_REPORT_ONLY] == headers[HEADER]
        assert _same(lambda: _with(HttpResponse(), _csp_exempt_ro=True))[HEADER_REPORT_ONLY] is None
    with override_settings(CONTENT_SECURITY_POLICY={**STRICT, "EXCLUDE_URL_PREFIXES": ["/api/"]}):
        assert _same(HttpResponse)[HEADER] is None
        assert _directives(_same(HttpResponse, path="/conversations/")[HEADER]) == {"default-src 'none'", "frame-ancestors 'none'"}
    assert "default-src 'self'" in _directives(_same(HttpResponse)[HEADER])


@pytest.mark.django_db
def test_the_served_pages_and_api_carry_it(client):
    for path in ("/accounts/login/", "/api/v1/models"):
        assert "frame-ancestors 'none'" in client.get(path)[HEADER]
