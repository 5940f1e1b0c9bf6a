"""Secrets at rest: MultiFernet over FIELD_ENCRYPTION_KEYS (newest first).

Each value gets its own random IV (Fernet). A value is decrypted only where it is
used (a provider call), never to show it: pages, API and admin show `secret_mask()`.
"""

import hashlib
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


class SecretUndecryptable(Exception):
    """A stored secret that none of the configured keys opens."""


def keys_load(raw_keys) -> MultiFernet:
    """Parse the configured keys or fail with a sentence saying what is wrong."""
    keys = [k.strip() for k in (raw_keys or []) if k and k.strip()]
    if not keys:
        raise ImproperlyConfigured(
            "FIELD_ENCRYPTION_KEYS is empty: set it to one or more Fernet keys, newest first "
            "(make one with: python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())')."
        )
    fernets = []
    for position, key in enumerate(keys, start=1):
        try:
            fernets.append(Fernet(key))
        except (ValueError, TypeError) as exc:
            raise ImproperlyConfigured(
                f"FIELD_ENCRYPTION_KEYS key #{position} is not a valid Fernet key (32 url-safe base64 bytes)."
            ) from exc
    return MultiFernet(fernets)


@lru_cache(maxsize=4)
def _multifernet(keys: tuple) -> MultiFernet:
    return keys_load(keys)


def _current() -> MultiFernet:
    return _multifernet(tuple(settings.FIELD_ENCRYPTION_KEYS))


def secret_encrypt(plaintext: str) -> str:
    return _current().encrypt(plaintext.encode()).decode()


def secret_decrypt(token: str) -> str:
    try:
        return _current().decrypt(token.encode()).decode()
    except InvalidToken as exc:
        raise SecretUndecryptable("A stored secret cannot be decrypted with FIELD_ENCRYPTION_KEYS: was a key removed?") from exc


def secret_rotate(token: str) -> str:
    """The same secret under the newest key (a value already under it is re-encrypted too)."""
    try:
        return _current().rotate(token.encode()).decode()
    except InvalidToken as exc:
        raise SecretUndecryptable("A stored secret cannot be decrypted with FIELD_ENCRYPTION_KEYS: was a key removed?") from exc


def secret_mask(plaintext: str) -> str:
    """`sk-…f3a9`: enough to recognise a key, never enough to use it."""
    plaintext = plaintext.strip()
    if len(plaintext) <= 8:
        return "…" + plaintext[-2:] if plaintext else ""
    head = plaintext[:3] if plaintext[:3].isascii() else ""
    return f"{head}…{plaintext[-4:]}"


def token_digest(token: str) -> str:
    """The SHA-256 hex digest under which a bearer token (API key, invitation, session) is stored."""
    return hashlib.sha256(token.encode()).hexdigest()
