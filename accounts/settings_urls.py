"""/settings/...: the signed-in user's account pages."""

from django.urls import path

from accounts import views

app_name = "settings"

urlpatterns = [
    path("", views.settings_index, name="index"),
    path("profile/", views.profile, name="profile"),
    path("preferences/", views.preferences, name="preferences"),
    path("credentials/", views.credentials, name="credentials"),
    path("credentials/<uuid:credential_id>/delete/", views.credential_delete, name="credential_delete"),
    path("api-keys/", views.api_keys, name="api_keys"),
    path("api-keys/<uuid:api_key_id>/revoke/", views.api_key_revoke, name="api_key_revoke"),
    path("sessions/", views.sessions, name="sessions"),
    path("sessions/<uuid:session_id>/revoke/", views.session_revoke, name="session_revoke"),
    path("organization/", views.organization, name="organization"),
    path("organization/new/", views.organization_create, name="organization_create"),
    path("organization/<uuid:organization_id>/", views.organization_update, name="organization_update"),
    path("organization/<uuid:organization_id>/leave/", views.organization_leave, name="organization_leave"),
    path("organization/<uuid:organization_id>/invitations/", views.invitation_create, name="invitation_create"),
    path("organization/<uuid:organization_id>/invitations/<uuid:invitation_id>/revoke/", views.invitation_revoke, name="invitation_revoke"),
    path("organization/<uuid:organization_id>/members/<uuid:membership_id>/role/", views.membership_role, name="membership_role"),
    path("organization/<uuid:organization_id>/members/<uuid:membership_id>/remove/", views.membership_remove, name="membership_remove"),
]
