"""The chat REST API under attack: PATCH and DELETE racing, JSON bodies in other charsets,
read-only fields, other tenants' and deleted ids, cursors, odd
filters, scopes. The tests above the last section failed on the code they were written
against; the last section holds what was probed and held. Races are ordered by events and
by PostgreSQL's own lock table (pg_locks), never by sleeping for luck."""

import base64
import io
import threading

import pytest
from django.db import connections

from accounts.tests.factories import make_user
from accounts.tests.test_api import key_client, session_client
from analytics.models import TokenUsage
from billing.tests.factories import organization_of
from chat import selectors, services, sharing
from chat.models import Conversation, Message, Persona, ShareLink
from config.db import rls
from config.tests.races import race_while_held

pytestmark = pytest.mark.django_db(transaction=True)
API = "/api/v1"
SCOPES = ("chat:read", "chat:write")


def _client(user, scopes=SCOPES):
    client = key_client(user, scopes=scopes)
    client.raise_request_exception = False
    return client


def _status_and_body(response):
    try:
        return response.status_code, response.json()
    except ValueError:
        return response.status_code, response.content[:300]


def _after_a_read_on(monkeypatch, owner, name: str, thread_name: str):
    """owner.<name>, on the thread `thread_name` only, stops after its read until `go` is set."""
    read, go = threading.Event(), threading.Event()
    real = getattr(owner, name)

    def held(*args, **kwargs):
        found = real(*args, **kwargs)
        if threading.current_thread().name == thread_name:
            read.set()
            assert go.wait(30)
        return found

    monkeypatch.setattr(owner, name, held)
    return read, go


def _on_a_thread(name: str, call, outcome: dict) -> threading.Thread:
    def run():
        try:
            outcome[name] = call()
        except Exception as exc:  # noqa: BLE001  surfaced by the test's assertion
            outcome[name] = repr(exc)
        finally:
            connections.close_all()

    thread = threading.Thread(target=run, name=name)
    thread.start()
    return thread


# --- A write racing a DELETE of its row ------------------------------------------------


@pytest.mark.parametrize("kind", ["conversation", "persona"])
def test_a_row_deleted_while_a_patch_to_it_is_under_way_is_a_404_not_a_500(alice, monkeypatch, kind):
    """PATCH /conversations/{id} (or /personas/{id}) reads the row (no lock), a DELETE of it
    commits, then the PATCH saves with update_fields: Django finds no row to update and raises
    DatabaseError ("Save with update_fields did not affect any rows."), a 500. It should be the
    404 the PATCH would have had a moment later."""
    client = _client(alice)
    if kind == "conversation":
        row = services.message_send(user=alice, content="hello").conversation
        model, selector, path, change = Conversation, "conversation_get", "conversations", {"title": "renamed"}
    else:
        row = services.persona_create(user=alice, name="Brief", system_prompt="Be brief.")
        model, selector, path, change = Persona, "persona_get", "personas", {"name": "Briefer"}
    read, go = _after_a_read_on(monkeypatch, selectors, selector, "patcher")
    url, outcome = f"{API}/{path}/{row.pk}", {}
    patcher = _on_a_thread("patcher", lambda: _status_and_body(client.patch(url, change, format="json")), outcome)
    assert read.wait(30)
    assert client.delete(url).status_code == 204
    go.set()
    patcher.join(30)
    assert outcome["patcher"][0] == 404, outcome
    with rls.privileged(reason="test"):
        assert not model.objects.filter(pk=row.pk).exists()


def test_a_share_link_revoked_while_its_conversation_is_deleted_is_a_204_or_404_not_a_500(alice, monkeypatch):
    """DELETE /shares/{id} reads the link, DELETE /conversations/{id} commits (its cascade deletes the
    link), then share_link_revoke saves with update_fields: DatabaseError, a 500. The link is gone
    either way: 204 or 404."""
    client = _client(alice)
    conversation = services.message_send(user=alice, content="hello").conversation
    link, _token = sharing.share_link_create(user=alice, conversation=conversation)
    read, go = _after_a_read_on(monkeypatch, sharing, "share_link_get", "revoker")
    outcome = {}
    revoker = _on_a_thread("revoker", lambda: _status_and_body(client.delete(f"{API}/shares/{link.pk}")), outcome)
    assert read.wait(30)
    assert client.delete(f"{API}/conversations/{conversation.pk}").status_code == 204
    go.set()
    revoker.join(30)
    assert outcome["revoker"][0] in (204, 404), outcome
    with rls.privileged(reason="test"):
        assert not ShareLink.objects.filter(pk=link.pk).exists()


# --- JSON bodies in another charset -----------------------------------------------------

DEEP = "[" * 10_000 + "]" * 10_000


def _deep_body(charset: str) -> bytes:
    if charset == "unicode_escape":  # the brackets arrive as \\u005b escapes, decoded only by the charset
        return ('{"content": "hi", "x": ' + "\\u005b" * 10_000 + "\\u005d" * 10_000 + "}").encode()
    return ('{"title": "\u2200", "content": "hi", "x": ' + DEEP + "}").encode(charset)


@pytest.mark.parametrize("charset", ["utf-16-le", "utf-16", "utf-32", "unicode_escape"])
@pytest.mark.parametrize("target", ["conversation", "messages"])
def test_a_json_body_nested_10000_deep_in_another_charset_is_a_400_not_a_500(alice, charset, target):
    """config/api/parsers.py counts brackets in the raw bytes, skipping what its byte regex takes for
    strings; DRF then decodes the body with the charset the Content-Type names (any text codec). In
    UTF-16/32 a character such as U+2200 (bytes 00 22) carries a '"' byte, so the regex opens a
    "string" that runs over the 10,000 brackets; with charset=unicode_escape the brackets are
    `\\u005b` escapes in the raw bytes. Either way the depth check passes, json.load raises
    RecursionError (not the ValueError DRF turns into a ParseError) and the API answers 500. It
    should be the 400 a UTF-8 body nested as deep gets (or a 415 for the charset)."""
    client = _client(alice)
    conversation = services.message_send(user=alice, content="hello").conversation
    url = f"{API}/conversations/{conversation.pk}" + ("/messages" if target == "messages" else "")
    send = client.post if target == "messages" else client.patch
    response = send(url, data=_deep_body(charset), content_type=f"application/json; charset={charset}")
    assert response.status_code in (400, 415), _status_and_body(response)
    assert set(response.json()) == {"message", "extra"}
    with rls.privileged(reason="test"):
        assert Message.objects.filter(conversation_id=conversation.pk).count() == 2  # nothing sent
        assert Conversation.objects.get(pk=conversation.pk).title == "hello"


def test_a_flat_utf16_message_is_not_refused_as_nested_too_deep(alice):
    """The other side of the same byte count: a flat UTF-16 body whose text has U+2200 then CJK
    characters of the U+5Bxx block (each with a '[' byte, 0x5B) is refused as "nested deeper than 64
    levels", though it nests two. It should be sent (or the charset refused as such, 415)."""
    client = _client(alice)
    conversation_id = client.post(f"{API}/conversations", {}, format="json").json()["id"]
    text = '{"content": "\u2200 ' + "\u5b40" * 100 + '"}'
    response = client.post(
        f"{API}/conversations/{conversation_id}/messages", data=text.encode("utf-16-le"), content_type="application/json; charset=utf-16-le"
    )
    assert response.status_code in (201, 415), _status_and_body(response)
    assert "nested deeper" not in response.json().get("message", "")


# --- Listing while chatting --------------------------------------------------------------


def test_a_tag_given_twice_is_stored_once(alice):
    """The API stored `["a", "a"]` as given; the conversation page's form keeps each tag once."""
    client = _client(alice)
    created = client.post(f"{API}/conversations", {"title": "t", "tags": ["a", "b", "a"]}, format="json")
    assert created.status_code == 201 and created.json()["tags"] == ["a", "b"], created.json()
    patched = client.patch(f"{API}/conversations/{created.json()['id']}", {"tags": ["c", "c"]}, format="json")
    assert patched.status_code == 200 and patched.json()["tags"] == ["c"], patched.json()


# --- What was probed and held ------------------------------------------------------------


def _snapshot(user) -> tuple:
    with rls.privileged(reason="test"):
        return (
            sorted(
                Conversation.objects.filter(user_id=user.pk).values_list(
                    "id", "title", "tags", "is_archived", "persona_id", "message_count"
                )
            ),
            Message.objects.filter(user_id=user.pk).count(),
            sorted(Persona.objects.filter(user_id=user.pk).values_list("id", "name", "usage_count")),
            sorted(ShareLink.objects.filter(user_id=user.pk).values_list("id", "revoked_at")),
            TokenUsage.objects.filter(user_id=user.pk).count(),
        )


def test_held_a_chat_read_key_changes_nothing_through_any_method_or_override(alice):
    writer = _client(alice)
    conversation = services.message_send(user=alice, content="hello").conversation
    persona = services.persona_create(user=alice, name="P", system_prompt="x")
    link, _ = sharing.share_link_create(user=alice, conversation=conversation)
    reader = _client(alice, scopes=("chat:read",))
    before = _snapshot(alice)
    c, p = f"{API}/conversations/{conversation.pk}", f"{API}/personas/{persona.pk}"
    writes = [
        ("post", f"{API}/conversations", {"title": "x"}),
        ("patch", c, {"title": "x", "is_archived": True}),
        ("put", c, {"title": "x"}),
        ("delete", c, None),
        ("post", f"{c}/messages", {"content": "x"}),
        ("post", f"{c}/messages?stream=true", {"content": "x"}),
        ("post", f"{API}/personas", {"name": "x", "system_prompt": "x"}),
        ("patch", p, {"name": "x"}),
        ("delete", p, None),
        ("post", f"{c}/shares", {}),
        ("delete", f"{API}/shares/{link.pk}", None),
        ("post", f"{API}/exports", {}),
        ("post", "/v1/chat/completions", {"model": "echo-1", "messages": [{"role": "user", "content": "x"}]}),
    ]
    overrides = [{}, {"HTTP_X_HTTP_METHOD_OVERRIDE": "GET"}, {"HTTP_X_HTTP_METHOD": "GET"}, {"HTTP_X_METHOD_OVERRIDE": "GET"}]
    for method, url, body in writes:
        for headers in overrides:
            response = getattr(reader, method)(url, body, format="json", **headers)
            assert response.status_code == 403, (method, url, headers, response.status_code)
    upload = io.BytesIO(b"{}")
    upload.name = "x.json"
    assert reader.post(f"{API}/imports", {"file": upload}, format="multipart").status_code == 403
    for url in (c, f"{c}/messages", p, f"{API}/conversations?_method=DELETE", f"{c}?_method=DELETE"):
        assert reader.head(url).status_code == 200
        assert reader.options(url).status_code == 200
        assert reader.get(url, HTTP_X_HTTP_METHOD_OVERRIDE="DELETE").status_code == 200
    assert _snapshot(alice) == before
    assert writer.patch(c, {"title": "mine"}, format="json").status_code == 200  # the same key with chat:write can


def test_held_read_only_fields_and_unexpected_keys_are_ignored(alice):
    client = _client(alice)
    bob = make_user(email="bob@example.com")
    forged = {
        "user_id": str(bob.pk),
        "user": str(bob.pk),
        "id": "5a82dda9-d58e-499a-82d1-ad31ae77b6f7",
        "message_count": 99,
        "total_tokens": 99,
        "total_cost": "99",
        "created_at": "2000-01-01T00:00:00Z",
        "imported_from": "ours",
        "usage_count": 77,
    }
    created = client.post(f"{API}/conversations", {"title": "mine", "is_archived": True, **forged}, format="json").json()
    assert (created["message_count"], created["total_tokens"], created["is_archived"]) == (0, 0, False)
    assert created["id"] != forged["id"] and created["created_at"] > "2001"
    patched = client.patch(f"{API}/conversations/{created['id']}", forged, format="json").json()
    assert (patched["message_count"], patched["total_tokens"], patched["total_cost"]) == (0, 0, "0.0000000000")
    sent = client.post(
        f"{API}/conversations/{created['id']}/messages",
        {"content": "hi", "role": "system", "input_tokens": 1000, "cost": "5", "status": "failed", "sequence": 0, "metadata": {"x": 1}},
        format="json",
    ).json()
    assert (sent["user_message"]["role"], sent["user_message"]["sequence"], sent["user_message"]["metadata"]) == ("user", 1, {})
    assert sent["message"]["status"] == "complete" and sent["message"]["input_tokens"] == 1
    persona = client.post(f"{API}/personas", {"name": "p", "system_prompt": "x", **forged}, format="json").json()
    assert persona["usage_count"] == 0 and persona["id"] != forged["id"]
    assert client.patch(f"{API}/personas/{persona['id']}", forged, format="json").json()["usage_count"] == 0
    with rls.privileged(reason="test"):
        assert not Conversation.objects.filter(user_id=bob.pk).exists() and not Persona.objects.filter(user_id=bob.pk).exists()
        conversation = Conversation.objects.get(pk=created["id"])
        assert conversation.imported_from == "" and conversation.message_count == Message.objects.filter(conversation=conversation).count()


def test_held_other_tenants_deleted_and_archived_ids_are_404_with_a_sentence(alice):
    client = _client(alice)
    bob = make_user(email="bob@example.com")
    bobs_org = organization_of(bob)
    bobs_persona = services.persona_create(user=bob, name="B", system_prompt="x")
    mine = services.message_send(user=alice, content="hello").conversation
    gone = services.persona_create(user=alice, name="Gone", system_prompt="x")
    gone_id = gone.pk
    services.persona_delete(user=alice, persona=gone)  # Django clears the instance's pk
    deleted = services.message_send(user=alice, content="bye").conversation
    deleted_id = deleted.pk
    services.conversation_delete(user=alice, conversation=deleted)
    c = f"{API}/conversations/{mine.pk}"
    for response in (
        client.post(f"{API}/conversations", {"organization_id": str(bobs_org.pk)}, format="json"),
        client.post(f"{API}/conversations", {"persona_id": str(bobs_persona.pk)}, format="json"),
        client.post(f"{API}/conversations", {"persona_id": str(gone_id)}, format="json"),
        client.patch(c, {"persona_id": str(gone_id)}, format="json"),
        client.patch(c, {"persona_id": str(bobs_persona.pk)}, format="json"),
        client.get(f"{API}/conversations/{deleted_id}/messages"),
        client.post(f"{API}/conversations/{deleted_id}/messages", {"content": "x"}, format="json"),
        client.patch(f"{API}/conversations/{deleted_id}", {"title": "x"}, format="json"),
        client.delete(f"{API}/conversations/{deleted_id}"),
        client.post(f"{API}/conversations/{deleted_id}/shares", {}, format="json"),
        client.patch(f"{API}/personas/{gone_id}", {"name": "x"}, format="json"),
    ):
        assert response.status_code == 404 and response.json()["message"], _status_and_body(response)
    assert client.get(f"{API}/conversations", {"organization_id": str(bobs_org.pk)}).json()["count"] == 0
    assert client.patch(c, {"is_archived": True}, format="json").status_code == 200
    assert client.post(f"{c}/messages", {"content": "to the archive"}, format="json").status_code == 201


def _cursor(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def test_held_cursors_tampered_or_foreign_never_500_and_pages_stay_whole_as_messages_arrive(alice):
    client = _client(alice)
    conversation = services.message_send(user=alice, content="one").conversation
    other = services.message_send(user=alice, content="other").conversation
    url = f"{API}/conversations/{conversation.pk}/messages"
    for cursor in ("xx", _cursor(b"p=\xff"), _cursor(b"p=%00"), _cursor(b"o=-1&p=1"), _cursor(b"r=x&p=1"), _cursor(b"p=")):
        response = client.get(url, {"cursor": cursor})
        assert (response.status_code, response.json()["message"]) == (404, "Invalid cursor"), cursor
    for cursor in (
        "%%%",
        _cursor(b"p=99999999999999999999999"),
        _cursor(b"p=-5"),
        _cursor(b"o=99999999999999999999&p=1"),
        _cursor(b"p=2147483648"),
    ):
        assert client.get(url, {"cursor": cursor}).status_code == 200, cursor
    for size in ("0", "-1", "abc", "1.5", "100000", "99999999999999999999999"):  # a 400 with a sentence (config/tests/test_api_contract.py)
        assert client.get(url, {"page_size": size}).status_code == 400, size
    first = client.get(url, {"page_size": 1}).json()
    foreign = client.get(first["next"].replace(str(conversation.pk), str(other.pk))).json()["results"]
    assert {m["conversation_id"] for m in foreign} <= {str(other.pk)}  # another conversation's cursor is only a position
    sequences = [m["sequence"] for m in first["results"]]
    next_url = first["next"]
    services.message_send(user=alice, content="two", conversation_id=conversation.pk)  # arrives between pages
    while next_url:
        page = client.get(next_url).json()
        sequences += [m["sequence"] for m in page["results"]]
        next_url = page["next"]
    assert sequences == [1, 2, 3, 4]


@pytest.mark.parametrize(
    "query",
    [
        "tag=a,b",
        "tag=%00",
        "tag=" + "é" * 40,
        "tag=" + "x" * 41,
        "tag=%E2%80%AE",
        "tag=%5B%5D",
        "archived=maybe",
        "archived=true&archived=false",
        "persona_id=xx",
        "persona_id=",
        "archived=",
        "q=%00",
        "q=" + "x" * 300,
        "q=%25",
        "page=0",
        "page=abc",
        "page=1e9999",
        "page=99999999999999999999999",
        "page_size=-5",
        "page_size=99999999999999999999999",
        "organization_id=zz",
    ],
)
def test_held_odd_filters_are_200_or_a_400_with_a_sentence(alice, query):
    client = _client(alice)
    services.message_send(user=alice, content="hello")
    response = client.get(f"{API}/conversations?{query}")
    assert response.status_code in (200, 400, 404), response.status_code
    if response.status_code != 200:
        assert response.json()["message"]


def test_held_two_concurrent_deletes_of_one_conversation_are_204_and_404(alice, monkeypatch):
    client = _client(alice)
    conversation = services.message_send(user=alice, content="hello").conversation
    url = f"{API}/conversations/{conversation.pk}"
    outcome = race_while_held(
        monkeypatch,
        Conversation,
        "delete",
        lambda: client.delete(url).status_code,
        lambda: client.delete(url).status_code,
        "the second delete waits on the first's row lock",
    )
    assert outcome == {"first": 204, "second": 404}, outcome
    with rls.privileged(reason="test"):
        assert not Message.objects.filter(conversation_id=conversation.pk).exists()
        assert TokenUsage.objects.filter(user_id=alice.pk).count() == 1  # the ledger keeps the metered call


def test_held_a_patch_racing_a_send_loses_neither_the_title_nor_the_tags_nor_the_messages(alice, monkeypatch):
    client = _client(alice)
    conversation = services.message_send(user=alice, content="hello").conversation
    outcome = race_while_held(
        monkeypatch,
        services,
        "entitlement_check",
        lambda: services.message_send(user=alice, content="again", conversation_id=conversation.pk).message.status,
        lambda: client.patch(f"{API}/conversations/{conversation.pk}", {"title": "Mine", "tags": ["t"]}, format="json").status_code,
        "the PATCH waits on the send's row lock",
    )
    assert outcome == {"first": "complete", "second": 200}, outcome
    with rls.privileged(reason="test"):
        stored = Conversation.objects.get(pk=conversation.pk)
        replies = Message.objects.filter(conversation=stored, role="assistant")
        assert (stored.title, stored.tags, stored.message_count) == ("Mine", ["t"], 4)
        assert stored.message_count == Message.objects.filter(conversation=stored).count()
        assert stored.total_tokens == sum(m.input_tokens + m.output_tokens for m in replies)
        ledger = TokenUsage.objects.filter(user_id=alice.pk)
        assert sum(row.total_tokens for row in ledger) == stored.total_tokens
        assert sum(row.cost for row in ledger) == stored.total_cost == sum(m.cost for m in replies)


def test_held_a_session_write_needs_the_csrf_token(alice):
    client = session_client(alice)
    client.handler.enforce_csrf_checks = True
    conversation = services.message_send(user=alice, content="hello").conversation
    assert client.delete(f"{API}/conversations/{conversation.pk}").status_code == 403
    assert client.post(f"{API}/conversations/{conversation.pk}/messages", {"content": "x"}).status_code == 403
    with rls.privileged(reason="test"):
        assert Message.objects.filter(conversation_id=conversation.pk).count() == 2


def test_held_a_form_body_past_the_upload_limit_is_refused_not_parsed(alice, settings):
    client = _client(alice)
    conversation_id = client.post(f"{API}/conversations", {}, format="json").json()["id"]
    body = b"content=hi&pad=" + b"a" * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1)
    response = client.post(f"{API}/conversations/{conversation_id}/messages", data=body, content_type="application/x-www-form-urlencoded")
    # The API reads JSON bodies only (415); before that, any form body past the limit was a 400.
    assert response.status_code == 415 and response.json()["extra"]["code"] == "unsupported_media_type", response.content[:300]
    with rls.privileged(reason="test"):
        assert not Message.objects.filter(conversation_id=conversation_id).exists()
