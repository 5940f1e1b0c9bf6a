"""Plan limits on the send path when the plan or Redis changes what a check can see, and the
gateway's OpenAI fields it cannot honour. Each test's "Was:" is the bug it was written for."""

import contextlib
import json
import threading
from decimal import Decimal

import pytest
from django.db import connections
from django.test import Client
from django.utils import timezone

from accounts.services import api_key_create
from accounts.tests.factories import make_user
from analytics import counters
from analytics.models import TokenUsage
from billing.models import Plan
from billing.tests.factories import organization_of, plan_with_limits, put_on_plan
from chat import services
from chat.models import Conversation, Message
from chat.providers import echo
from chat.tests.factories import price_add
from config import embedded
from config.cache import redis_client
from config.db import rls
from config.errors import QuotaExceeded

pytestmark = pytest.mark.django_db(transaction=True)
HELLO = {"model": "echo-1", "messages": [{"role": "user", "content": "hi"}]}


def _member(plan: Plan):
    user = make_user()
    put_on_plan(organization_of(user), plan)
    return user


def _ledger(user) -> list:
    with rls.privileged(reason="test: read the ledger"):
        return list(TokenUsage.objects.filter(user_id=user.pk))


# --- 1. The spend reservation prices an output the plan never allows --------------------------


def test_a_send_that_fits_the_spend_budget_at_the_plans_output_cap_is_not_refused(catalog, plans):
    """A plan caps each reply at 10 output tokens and allows $0.01 a month of model usage. A user
    who has spent nothing sends "hello" to a model priced $1 in / $10 out per million: the call can
    cost at most ~10 x $10/M + a few input tokens = about $0.0001, a hundredth of the budget.

    Was: refused with 402 "this message may cost up to $0.04", because message_prepare prices the
    reservation (`max_cost=call_cost_ceiling(..., output_tokens=output_cap)`) at
    settings.CHAT_MAX_OUTPUT_TOKENS (4096), not at the plan's cap that entitlement_check then
    applies to the request (entitlement.max_output_tokens = 10). The token reservation is capped,
    the spend one is not: a refusal must mean there was no room.

    Should: the call is allowed (and reserves what a 10-token reply can cost)."""
    price_add(provider="echo", model="echo-dear", input_price="1", output_price="10")
    user = _member(plan_with_limits("dear-capped", monthly_spend=Decimal("0.01"), max_output_tokens=10))
    try:
        reply = services.message_send(user=user, content="hello", provider="echo", model="echo-dear")
    except QuotaExceeded as exc:
        pytest.fail(f"refused although a 10-token reply fits the budget 100 times: {exc.message} {exc.extra}")
    assert reply.message.status == "complete"
    [row] = _ledger(user)
    assert row.cost <= Decimal("0.01")


# --- 2. The gateway takes OpenAI fields it does not honour, and bills what they would cut -----------


@pytest.fixture
def key(catalog, plans):
    user = make_user(email="alice@example.com")
    with rls.privileged(reason="test: issue an API key"):
        return user, api_key_create(user=user, name="gateway", scopes=["chat:read", "chat:write"])[1]


def _post(secret: str, body: dict, **headers):
    client = Client(raise_request_exception=False)
    raw = json.dumps(body).encode()
    return client.post("/v1/chat/completions", raw, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {secret}", **headers)


def _json_or_none(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return None


HONOURED_OR_REFUSED = {
    # The model must stop before "said": the client pays for no text past it.
    "stop a list": ({"stop": ["said"]}, "stop", lambda choice: "said" not in choice["message"]["content"]),
    "stop a string": ({"stop": "said"}, "stop", lambda choice: "said" not in choice["message"]["content"]),
    # The client parses the content as JSON.
    "response_format json_object": (
        {"response_format": {"type": "json_object"}},
        "response_format",
        lambda choice: isinstance(_json_or_none(choice["message"]["content"]), dict),
    ),
    "response_format json_schema": (
        {"response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}, "strict": True}}},
        "response_format",
        lambda choice: isinstance(_json_or_none(choice["message"]["content"]), dict),
    ),
    # The client reads choice.logprobs.content.
    "logprobs": ({"logprobs": True, "top_logprobs": 2}, "logprobs", lambda choice: choice["logprobs"] is not None),
}


@pytest.mark.parametrize("name", list(HONOURED_OR_REFUSED))
def test_an_openai_field_the_gateway_cannot_honour_is_refused_not_ignored_and_billed(key, name):
    """A client of /v1/chat/completions sends an OpenAI field that shapes or cuts the reply:
    `stop` (generation ends at the sequence, and what follows is neither sent nor billed),
    `response_format` (the reply is JSON), `logprobs`.

    Was: 200, the field silently dropped (completion_parse reads only model, messages, stream,
    stream_options, temperature, max_tokens, max_completion_tokens, n and the tools fields;
    ChatRequest carries no stop or format): the whole "You said: hi" is returned and metered past
    the stop sequence, prose comes back where JSON was asked for, `logprobs` is null.

    Should: as for `tools` and `n` > 1, a 400 invalid_request_error naming the parameter (or the
    field honoured). Nothing metered for a refused call."""
    user, secret = key
    fields, param, honoured = HONOURED_OR_REFUSED[name]
    response = _post(secret, {**HELLO, **fields})
    if response.status_code == 400:
        assert response.json()["error"]["param"] == param, response.json()
        assert not _ledger(user)
        return
    assert response.status_code == 200, response.content[:300]
    choice = response.json()["choices"][0]
    assert honoured(choice), f"{param} ignored: {choice}"


@pytest.mark.parametrize("stream", [0, "", [], {}], ids=["0", "empty string", "empty list", "empty object"])
def test_a_stream_flag_of_another_json_type_is_a_400_not_taken_as_false(key, stream):
    """`"stream": 0` (or "", [], {}): not a boolean. OpenAI's API refuses it (400, "is not of type
    'boolean'"), and the gateway refuses "true" as a string already.

    Was: 200 and a metered non-streamed completion: completion_parse reads
    `body.get("stream") or False`, so every falsy value of any JSON type is `false` before the
    type check runs.

    Should: 400 invalid_request_error, param "stream", nothing metered or stored."""
    user, secret = key
    response = _post(secret, {**HELLO, "stream": stream})
    assert response.status_code == 400, (response.status_code, response.content[:300])
    assert response.json()["error"]["param"] == "stream"
    assert not _ledger(user)
    with rls.privileged(reason="test"):
        assert not Conversation.objects.exists() and not Message.objects.exists()


# --- 3. A call decided while Redis was down is not held once Redis is back ---------------------


@contextlib.contextmanager
def _send_held_at_provider(user, monkeypatch, outcome: dict):
    """Send A on a thread of its own, held at the (echo) provider for the block's length:
    `outcome["a"]` is its reply's status once it is let go."""
    at_provider, release = threading.Event(), threading.Event()
    real = echo.complete

    async def held(request, **kwargs):
        if "held" in request.messages[-1].content:
            at_provider.set()
            release.wait(30)
        return await real(request, **kwargs)

    monkeypatch.setattr(echo, "complete", held)

    def send_a():
        try:
            outcome["a"] = services.message_send(user=user, content="held at the provider").message.status
        except Exception as exc:  # noqa: BLE001  surfaced by the test
            outcome["a"] = repr(exc)
        finally:
            connections.close_all()

    thread = threading.Thread(target=send_a)
    thread.start()
    try:
        assert at_provider.wait(30), outcome
        yield
    finally:
        release.set()
        thread.join(30)


def _send_b(user, outcome: dict) -> None:
    try:
        services.message_send(user=user, content="sent while A runs")
        outcome["b"] = "sent"
    except QuotaExceeded as exc:
        outcome["b"] = exc.extra["code"]


def test_a_call_still_running_from_a_redis_outage_holds_its_place_when_redis_returns(catalog, plans, own_redis, monkeypatch):
    """A plan includes 2 messages a month; 1 is used. Redis stops. Send A is decided from the
    database (allowed: 1 used + 0 in progress < 2; nothing can be reserved) and goes to the
    provider. Redis comes back (empty, as after a restart) while A still runs, and send B arrives.

    Was: B is allowed too, and the month ends with 3 messages on a plan of 2. The script finds no
    counter, rebuilds it from the ledger (1 call: A has no ledger row yet) and sees no reservation
    (A never had one), so A, in progress, is counted nowhere. The database path counts the calls
    in progress (_calls_in_progress); the Redis path, once Redis returns, forgot them.

    Should: B is refused (402, monthly_messages) while A runs: a counter rebuilt from the ledger
    holds the organization's calls in progress again (billing.services.RESTORE_SCRIPT)."""
    user = _member(plan_with_limits("two-messages", monthly_messages=2))
    services.message_send(user=user, content="the first of two")  # 1 used, Redis up
    embedded.redis_stop(own_redis)
    outcome = {}
    with _send_held_at_provider(user, monkeypatch, outcome):
        embedded.redis_start(own_redis, persist=False)  # back, empty
        _send_b(user, outcome)
    assert outcome["a"] == "complete", outcome
    used = len(_ledger(user))
    assert outcome["b"] == "monthly_messages" and used == 2, (outcome, f"{used} messages on a plan of 2")


def test_a_counter_rebuilt_while_a_reserved_call_runs_holds_that_call_once(catalog, plans, monkeypatch):
    """The other side of the restore: Redis keeps A's reservation but loses the organization's
    counter (evicted, or dropped when another reservation expired). A plan of 250 tokens a month
    and replies of at most 100, none used: A runs, holding about 105. B, wanting as much, must be
    allowed (0 + 105 + 105 <= 250): holding A again from the database as well would count it
    twice (315) and refuse B."""
    user = _member(plan_with_limits("two-fifty-tokens", monthly_tokens=250, max_output_tokens=100))
    outcome = {}
    with _send_held_at_provider(user, monkeypatch, outcome):
        month = counters.month_of(timezone.now())
        assert redis_client().delete(counters.counter_key("org", organization_of(user).pk, month)) == 1
        _send_b(user, outcome)
    assert (outcome["a"], outcome["b"]) == ("complete", "sent"), outcome
