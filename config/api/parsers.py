"""The API's JSON parser: a body too large or nested too deep is a 400, never a RecursionError (500)."""

import io
import re
from itertools import accumulate

from django.conf import settings
from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

MAX_DEPTH = 64
# Possessive, closing quote optional: one left-to-right pass even over unterminated strings.
_STRING = re.compile(r'"(?:[^"\\]++|\\.)*+"?', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]++")


def json_nested_deeper_than(text: str, max_depth: int) -> bool:
    """Whether arrays and objects nest deeper than max_depth; brackets inside strings do not count."""
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    return any(depth > max_depth for depth in accumulate(1 if char in "[{" else -1 for char in brackets))


class BoundedJSONParser(JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        raw = stream.read(limit + 1) if limit is not None else stream.read()
        if limit is not None and len(raw) > limit:
            raise ParseError(f"The request body is larger than {limit} bytes.", code="too_large")
        # Counted on the text as the parser reads it, in the body's own charset: in UTF-16 a
        # character's bytes may hold a quote or a bracket, and `unicode_escape` spells them \u005b.
        encoding = (parser_context or {}).get("encoding") or settings.DEFAULT_CHARSET
        try:
            text = raw.decode(encoding)
            text.encode("utf-8")  # `unicode_escape` can spell a lone surrogate, which no UTF-8 holds
        except (LookupError, UnicodeError, ValueError) as exc:
            raise ParseError(f"The request body is not valid {encoding} text.") from exc
        if json_nested_deeper_than(text, MAX_DEPTH):
            raise ParseError(f"The JSON body is nested deeper than {MAX_DEPTH} levels.")
        try:
            return super().parse(io.BytesIO(text.encode("utf-8")), media_type, {**(parser_context or {}), "encoding": "utf-8"})
        except RecursionError as exc:  # a backstop: the count above should have refused it
            raise ParseError(f"The JSON body is nested deeper than {MAX_DEPTH} levels.") from exc
