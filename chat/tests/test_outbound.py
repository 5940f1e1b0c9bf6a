"""A user-set provider URL cannot reach loopback, private, link-local or metadata addresses,
in any spelling, also through a redirect, unless staff allowed the host (config/outbound.py)."""

from __future__ import annotations

import pytest

from chat.providers import ChatMessage, ChatRequest, ProviderError, provider_for
from chat.tests.provider_servers import Reply, openai_completion
from config.outbound import address_refusal

pytestmark = pytest.mark.anyio
USAGE = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}


def _request(base_url: str) -> ChatRequest:
    return ChatRequest(model="gpt-test", messages=(ChatMessage("user", "hi"),), base_url=base_url, api_key="test-key", timeout=3.0)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "::1",
        "::ffff:127.0.0.1",
        "fe80::1",
        "fd00::1",
    ],
)
def test_non_public_addresses_are_refused(address):
    assert address_refusal(address)


def test_public_addresses_pass():
    assert address_refusal("93.184.216.34") is None and address_refusal("2606:4700::1111") is None


@pytest.mark.parametrize(
    "base_url",
    [
        "http://127.0.0.1:{port}/v1",
        "http://localhost:{port}/v1",
        "http://2130706433:{port}/v1",  # 127.0.0.1 as one number
        "http://0x7f.0.0.1:{port}/v1",
        "http://[::ffff:127.0.0.1]:{port}/v1",
        "http://169.254.169.254/latest/meta-data",
    ],
)
async def test_a_user_set_url_cannot_reach_this_machine_or_the_metadata_service(server, settings, base_url):
    settings.OUTBOUND_ALLOWED_HOSTS = []
    server.queue(Reply(body=openai_completion("secret", USAGE)))
    with pytest.raises(ProviderError) as caught:
        await provider_for("openai").complete(_request(base_url.format(port=server.server_address[1])))
    assert caught.value.kind == "address_refused"  # said as such: retrying would not help
    assert server.received == []  # nothing reached the server on loopback


async def test_a_redirect_to_the_metadata_service_is_refused(server, settings):
    settings.OUTBOUND_ALLOWED_HOSTS = ["127.0.0.1"]  # staff allowed the first host, not where it redirects
    server.queue(Reply(status=307, headers={"Location": "http://169.254.169.254/v1/chat/completions"}, body={}))
    with pytest.raises(ProviderError) as caught:
        await provider_for("openai").complete(_request(f"{server.url}/v1"))
    assert caught.value.kind == "address_refused"  # said as such: retrying would not help
    assert len(server.received) == 1


async def test_a_host_staff_allowed_is_reached(server, settings):
    settings.OUTBOUND_ALLOWED_HOSTS = ["127.0.0.1"]
    server.queue(Reply(body=openai_completion("hello", USAGE)))
    text, _, _ = await provider_for("openai").complete(_request(f"{server.url}/v1"))
    assert text == "hello"
