"""Account pages (/accounts/...) and settings pages (/settings/...).

Each view parses input, calls one service and renders. Reads go through selectors under
the request's row-level security context, so another tenant's id is a 404. A service's
refusal lands on the form field it names, with the submitted input kept.
"""

from accounts.views.auth import (  # noqa: F401
    LoginView,
    PasswordResetCompleteView,
    PasswordResetConfirmView,
    PasswordResetDoneView,
    PasswordResetView,
    invitation,
    signup,
    verify_email,
    verify_email_resend,
)
from accounts.views.organizations import (  # noqa: F401
    invitation_create,
    invitation_revoke,
    membership_remove,
    membership_role,
    organization,
    organization_create,
    organization_leave,
    organization_update,
)
from accounts.views.settings import (  # noqa: F401
    api_key_revoke,
    api_keys,
    credential_delete,
    credentials,
    preferences,
    profile,
    session_revoke,
    sessions,
    settings_index,
)
