"""Navigation only links to pages that exist: every link in the header, on the home page
and on the 404 page resolves to a view."""

import re

import pytest
from django.urls import Resolver404, resolve

from accounts.tests.factories import make_user

pytestmark = pytest.mark.django_db(transaction=True)


def _header_links(html: str) -> list[str]:
    header = re.search(r'<header class="site-header">(.*?)</header>', html, re.S).group(1)
    return re.findall(r'href="([^"#]+)"', header)


def _page_links(html: str) -> list[str]:
    return [link for link in re.findall(r'href="(/[^"#]*)"', html) if not link.startswith("/static/")]


def _dead(links: list[str]) -> list[str]:
    dead = []
    for link in links:
        try:
            resolve(link.split("?")[0])
        except Resolver404:
            dead.append(link)
    return dead


@pytest.mark.parametrize("role", ["member", "staff"])
def test_every_header_link_of_a_signed_in_page_resolves(client, role):
    client.force_login(make_user(role=role))
    links = _header_links(client.get("/settings/profile/").content.decode())
    assert "/usage/" in links and "/settings/" in links
    assert _dead(links) == []
    assert _dead(_page_links(client.get("/").content.decode())) == []
    assert _dead(_page_links(client.get("/no-such-page/").content.decode())) == []


def test_every_header_link_of_a_signed_out_page_resolves(client):
    links = _header_links(client.get("/accounts/login/").content.decode())
    assert "/accounts/signup/" in links
    assert _dead(links) == []
