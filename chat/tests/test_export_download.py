"""An export download under the ASGI handler (config/downloads.py): the zip is read from disk as it is sent.
Django serves a FileResponse under ASGI by reading the whole file into a list first; a user's
export zip may be gigabytes, so it would sit in the worker's memory."""

import asyncio
import os
import tracemalloc

import pytest
from asgiref.sync import async_to_sync

from accounts.tests.test_api import key_client
from chat.porting import exporter
from config.asgi import OneHopASGIHandler
from config.tests.asgi_scope import http_scope

pytestmark = pytest.mark.django_db(transaction=True)  # the request runs on another thread's connection
SIZE = 48 * 1024 * 1024


async def _download(application, path: str, authorization: str) -> tuple[int, dict, int]:
    """GET `path`, counting the body's bytes as they arrive and keeping none of them."""
    scope = http_scope("GET", path, [(b"authorization", authorization.encode())])
    answer = {"status": 0, "headers": {}, "bytes": 0}
    requested = False

    async def receive():
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b""}
        await asyncio.Event().wait()  # then the client waits, never disconnecting

    async def send(message):
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]
            answer["headers"] = {k.decode().lower(): v.decode() for k, v in message["headers"]}
        elif message["type"] == "http.response.body":
            answer["bytes"] += len(message.get("body", b""))

    await application(scope, receive, send)
    return answer["status"], answer["headers"], answer["bytes"]


def test_an_export_download_is_read_as_it_is_sent_never_whole(alice, settings, tmp_path):
    settings.CHAT_EXPORT_DIR = tmp_path
    client = key_client(alice, scopes=["chat:read", "chat:write"])
    job = exporter.export_job_create(user=alice)  # no worker here: built below, in this process
    exporter.export_build(job_id=job.pk, user_id=alice.pk)
    with exporter.export_path(job.pk).open("wb") as f:  # a large export: what matters is its size
        f.write(os.urandom(SIZE))

    tracemalloc.start()
    try:
        status, headers, received = async_to_sync(_download)(
            OneHopASGIHandler(), f"/api/v1/exports/{job.pk}/download", f"Bearer {client.secret}"
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert status == 200, (status, headers)
    assert headers["content-type"] == "application/zip" and headers["content-length"] == str(SIZE)
    assert headers["content-disposition"].startswith('attachment; filename="confab-export-')
    assert received == SIZE
    assert peak < SIZE / 4, f"peak {peak / 2**20:.1f} MiB while sending {SIZE / 2**20:.0f} MiB"
