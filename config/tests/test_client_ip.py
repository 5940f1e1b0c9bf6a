"""client_ip: the address a request came from, behind a known number of trusted proxies."""

import pytest
from django.test import RequestFactory

from config.http import client_ip


def _request(remote="10.0.0.1", forwarded=None):
    meta = {"REMOTE_ADDR": remote}
    if forwarded is not None:
        meta["HTTP_X_FORWARDED_FOR"] = forwarded
    return RequestFactory().get("/", **meta)


def test_without_trusted_proxies_the_header_is_ignored(settings):
    settings.TRUSTED_PROXY_COUNT = 0
    assert client_ip(_request("10.0.0.1", "203.0.113.9")) == "10.0.0.1"


@pytest.mark.parametrize(
    ("count", "forwarded", "expected"),
    [
        (1, "203.0.113.9", "203.0.113.9"),
        # A client may send its own header; the trusted proxy appends the real address.
        (1, "6.6.6.6, 203.0.113.9", "203.0.113.9"),
        (2, "6.6.6.6, 203.0.113.9, 198.51.100.7", "203.0.113.9"),
        (1, " 2001:db8::1 ", "2001:db8::1"),
    ],
)
def test_the_nth_address_from_the_right_is_the_client(settings, count, forwarded, expected):
    settings.TRUSTED_PROXY_COUNT = count
    assert client_ip(_request("10.0.0.1", forwarded)) == expected


@pytest.mark.parametrize("forwarded", [None, "", "not-an-ip", "203.0.113.9, ", "999.1.1.1", "203.0.113.9"])
def test_missing_short_or_malformed_header_falls_back_to_the_peer(settings, forwarded):
    settings.TRUSTED_PROXY_COUNT = 2  # "203.0.113.9" alone is one address short of two proxies
    assert client_ip(_request("10.0.0.1", forwarded)) == "10.0.0.1"


def test_an_invalid_peer_address_is_none(settings):
    settings.TRUSTED_PROXY_COUNT = 0
    assert client_ip(_request("")) is None
    assert client_ip(_request("garbage")) is None
    assert client_ip(None) is None


@pytest.mark.django_db(transaction=True)
def test_sign_in_throttling_counts_the_forwarded_address(settings, client):
    """Failures from one client behind the proxy lock that client, not everyone behind it."""
    from accounts.tests.factories import PASSWORD, make_user

    settings.TRUSTED_PROXY_COUNT = 1
    make_user(email="shared@example.com")
    for _ in range(5):
        client.post(
            "/accounts/login/", {"username": "shared@example.com", "password": "wrong-password-1"}, HTTP_X_FORWARDED_FOR="203.0.113.9"
        )

    refused = client.post("/accounts/login/", {"username": "shared@example.com", "password": PASSWORD}, HTTP_X_FORWARDED_FOR="203.0.113.9")
    assert refused.status_code == 200 and "Too many failed sign-in attempts" in refused.content.decode()
    allowed = client.post("/accounts/login/", {"username": "shared@example.com", "password": PASSWORD}, HTTP_X_FORWARDED_FOR="198.51.100.7")
    assert allowed.status_code == 302
