from django.urls import path

from accounts import api

app_name = "accounts-api"

urlpatterns = [
    path("me", api.MeApi.as_view(), name="me"),
    path("preferences", api.PreferencesApi.as_view(), name="preferences"),
    path("organizations", api.OrganizationListApi.as_view(), name="organizations"),
    path("organizations/<uuid:organization_id>", api.OrganizationDetailApi.as_view(), name="organization"),
    path("organizations/<uuid:organization_id>/leave", api.OrganizationLeaveApi.as_view(), name="organization-leave"),
    path("organizations/<uuid:organization_id>/members", api.MemberListApi.as_view(), name="members"),
    path("organizations/<uuid:organization_id>/members/<uuid:membership_id>", api.MemberDetailApi.as_view(), name="member"),
    path("organizations/<uuid:organization_id>/invitations", api.InvitationListApi.as_view(), name="invitations"),
    path("organizations/<uuid:organization_id>/invitations/<uuid:invitation_id>", api.InvitationDetailApi.as_view(), name="invitation"),
    path("invitations/accept", api.InvitationAcceptApi.as_view(), name="invitation-accept"),
    path("api-keys", api.ApiKeyListApi.as_view(), name="api-keys"),
    path("api-keys/<uuid:api_key_id>", api.ApiKeyDetailApi.as_view(), name="api-key"),
    path("provider-credentials", api.ProviderCredentialListApi.as_view(), name="provider-credentials"),
    path("provider-credentials/<uuid:credential_id>", api.ProviderCredentialDetailApi.as_view(), name="provider-credential"),
    path("sessions", api.UserSessionListApi.as_view(), name="sessions"),
    path("sessions/<uuid:user_session_id>", api.UserSessionDetailApi.as_view(), name="session"),
]
