"""The web server's access log keeps no live token: a password reset, email verification,
invitation, share or export link carries its token in the path, and a log line that holds it
hands the account (or the conversation) to whoever reads the logs. uvicorn writes one line a
request through the `uvicorn.access` logger (gunicorn's `--access-logfile` handlers, under the
uvicorn worker); this filter masks the token's segment before any handler sees it."""

import logging
import re

# The routes whose path holds a token (accounts/urls.py, chat/urls.py, chat/share_urls.py).
TOKEN_IN_PATH = re.compile(r"^(/accounts/password-reset/[^/?]+/|/accounts/verify-email/|/accounts/invitations/|/s/|/chat/exports/)[^/?]+")
MASK = "[token]"


class TokensMasked(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        # uvicorn's format: '%s - "%s %s HTTP/%s" %d' (client, method, path with query, version, status).
        if isinstance(args, tuple) and len(args) == 5 and isinstance(args[2], str):
            masked = TOKEN_IN_PATH.sub(rf"\1{MASK}", args[2])
            if masked != args[2]:
                record.args = (args[0], args[1], masked, args[3], args[4])
        return True


def access_log_masked() -> None:
    """Once per process (config.asgi): the filter on the logger, so every handler gets masked lines."""
    logger = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, TokensMasked) for f in logger.filters):
        logger.addFilter(TokensMasked())
