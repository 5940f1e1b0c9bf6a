"""DRF's JSON renderer, safe for what a request can put in an answer.

An error message may quote the input ('"\\udc80" is not a valid choice.'); DRF writes UTF-8
without escaping, and a lone surrogate (valid in JSON text, not in UTF-8) then failed the
encoding: a 500 for a 400. Such an answer is written with every non-ASCII character escaped,
which is the same JSON to any reader; every other answer is written as before."""

from rest_framework import renderers


class JSONRenderer(renderers.JSONRenderer):
    def render(self, data, accepted_media_type=None, renderer_context=None):
        try:
            return super().render(data, accepted_media_type, renderer_context)
        except UnicodeEncodeError:
            return _ascii.render(data, accepted_media_type, renderer_context)


class _AsciiJSONRenderer(renderers.JSONRenderer):
    ensure_ascii = True


_ascii = _AsciiJSONRenderer()
