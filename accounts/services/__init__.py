"""Account writes, by sub-domain. Each runs in a transaction on the current alias and keeps the
row-level security context right (a new user's rows are written under their own id)."""

from accounts.services.api_keys import API_KEY_PATTERN, API_KEY_PREFIX, ApiKeyRejected, api_key_authenticate, api_key_create, api_key_revoke  # noqa: F401
from accounts.services.credentials import (  # noqa: F401
    PROVIDER_KEY_RULES,
    integration_connect,
    provider_credential_delete,
    provider_credential_set,
    provider_key_validate,
    secrets_rotate,
)
from accounts.services.organizations import (  # noqa: F401
    INVITATION_LIFETIME,
    auto_join_domain_problem,
    auto_join_domain_spelled,
    invitation_accept,
    invitation_create,
    invitation_for_token,
    invitation_revoke,
    membership_remove,
    membership_role_change,
    organization_create,
    organization_leave,
    organization_update,
)
from accounts.services.sessions import (  # noqa: F401
    ACTIVITY_WRITE_INTERVAL,
    caller_signed_in,
    user_session_end,
    user_session_revoke,
    user_session_start,
    user_session_touch,
    user_sessions_end_all,
)
from accounts.services.throttling import (  # noqa: F401
    api_request_throttle,
    login_attempt_take,
    login_failure_record,
    login_failures_clear,
    login_throttle_check,
    password_reset_throttle,
    verification_email_throttle,
)
from accounts.services.users import (  # noqa: F401
    EMAIL_VERIFICATION_MAX_AGE,
    email_verification_send,
    email_verification_token,
    email_verify,
    preferences_update,
    unproven_access_revoked,
    user_create,
    user_deactivate,
    user_update,
)
