"""A file sent as a download in chunks, read as they are sent.

Under ASGI, Django serves a FileResponse (a sync iterator) by reading it whole into a list
first (StreamingHttpResponse.__aiter__), so a 2 GB export would sit in the worker's memory.
Here the chunks come from an async iterator, each read in a thread as the previous one is sent.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import BinaryIO

from asgiref.sync import sync_to_async
from django.http import StreamingHttpResponse
from django.utils.http import content_disposition_header

CHUNK_BYTES = 256 * 1024


async def _chunks(file: BinaryIO) -> AsyncIterator[bytes]:
    read = sync_to_async(file.read, thread_sensitive=False)  # file I/O needs no database thread
    try:
        while chunk := await read(CHUNK_BYTES):
            yield chunk
    finally:
        file.close()


def file_download_response(file: BinaryIO, *, filename: str, content_type: str) -> StreamingHttpResponse:
    """An open file as an attachment named `filename` (the caller opened it, so a file removed
    meanwhile is the caller's 404, not a 500 here)."""
    response = StreamingHttpResponse(_chunks(file), content_type=content_type)
    response["Content-Length"] = str(os.fstat(file.fileno()).st_size)
    response["Content-Disposition"] = content_disposition_header(as_attachment=True, filename=filename)
    response._resource_closers.append(file.close)  # a client gone before the first chunk: closed all the same
    return response
