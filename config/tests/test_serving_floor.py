"""The bench's two floors (config/tests/serving_urls.py): the bare view runs in the RLS
middleware's transaction, as a page does; the one marked as the metered send's view is
(rls.own_transactions) runs in none, so no pooled connection is checked out for it."""

import pytest
from django.db import transaction
from django.test import Client, override_settings

from config.db import rls

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.urls("config.tests.serving_urls")]


@pytest.fixture
def transactions_opened(monkeypatch):
    opened = []
    real = transaction.Atomic.__enter__

    def entering(self):
        opened.append(self.using)
        return real(self)

    monkeypatch.setattr(transaction.Atomic, "__enter__", entering)
    return opened


@override_settings(ALLOWED_HOSTS=["testserver"])
@pytest.mark.parametrize(
    ("path", "opened_expected"), [("/_serving/chat-reply", [rls.APP_ALIAS]), ("/_serving/chat-reply-own-transactions", [])]
)
def test_only_the_plain_bare_view_runs_in_the_middleware_transaction(transactions_opened, path, opened_expected):
    response = Client().post(path, '{"content": "Hello"}', content_type="application/json")
    assert response.status_code == 201 and response.json()["role"] == "assistant"
    assert transactions_opened == opened_expected
