"""Import and export in a real headless Chromium against the real ASGI server: upload ChatGPT's
export ZIP in today's multi-file shape on Settings → Import and export, see it importing, read
the report once a real Celery worker has imported it (the page polls for it), find
the conversations in the list; download a conversation as JSON and the whole export's zip
(built by a real Celery worker)."""

import io
import json
import zipfile

import pytest

from accounts.tests.factories import PASSWORD
from chat.models import Message
from chat.tests.porting_files import chatgpt_zip
from config.db import rls
from config.tests.browser import log_in
from config.tests.serving import served

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_upload_a_chatgpt_zip_see_the_report_and_download_exports(alice, page, tmp_path, settings, celery_worker):
    from playwright.sync_api import expect

    export = tmp_path / "chatgpt-export.zip"
    export.write_bytes(chatgpt_zip())
    settings.CHAT_EXPORT_DIR = tmp_path / "exports"  # the worker writes here, the server reads here
    settings.CHAT_IMPORT_DIR = tmp_path / "imports"  # the server saves uploads here, the worker reads them
    with served(workers=1, CHAT_EXPORT_DIR=str(settings.CHAT_EXPORT_DIR), CHAT_IMPORT_DIR=str(settings.CHAT_IMPORT_DIR)) as base:
        log_in(page, base, alice.email, PASSWORD)

        page.goto(f"{base}/settings/profile/")
        page.get_by_role("navigation", name="Settings").get_by_role("link", name="Import and export").click()
        page.get_by_label("Export file").set_input_files(str(export))
        page.get_by_role("button", name="Import").click()
        expect(page.get_by_role("status").filter(has_text="Importing chatgpt-export.zip…")).to_be_visible()
        report = page.get_by_test_id("import-report")  # swapped in by the page's polling, no reload
        expect(report).to_contain_text("From ChatGPT: 2 conversations imported (6 messages)", timeout=30_000)
        expect(report).to_contain_text("0 skipped as already imported, 0 failed")
        expect(report).to_contain_text("1 attachments, 1 non-text, 1 system, 2 tool")
        with rls.privileged(reason="test: the imported messages"):
            assert Message.objects.filter(user_id=alice.pk, imported=True).count() == 6

        report.get_by_role("link", name="See your conversations").click()
        expect(page.get_by_role("link", name="Packing for Lisbon")).to_be_visible()
        page.get_by_role("link", name="Sourdough starter").click()
        expect(page.get_by_test_id("message-user")).to_have_text("Is my starter ready? It doubled overnight.")
        with page.expect_download() as one:
            page.get_by_role("link", name="Export JSON").click()
        document = json.loads(one.value.path().read_text())
        assert [c["title"] for c in document["conversations"]] == ["Sourdough starter"]

        page.goto(f"{base}/chat/porting/")
        page.get_by_role("button", name="Export all conversations").click()
        link = page.get_by_test_id("export-download")
        for _ in range(60):  # the worker builds it; the page says so until it is ready
            if link.count():
                break
            page.wait_for_timeout(500)
            page.reload()
        with page.expect_download() as everything:
            link.click()
        archive = zipfile.ZipFile(io.BytesIO(everything.value.path().read_bytes()))
        assert len(json.loads(archive.read("conversations.json"))["conversations"]) == 2
