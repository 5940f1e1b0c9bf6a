"""The one outbound network path for addresses users can set (a provider's base URL).

Checked at connect time, on every connection (redirects too): the host is resolved once,
every address it resolves to must be public, and the connection goes to the checked
address, so a second lookup cannot swap in another (DNS rebinding). Loopback, private,
link-local (169.254.169.254, the cloud metadata service), shared, multicast, reserved and
unspecified addresses are refused, also as IPv4-mapped IPv6 or numeric forms such as
2130706433, which the resolver turns into the same address. Staff allow a host by name in
`OUTBOUND_ALLOWED_HOSTS` (a self-hosted model server on the private network).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

import httpcore2
from django.conf import settings
from httpcore2._backends.auto import AutoBackend


class AddressRefused(httpcore2.ConnectError):
    """A connection to a non-public address (an httpcore connect error, so SDKs report it as one)."""


def address_refusal(address: str) -> str | None:
    """Why this IP may not be reached, or None when it is a public address."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if not ip.is_global or ip.is_multicast:
        return f"{address} is not a public address (loopback, private, link-local or reserved)"
    return None


def base_url_refusal(url: str) -> str | None:
    """Why a base URL someone sets cannot be used, said when it is saved; None when it may be.
    A host that resolves now to a non-public address is refused; one that does not resolve
    yet is let through (connect time checks again, on every connection: GuardedBackend)."""
    host = urlsplit(url).hostname or ""
    if not host:
        return "The base URL needs a host, such as https://llm.example.com/v1."
    if host_allowed(host):
        return None
    try:
        addresses = [info[4][0] for info in socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)]
    except (OSError, UnicodeError):
        return None
    refusals = [r for r in map(address_refusal, addresses) if r]
    if refusals:
        return f"The base URL's host {host} is not reachable from Confab: {refusals[0]}. Ask staff to allow it if it is your own server."
    return None


def host_allowed(host: str) -> bool:
    return host.strip("[]").lower() in {h.lower() for h in getattr(settings, "OUTBOUND_ALLOWED_HOSTS", ())}


class GuardedBackend(AutoBackend):
    async def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        if not host_allowed(host):
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
            addresses = [info[4][0] for info in infos]
            refusals = [r for r in map(address_refusal, addresses) if r]
            if not addresses or refusals:
                raise AddressRefused(f"Refused to connect to {host}: {refusals[0] if refusals else 'no address'}.")
            host = addresses[0]  # connect to the address just checked, not to a new lookup
        return await super().connect_tcp(host, port, timeout=timeout, local_address=local_address, socket_options=socket_options)
