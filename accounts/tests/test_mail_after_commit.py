"""Invitation and verification mail leave only after the transaction commits, from a
Celery task: a rollback sends and queues nothing; a commit hands the mail to a real worker."""

import pytest
from django.core import mail
from django.db import transaction
from django_redis import get_redis_connection

from accounts import services
from accounts.models import Invitation
from accounts.tests.factories import PASSWORD, mail_arrives, make_user
from config.db import rls

pytestmark = pytest.mark.django_db(transaction=True)

BASE_URL = "http://testserver"


class Rollback(Exception):
    pass


def queued() -> int:
    """Messages waiting on the broker's default queue (same Redis as the cache in tests)."""
    return get_redis_connection("default").llen("celery")


def _team(owner):
    with rls.privileged(reason="test"):
        return services.organization_create(user=owner, name="Acme")


def test_a_rolled_back_invitation_sends_and_queues_nothing():
    alice = make_user()
    acme = _team(alice)
    with pytest.raises(Rollback), rls.privileged(reason="test"):
        services.invitation_create(actor=alice, organization=acme, email="guest@example.com", base_url=BASE_URL)
        raise Rollback
    assert mail.outbox == [] and queued() == 0
    assert not Invitation.objects.using("privileged").filter(email="guest@example.com").exists()


def test_a_rolled_back_verification_sends_and_queues_nothing():
    user = make_user()
    with pytest.raises(Rollback), transaction.atomic(using=rls.current_alias()):
        services.email_verification_send(user=user, base_url=BASE_URL)
        raise Rollback
    assert mail.outbox == [] and queued() == 0


def test_a_committed_invitation_is_mailed_by_the_worker_after_commit(celery_worker):
    alice = make_user()
    acme = _team(alice)
    with rls.privileged(reason="test"):
        invitation, token = services.invitation_create(actor=alice, organization=acme, email="guest@example.com", base_url=BASE_URL)
        assert mail.outbox == []  # nothing leaves while the transaction is open
    sent = mail_arrives()
    assert [m.to for m in sent] == [["guest@example.com"]]
    assert f"{BASE_URL}/accounts/invitations/{token}/" in sent[0].body and "Acme" in sent[0].subject
    assert Invitation.objects.using("privileged").filter(pk=invitation.pk).exists()


def test_signup_mails_the_verification_link_through_the_worker(client, celery_worker):
    response = client.post(
        "/accounts/signup/", {"email": "new@example.com", "display_name": "", "password": PASSWORD, "password_confirm": PASSWORD}
    )
    assert response.status_code == 302
    sent = mail_arrives()
    assert [m.to for m in sent] == [["new@example.com"]] and "/accounts/verify-email/" in sent[0].body
