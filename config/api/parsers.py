"""The API's JSON parser: a body too large or nested too deep is a 400, never a RecursionError (500)."""

import io
import re
from itertools import accumulate

from django.conf import settings
from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

MAX_DEPTH = 64
# Possessive, closing quote optional: one left-to-right pass even over unterminated strings.
_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+"?', re.DOTALL)
_NOT_BRACKET = re.compile(rb"[^\[\]{}]++")


def json_nested_deeper_than(raw: bytes, max_depth: int) -> bool:
    """Whether arrays and objects nest deeper than max_depth; brackets inside strings do not count."""
    brackets = _NOT_BRACKET.sub(b"", _STRING.sub(b"", raw))
    return any(depth > max_depth for depth in accumulate(1 if byte in b"[{" else -1 for byte in brackets))


class BoundedJSONParser(JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        raw = stream.read(limit + 1) if limit is not None else stream.read()
        if limit is not None and len(raw) > limit:
            raise ParseError(f"The request body is larger than {limit} bytes.", code="too_large")
        if json_nested_deeper_than(raw, MAX_DEPTH):
            raise ParseError(f"The JSON body is nested deeper than {MAX_DEPTH} levels.")
        return super().parse(io.BytesIO(raw), media_type, parser_context)
