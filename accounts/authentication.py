"""DRF authentication by API key: `Authorization: Bearer ck_...`."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions

from accounts.services import ApiKeyRejected, api_key_authenticate


class ApiKeyAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).decode("latin-1")
        if not header:
            return None
        parts = header.split()
        if not parts:  # only whitespace (str.split counts NBSP and other separators)
            raise exceptions.AuthenticationFailed("Malformed Authorization header: expected 'Bearer ck_...'.")
        if parts[0].lower() != self.keyword.lower():
            return None
        if len(parts) != 2:
            raise exceptions.AuthenticationFailed("Malformed Authorization header: expected 'Bearer ck_...'.")
        try:
            # Sets the request transaction's row-level security context to the key's user.
            return api_key_authenticate(raw_key=parts[1])
        except ApiKeyRejected as exc:
            raise exceptions.AuthenticationFailed(str(exc)) from exc

    def authenticate_header(self, request):
        return f'{self.keyword} realm="api"'  # makes DRF answer 401, not 403


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "accounts.authentication.ApiKeyAuthentication"
    name = "ApiKey"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "description": "An API key from Settings → API keys: `ck_...`."}
