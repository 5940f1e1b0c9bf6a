"""Attack probes on the export download link: HEAD and Range requests, path traversal and
tampering in the token, another user with the owner's link: never a 500, never someone's file."""

import json
import threading
import zipfile

import pytest
from django.db import connections
from django.test import Client

from accounts.tests.test_api import key_client
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


def test_one_export_task_delivered_twice_at_once_builds_one_whole_zip(alice, settings, tmp_path):
    settings.CHAT_EXPORT_DIR = tmp_path / "exports"
    for n in range(3):
        services.conversation_create(user=alice, title=f"Tides {n}")
    job = exporter.export_job_create(user=alice)  # a second start is refused (test_job_limits.py)
    # The task delivered twice at once (acks_late redelivery).
    barrier, results, errors = threading.Barrier(2), [], []

    def build():
        try:
            barrier.wait()
            results.append(exporter.export_build(job_id=job.pk, user_id=alice.pk))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=build) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == [] and {(r.pk, r.status, r.conversation_count) for r in results} == {(job.pk, "ready", 3)}
    with zipfile.ZipFile(exporter.export_path(job.pk)) as archive:
        assert len(json.loads(archive.read("conversations.json"))["conversations"]) == 3
    assert [p.name for p in exporter.export_path(job.pk).parent.iterdir()] == [f"{job.pk}.zip"]


def test_the_export_format_parameter_refuses_what_it_does_not_know(alice):
    conversation = services.conversation_create(user=alice, title="Tides")
    api = key_client(alice, scopes=("chat:read", "chat:write"))
    page = Client(raise_request_exception=False)
    page.force_login(alice)
    for value in ("xml", "json\x00", "md\u202e", "x" * 100_000, ["json", "md"]):
        answer = api.get(f"/api/v1/conversations/{conversation.pk}/export", {"format": value})
        assert answer.status_code == (200 if isinstance(value, list) else 400), value  # a repeated key: the last one
        assert page.get(f"/chat/{conversation.pk}/export/", {"format": value}).status_code == answer.status_code, value
