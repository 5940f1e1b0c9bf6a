"""The client's address, as one function for every reader (throttles, sessions, audit)."""

from __future__ import annotations

import ipaddress

from django.conf import settings


def _valid_ip(value: str | None) -> str | None:
    """The address, written one way: an IPv4 client seen through a dual-stack socket
    (::ffff:a.b.c.d) is that IPv4 address, not one of the IPv6 /64 all such clients share."""
    try:
        address = ipaddress.ip_address((value or "").strip())
    except ValueError:
        return None
    return str(getattr(address, "ipv4_mapped", None) or address)


def client_ip(request) -> str | None:
    """The address the request came from: with N trusted proxies in front (TRUSTED_PROXY_COUNT),
    the Nth X-Forwarded-For address from the right; REMOTE_ADDR when there are none or the
    header is missing, short or malformed. None when no valid address is known."""
    if request is None:
        return None
    peer = _valid_ip(request.META.get("REMOTE_ADDR"))
    count = settings.TRUSTED_PROXY_COUNT
    if count <= 0:
        return peer
    # Entries left of the Nth from the right were written by the client and prove nothing.
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")
    if len(forwarded) < count:
        return peer
    trusted = [_valid_ip(entry) for entry in forwarded[-count:]]
    return trusted[0] if all(trusted) else peer


def site_url(request) -> str:
    """https://host (no trailing slash) for links that leave the site, such as emails: SITE_URL
    when set, never the Host the request came with (which picked where a reset link pointed)."""
    return settings.SITE_URL.rstrip("/") or request.build_absolute_uri("/")[:-1]
