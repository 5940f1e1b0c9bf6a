"""Every page a signed-in member can reach by following links from the home page answers without
an error: a crawl over make run's demo data plus a conversation, following same-site GET links
(not sign-out, downloads or other actions that a GET should not be used for)."""

import re
from collections import deque
from urllib.parse import urldefrag, urlsplit

import pytest

from chat import services, sharing
from config.tests.demo import demo_member

pytestmark = pytest.mark.django_db(transaction=True)
LINK = re.compile(r'href="([^"]+)"')
SKIP = ("/accounts/logout", "/static/", "/admin/", "/s/", "/chat/exports/")
MAX_PAGES = 300


def _crawl(client, start: str = "/") -> tuple[dict[str, int], set[str]]:
    seen, queue, bad = {start}, deque([start]), {}
    while queue and len(seen) <= MAX_PAGES:
        path = queue.popleft()
        response = client.get(path)
        if response.status_code >= 400:
            bad[path] = response.status_code
        if response.status_code in (301, 302):
            found = [response["Location"]]
        elif "text/html" in response.get("Content-Type", ""):
            found = LINK.findall(response.content.decode())
        else:
            found = []
        for link in found:
            link = urldefrag(link.replace("&amp;", "&"))[0]
            parts = urlsplit(link)
            if parts.scheme or parts.netloc or not link.startswith("/") or link.startswith(SKIP):
                continue
            if link not in seen:
                seen.add(link)
                queue.append(link)
    return bad, seen


def test_every_page_a_member_can_reach_answers_without_an_error(client):
    demo = demo_member()
    reply = services.message_send(user=demo, content="hello crawler")
    sharing.share_link_create(user=demo, conversation=reply.conversation)
    client.force_login(demo)
    bad, seen = _crawl(client)
    assert bad == {}
    # It went everywhere the navigation leads (19 pages today), the conversation's own pages too.
    areas = {"/chat/", "/chat/personas/", "/chat/porting/", "/chat/shares/", "/usage/", "/billing/", "/settings/api-keys/"}
    assert areas <= seen and f"/chat/{reply.conversation.pk}/shares/" in seen


def test_every_page_a_visitor_can_reach_signed_out_answers_without_an_error(client):
    bad, seen = _crawl(client)
    assert bad == {}
    assert "/accounts/login/" in {urlsplit(link).path for link in seen}
