"""Attack probes on the export download link: HEAD and Range requests, path traversal and
tampering in the token, another user with the owner's link: never a 500, never someone's file."""

import pytest
from django.test import Client

from chat import services
from chat.porting import exporter

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_download_link_under_attack(alice, settings, tmp_path):
    from accounts.tests.factories import make_user

    settings.CHAT_EXPORT_DIR = tmp_path / "exports"
    services.conversation_create(user=alice, title="Tides")
    job = exporter.export_job_create(user=alice)
    job = exporter.export_build(job_id=job.pk, user_id=alice.pk)
    link = exporter.export_download_url(job)
    owner = Client(raise_request_exception=False)
    owner.force_login(alice)
    other = Client(raise_request_exception=False)
    other.force_login(make_user(email="mallory@example.com"))

    assert owner.get(link).status_code == 200
    ranged = owner.get(link, headers={"Range": "bytes=0-1"})
    assert ranged.status_code == 200 and ranged.get("Content-Disposition", "").startswith("attachment")
    assert owner.head(link).status_code == 405  # GET only
    assert other.get(link).status_code == 404
    token = link.rstrip("/").rsplit("/", 1)[1]
    for forged in (token[:-1] + ("A" if token[-1] != "A" else "B"), "..%2F..%2Fetc%2Fpasswd", "%2e%2e", token + "%00", "x" * 5000):
        assert owner.get(f"/chat/exports/{forged}/").status_code == 404, forged
    settings.CHAT_EXPORT_HOURS = 0  # the signature's age now exceeds the link's life
    assert owner.get(link).status_code == 404
