"""The accounts REST API (/api/v1/): each view parses input, calls one service, renders output.

Reads go through accounts.selectors under the request's row-level security context, so
another tenant's id is answered 404, never 403. API keys need `account:read` to read and
`account:write` to change anything here; signed-in browser sessions are not scope-limited.
"""

from drf_spectacular.utils import extend_schema
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import APIView

from accounts import selectors, services
from accounts.errors import NotAllowed
from accounts.models import ApiKey
from accounts.serializers import (
    ApiKeyCreatedOut,
    ApiKeyCreateIn,
    ApiKeyOut,
    InvitationAcceptIn,
    InvitationCreateIn,
    InvitationOut,
    MeIn,
    MembershipOut,
    MembershipRoleIn,
    MeOut,
    OrganizationCreateIn,
    OrganizationOut,
    OrganizationUpdateIn,
    PreferencesSerializer,
    ProviderCredentialIn,
    ProviderCredentialOut,
    UserSessionOut,
)
from accounts.session_store import session_digest
from config.api.errors import error_responses
from config.api.inputs import validated_body
from config.db import rls
from config.http import site_url

READ, WRITE = ApiKey.Scope.ACCOUNT_READ.value, ApiKey.Scope.ACCOUNT_WRITE.value
ACCOUNT_SCOPES = {"GET": READ, "HEAD": READ, "OPTIONS": READ, "*": WRITE}


def _page(view: APIView, request, queryset, serializer_class, context: dict | None = None) -> Response:
    paginator = view.pagination_class()
    page = paginator.paginate_queryset(queryset, request, view=view)
    return paginator.get_paginated_response(serializer_class(page, many=True, context=context or {}).data)


# --- Me and preferences ------------------------------------------------------------


class MeApi(APIView):
    required_scopes = ACCOUNT_SCOPES

    @extend_schema(responses={200: MeOut, **error_responses(401, 403)})
    def get(self, request):
        return Response(MeOut(request.user).data)

    @extend_schema(request=MeIn, responses={200: MeOut, **error_responses(400, 401, 403)})
    def patch(self, request):
        user = services.user_update(user=request.user, **validated_body(MeIn, request, partial=True))
        return Response(MeOut(user).data)


class PreferencesApi(APIView):
    required_scopes = ACCOUNT_SCOPES

    @extend_schema(responses={200: PreferencesSerializer, **error_responses(401, 403)})
    def get(self, request):
        return Response(PreferencesSerializer(selectors.preferences_get(user=request.user)).data)

    @extend_schema(request=PreferencesSerializer, responses={200: PreferencesSerializer, **error_responses(400, 401, 403)})
    def patch(self, request):
        preferences = services.preferences_update(user=request.user, **validated_body(PreferencesSerializer, request, partial=True))
        return Response(PreferencesSerializer(preferences).data)


# --- Organizations -------------------------------------------------------------------


class OrganizationListApi(APIView):
    required_scopes = ACCOUNT_SCOPES
    pagination_class = api_settings.DEFAULT_PAGINATION_CLASS

    @extend_schema(responses={200: OrganizationOut(many=True), **error_responses(401, 403)})
    def get(self, request):
        return _page(self, request, selectors.organization_list(user=request.user), OrganizationOut)

    @extend_schema(request=OrganizationCreateIn, responses={201: OrganizationOut, **error_responses(400, 401, 403)})
    def post(self, request):
        organization = services.organization_create(user=request.user, **validated_body(OrganizationCreateIn, request))
        organization = selectors.organization_get(user=request.user, organization_id=organization.pk)
        return Response(OrganizationOut(organization).data, status=status.HTTP_201_CREATED)


class OrganizationDetailApi(APIView):
    required_scopes = ACCOUNT_SCOPES

    @extend_schema(responses={200: OrganizationOut, **error_responses(401, 403, 404)})
    def get(self, request, organization_id):
        return Response(OrganizationOut(selectors.organization_get(user=request.user, organization_id=organization_id)).data)

    @extend_schema(request=OrganizationUpdateIn, responses={200: OrganizationOut, **error_responses(400, 401, 403, 404)})
    def patch(self, request, organization_id):
        organization = selectors.organization_get(user=request.user, organization_id=organization_id)
        organization = services.organization_update(
            actor=request.user, organization=organization, **validated_body(OrganizationUpdateIn, request, partial=True)
        )
        return Response(OrganizationOut(organization).data)


class OrganizationLeaveApi(APIView):
    required_scopes = ACCOUNT_SCOPES

    @extend_schema(request=None, responses={204: None, **error_responses(400, 401, 403, 404)})
    def post(self, request, organization_id):
        organization = selectors.organization_get(user=request.user, organization_id=organization_id)
        services.organization_leave(user=request.user, organization=organization)
        return Response(status=status.HTTP_204_NO_CONTENT)


class MemberListApi(APIView):
    required_scopes = ACCOUNT_SCOPES
    pagination_class = api_settings.DEFAULT_PAGINATION_CLASS

    @extend_schema(responses={200: MembershipOut(many=True), **error_responses(401, 403, 404)})
    def get(self, request, organization_id):
        organization = selectors.organization_get(user=request.user, organization_id=organization_id)
        return _page(self, request, selectors.membership_list(organization=organization), MembershipOut)


class MemberDetailApi(APIView):
    required_scopes = ACCOUNT_SCOPES

    def _membership(self, request, organization_id, membership_id):
        organization = selectors.organization_get(user=request.user, organization_id=organization_id)
        return selectors.membership_get(organization=organization, membership_id=membership_id)

    @extend_schema(request=MembershipRoleIn, responses={200: MembershipOut, **error_responses(400, 401, 403, 404)})
    def patch(self, request, organization_id, membership_id):
        membership = self._membership(request, organization_id, membership_id)
        membership = services.membership_role_change(actor=request.user, membership=membership, **validated_body(MembershipRoleIn, request))
        return Response(MembershipOut(membership).data)

    @extend_schema(responses={204: None, **error_responses(400, 401, 403, 404)})
    def delete(self, request, organization_id, membership_id):
        services.membership_remove(actor=request.user, membership=self._membership(request, organization_id, membership_id))
        return Response(status=status.HTTP_204_NO_CONTENT)


class InvitationListApi(APIView):
    required_scopes = ACCOUNT_SCOPES
    pagination_class = api_settings.DEFAULT_PAGINATION_CLASS

    @extend_schema(responses={200: InvitationOut(many=True), **error_responses(401, 403, 404)}, description="Owners and admins only.")
    def get(self, request, organization_id):
        organization = selectors.organization_get_administered(user=request.user, organization_id=organization_id)
        return _page(self, request, selectors.invitation_list(organization=organization), InvitationOut)

    @extend_schema(
        request=InvitationCreateIn,
        responses={201: InvitationOut, **error_responses(400, 401, 403, 404)},
        description="Emails the invitation link; the token is only ever in that email.",
    )
    def post(self, request, organization_id):
        organization = selectors.organization_get(user=request.user, organization_id=organization_id)
        invitation, _token = services.invitation_create(
            actor=request.user, organization=organization, base_url=site_url(request), **validated_body(InvitationCreateIn, request)
        )
        return Response(InvitationOut(invitation).data, status=status.HTTP_201_CREATED)


class InvitationDetailApi(APIView):
    required_scopes = ACCOUNT_SCOPES

    @extend_schema(responses={204: None, **error_responses(401, 403, 404)}, description="Withdraws the invitation; its link stops working.")
    def delete(self, request, organization_id, invitation_id):
        organization = selectors.organization_get(user=request.user, organization_id=organization_id)
        services.invitation_revoke(
            actor=request.user, invitation=selectors.invitation_get(organization=organization, invitation_id=invitation_id)
        )
        return Response(status=status.HTTP_204_NO_CONTENT)


class InvitationAcceptApi(APIView):
    required_scopes = ACCOUNT_SCOPES

    @extend_schema(
        request=InvitationAcceptIn,
        responses={201: OrganizationOut, **error_responses(400, 401, 403, 404)},
        description="Join the organization an invitation addressed to your email is for.",
    )
    def post(self, request):
        membership = services.invitation_accept(user=request.user, **validated_body(InvitationAcceptIn, request))
        organization = selectors.organization_get(user=request.user, organization_id=membership.organization_id)
        return Response(OrganizationOut(organization).data, status=status.HTTP_201_CREATED)


# --- API keys ------------------------------------------------------------------------


class ApiKeyListApi(APIView):
    required_scopes = ACCOUNT_SCOPES
    pagination_class = api_settings.DEFAULT_PAGINATION_CLASS

    @extend_schema(responses={200: ApiKeyOut(many=True), **error_responses(401, 403)})
    def get(self, request):
        return _page(self, request, selectors.api_key_list(user=request.user), ApiKeyOut)

    @extend_schema(
        request=ApiKeyCreateIn,
        responses={201: ApiKeyCreatedOut, **error_responses(400, 401, 403)},
        description="The response's `key` is the secret, shown this once only.",
    )
    def post(self, request):
        data = validated_body(ApiKeyCreateIn, request)
        by_key = request.auth if isinstance(request.auth, ApiKey) else None
        if by_key is not None and not set(data["scopes"]) <= set(by_key.scopes):
            # Otherwise a narrow key could mint itself a wider one.
            raise NotAllowed("An API key can only create keys with scopes it has itself.")
        parent_ends = by_key.expires_at if by_key is not None else None
        if parent_ends is not None and (data.get("expires_at") is None or data["expires_at"] > parent_ends):
            # Otherwise a short-lived key, leaked, could mint itself one that never expires.
            raise NotAllowed(f"An API key that expires can only create keys that expire no later: by {parent_ends.isoformat()}.")
        try:
            api_key, secret = services.api_key_create(user=request.user, by_key=by_key, **data)
        except services.ApiKeyRejected as exc:  # revoked since the request signed in: the answer a revoked key gets
            raise exceptions.AuthenticationFailed(str(exc)) from exc
        api_key.key = secret
        return Response(ApiKeyCreatedOut(api_key).data, status=status.HTTP_201_CREATED)


class ApiKeyDetailApi(APIView):
    required_scopes = ACCOUNT_SCOPES

    @extend_schema(responses={200: ApiKeyOut, **error_responses(401, 403, 404)})
    def get(self, request, api_key_id):
        return Response(ApiKeyOut(selectors.api_key_get(user=request.user, api_key_id=api_key_id)).data)

    @extend_schema(responses={204: None, **error_responses(401, 403, 404)}, description="Revokes the key; it stays listed as revoked.")
    def delete(self, request, api_key_id):
        services.api_key_revoke(user=request.user, api_key=selectors.api_key_get(user=request.user, api_key_id=api_key_id))
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- Provider credentials ---------------------------------------------------------------


@rls.own_transactions("POST")  # a base URL's host is looked up (config.outbound), perhaps slowly: no transaction held across it
class ProviderCredentialListApi(APIView):
    required_scopes = ACCOUNT_SCOPES
    pagination_class = api_settings.DEFAULT_PAGINATION_CLASS

    @extend_schema(responses={200: ProviderCredentialOut(many=True), **error_responses(401, 403)})
    def get(self, request):
        return _page(self, request, selectors.provider_credential_list(user=request.user), ProviderCredentialOut)

    @extend_schema(
        request=ProviderCredentialIn,
        responses={201: ProviderCredentialOut, 200: ProviderCredentialOut, **error_responses(400, 401, 403)},
        description="Adds the credential for a provider (201) or replaces the existing one (200). "
        "The key is stored encrypted and only its mask is ever shown.",
    )
    def post(self, request):
        data = validated_body(ProviderCredentialIn, request)
        with rls.atomic_as(request.user.pk):
            replacing = selectors.provider_credential_exists(user=request.user, provider=data["provider"])
        credential = services.provider_credential_set(user=request.user, **data)
        return Response(ProviderCredentialOut(credential).data, status=status.HTTP_200_OK if replacing else status.HTTP_201_CREATED)


class ProviderCredentialDetailApi(APIView):
    required_scopes = ACCOUNT_SCOPES

    @extend_schema(responses={200: ProviderCredentialOut, **error_responses(401, 403, 404)})
    def get(self, request, credential_id):
        return Response(ProviderCredentialOut(selectors.provider_credential_get(user=request.user, credential_id=credential_id)).data)

    @extend_schema(responses={204: None, **error_responses(401, 403, 404)})
    def delete(self, request, credential_id):
        credential = selectors.provider_credential_get(user=request.user, credential_id=credential_id)
        services.provider_credential_delete(user=request.user, credential=credential)
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- Sessions -------------------------------------------------------------------------------


class UserSessionListApi(APIView):
    required_scopes = ACCOUNT_SCOPES
    pagination_class = api_settings.DEFAULT_PAGINATION_CLASS

    @extend_schema(
        responses={200: UserSessionOut(many=True), **error_responses(401, 403)},
        description="Your signed-in browser sessions that have not ended; `current` marks this request's.",
    )
    def get(self, request):
        # Only a request signed in by its session cookie has a current session.
        digest = session_digest(request.session) if request.auth is None and hasattr(request, "session") else ""
        return _page(self, request, selectors.user_session_list(user=request.user), UserSessionOut, {"session_key_digest": digest})


class UserSessionDetailApi(APIView):
    required_scopes = ACCOUNT_SCOPES

    @extend_schema(responses={204: None, **error_responses(401, 403, 404)}, description="Signs that browser out at once.")
    def delete(self, request, user_session_id):
        user_session = selectors.user_session_get(user=request.user, user_session_id=user_session_id)
        services.user_session_revoke(user=request.user, user_session=user_session)
        return Response(status=status.HTTP_204_NO_CONTENT)
