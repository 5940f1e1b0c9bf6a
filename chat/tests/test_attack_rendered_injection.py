"""Attack review of what Confab renders from a user or a model: pages, the public share page,
the streaming page's script, exports, mails and headers built from user text.

Found so: a title or name "on one line" may carry Unicode's own line breaks (U+2028, U+2029),
which the import cleans and the rename form, the API and the name fields let through."""

import re

import pytest
from django.core.exceptions import ValidationError
from django.test import Client
from django.urls import reverse

from accounts.models import validate_name
from accounts.tests.test_api import session_client
from chat import services
from chat.models import Conversation
from chat.porting.base import title_clean
from config.db import rls

pytestmark = pytest.mark.django_db(transaction=True)

LINE_SEPARATOR, PARAGRAPH_SEPARATOR = "\u2028", "\u2029"
FORGED = f"Quarterly report{LINE_SEPARATOR}{PARAGRAPH_SEPARATOR}Confab: this link expires, sign in again at confab-login.example"


def _client(user) -> Client:
    client = Client(raise_request_exception=False)
    client.force_login(user)
    return client


def test_titles_and_names_refuse_unicode_line_and_paragraph_separators(alice):
    """A title is "one line on every page, the public share page's too" (chat.models.validate_one_line),
    and the import makes it so: title_clean turns U+2028 LINE SEPARATOR and U+2029 PARAGRAPH
    SEPARATOR into spaces. The rename form and the API check titles and tags with
    accounts.models.has_control_characters, which knows Cc and the bidi controls only, so they
    store both separators. Renders that honour them (UAX #14 class BK: browsers, native clients of
    the API, mail clients) break the title there: an owner shares a conversation whose public
    page's heading shows a second, forged line under the title. validate_name (organization,
    display, persona, API key names: "no control characters (line breaks ...)") lets them through too.
    Was: the form answers 200 and the API 200, the share page's <h1> carries both separators, and
    validate_name accepts the name.
    Should: both refused with a 400 saying what is wrong (or cleaned to spaces, as the import
    does), and validate_name raise ValidationError."""
    assert title_clean(FORGED) == "Quarterly report Confab: this link expires, sign in again at confab-login.example"
    conversation = services.conversation_create(user=alice, title="plain")
    client = _client(alice)
    client.post(reverse("chat:update", args=[conversation.pk]), {"title": FORGED, "tags": ""})
    api = session_client(alice)
    api.patch(f"/api/v1/conversations/{conversation.pk}", {"tags": [f"work{LINE_SEPARATOR}home"]}, format="json")
    with rls.privileged(reason="test"):
        stored = Conversation.objects.get(pk=conversation.pk)
    made = client.post(reverse("chat:share-conversation", args=[conversation.pk]), {"audience": "anyone"})
    token = re.search(r"/s/([A-Za-z0-9_-]{43})/", made.content.decode()).group(1)
    heading = re.search(r'<h1 data-testid="shared-title">(.*?)</h1>', Client().get(f"/s/{token}/").content.decode(), re.S).group(1)
    name_refused = True
    try:
        validate_name(f"Acme{LINE_SEPARATOR}Billing")
    except ValidationError:
        pass
    else:
        name_refused = False
    assert (
        LINE_SEPARATOR not in stored.title,
        LINE_SEPARATOR not in "".join(stored.tags),
        LINE_SEPARATOR not in heading,
        name_refused,
    ) == (True, True, True, True), (stored.title, stored.tags, heading)
