"""The one outbound network path for addresses users can set (a provider's base URL).

Checked at connect time, on every connection (redirects too): the host is resolved once,
every address it resolves to must be public, and the connection goes to the checked
address, so a second lookup cannot swap in another (DNS rebinding). Loopback, private,
link-local (169.254.169.254, the cloud metadata service), shared, multicast, reserved and
unspecified addresses are refused, also as numeric forms such as 2130706433, which the
resolver turns into the same address, and inside an IPv6 address that carries an IPv4 one
(mapped, translated, compatible, NAT64, 6to4, Teredo): on a network with NAT64,
64:ff9b::a9fe:a9fe reaches 169.254.169.254. Staff allow a host by name in
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


# IPv6 ranges whose last 32 bits are an IPv4 address the packet goes on to (RFC 2765, 4291, 6052).
_CARRYING_IPV4 = [ipaddress.ip_network(n) for n in ("::ffff:0:0:0/96", "::/96", "64:ff9b::/96")]


def _carried_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if any(ip in network for network in _CARRYING_IPV4):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.sixtofour or (ip.teredo[1] if ip.teredo else None)


def address_refusal(address: str) -> str | None:
    """Why this IP may not be reached, or None when it is a public address. An IPv6 address that
    carries an IPv4 one is judged by that one; the rest of ::/8 (64:ff9b:1::/48, local NAT64,
    included) is reserved, so refused."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        ip = _carried_ipv4(ip) or ip
    if not ip.is_global or ip.is_multicast or ip.is_reserved or getattr(ip, "is_site_local", False):  # fec0::/10: Python calls it global
        return f"{address} is not a public address (loopback, private, link-local or reserved)"
    return None


def base_url_refusal(url: str) -> str | None:
    """Why a base URL someone sets cannot be used, said when it is saved; None when it may be.
    A host that resolves now to a non-public address is refused; one that does not resolve
    yet is let through (connect time checks again, on every connection: GuardedBackend)."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https"):
        return "The base URL must start with http:// or https://."
    host = parts.hostname or ""
    if not host:
        return "The base URL needs a host, such as https://llm.example.com/v1."
    try:
        port = parts.port  # ValueError: not a number, or out of 0-65535
    except ValueError:
        port = 0
    if port == 0:
        return "The base URL's port must be a number from 1 to 65535."
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
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except (OSError, UnicodeError) as exc:  # as AutoBackend reports a name that does not resolve
                raise httpcore2.ConnectError(f"Could not resolve {host}: {exc}") from exc
            addresses = [info[4][0] for info in infos]
            if not addresses:
                raise httpcore2.ConnectError(f"Could not resolve {host}: no address.")
            refusals = [r for r in map(address_refusal, addresses) if r]
            if refusals:
                raise AddressRefused(f"Refused to connect to {host}: {refusals[0]}.")
            host = addresses[0]  # connect to the address just checked, not to a new lookup
        return await super().connect_tcp(host, port, timeout=timeout, local_address=local_address, socket_options=socket_options)
