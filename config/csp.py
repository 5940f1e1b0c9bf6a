"""django-csp's middleware with each policy built once."""

from __future__ import annotations

import http.client
from functools import cache

from csp.constants import HEADER, HEADER_REPORT_ONLY
from csp.middleware import CheckableLazyObject
from csp.middleware import CSPMiddleware as LibraryCSPMiddleware
from csp.utils import build_policy
from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

# What makes a response's policy differ from the settings' (django-csp's decorators).
_CUSTOMISED = ("_csp_config", "_csp_update", "_csp_replace", "_csp_config_ro", "_csp_update_ro", "_csp_replace_ro")
# (header, setting, the response attribute that exempts it, report only)
_POLICIES = (
    (HEADER, "CONTENT_SECURITY_POLICY", "_csp_exempt", False),
    (HEADER_REPORT_ONLY, "CONTENT_SECURITY_POLICY_REPORT_ONLY", "_csp_exempt_ro", True),
)


@cache
def _policy(report_only: bool) -> tuple[str, tuple[str, ...]]:
    """The header's value from the settings alone, and the path prefixes it is left off."""
    setting = getattr(settings, _POLICIES[report_only][1], None) or {}
    return build_policy(report_only=report_only), tuple(setting.get("EXCLUDE_URL_PREFIXES", None) or ())


@receiver(setting_changed)
def _policies_forget(*, setting, **kwargs):
    if setting in ("CONTENT_SECURITY_POLICY", "CONTENT_SECURITY_POLICY_REPORT_ONLY"):
        _policy.cache_clear()


class CSPMiddleware(LibraryCSPMiddleware):
    """django-csp builds the policy again for every response (its parts deep-copied by
    dataclasses.asdict, then joined), 3% of an API request's time under the GIL; it changes
    only with the settings, unless a view customised it or the page used the request's nonce.
    Those go to django-csp as before; the rest get the policy built once, under the same rules
    (DEBUG's 404 and 500 pages left alone, a header already set kept, the exempt flags and
    excluded prefixes honoured, the nonce closed after the header is written).
    config/tests/test_csp.py compares the two response by response."""

    def process_response(self, request, response):
        if getattr(request, "_csp_nonce", None) is not None or any(hasattr(response, name) for name in _CUSTOMISED):
            return super().process_response(request, response)
        if settings.DEBUG and response.status_code in (http.client.INTERNAL_SERVER_ERROR, http.client.NOT_FOUND):
            return response
        for header, _setting, exempt, report_only in _POLICIES:
            policy, excluded = _policy(report_only)
            if policy and header not in response and not getattr(response, exempt, False) and not request.path_info.startswith(excluded):
                response[header] = policy
        request.csp_nonce = CheckableLazyObject(self._csp_nonce_post_response)
        return response
