"""Export files for the import tests, built from the hand-written fixtures in fixtures/: ChatGPT's
ZIP as downloaded today (conversations split over conversations-000.json, -001.json, … beside
user.json, shared_conversations.json, chat.html and uploaded files) and Claude's ZIP."""

import io
import zipfile
from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures"
CHATGPT_SINGLE = FIXTURES / "chatgpt_conversations.json"
CLAUDE_SINGLE = FIXTURES / "claude_conversations.json"


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def chatgpt_zip() -> bytes:
    return zip_bytes({path.name: path.read_bytes() for path in sorted((FIXTURES / "chatgpt_export").iterdir())})


def claude_zip() -> bytes:
    return zip_bytes(
        {
            "conversations.json": CLAUDE_SINGLE.read_bytes(),
            "users.json": b'[{"uuid": "9a8b7c6d-5e4f-4a3b-2c1d-0e9f8a7b6c5d", "full_name": "Alice", "email_address": "alice@example.com"}]',
            "projects.json": b"[]",
        }
    )
