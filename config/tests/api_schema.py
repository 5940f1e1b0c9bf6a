"""Check an API answer against the OpenAPI schema the API publishes (/api/schema/): its status is
documented for the operation, so is its content type, and a JSON body validates against the documented response (OAS 3.0's
`nullable` and `$ref` turned into JSON Schema; formats date-time, uuid and uri checked)."""

from __future__ import annotations

import functools
from urllib.parse import urlsplit

import jsonschema
import yaml
from django.test import Client

FORMATS = jsonschema.FormatChecker()


@FORMATS.checks("uri")
def _absolute_uri(value) -> bool:
    if not isinstance(value, str):
        return True
    parts = urlsplit(value)
    return bool(parts.scheme and parts.netloc)


@functools.cache
def published_schema() -> dict:
    return yaml.safe_load(Client().get("/api/schema/").content)


def _json_schema(node, components: dict):
    """OAS 3.0 -> JSON Schema: `nullable: true` becomes a null alternative; refs are inlined."""
    if isinstance(node, list):
        return [_json_schema(item, components) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        return _json_schema(components[node["$ref"].rsplit("/", 1)[1]], components)
    converted = {key: _json_schema(value, components) for key, value in node.items() if key != "nullable"}
    if node.get("nullable"):
        converted = {"anyOf": [converted, {"type": "null"}]}
    return converted


def assert_documented(response, *, path: str, method: str) -> None:
    """`path` as the schema writes it (with {placeholders}); `response` from a DRF or Django client."""
    schema = published_schema()
    responses = schema["paths"][path][method.lower()]["responses"]
    status = str(response.status_code)
    assert status in responses, f"{method} {path} answered {status}, documented: {sorted(responses)}"
    documented = responses[status].get("content", {})
    media = response.get("Content-Type", "").split(";")[0].strip()
    if documented and media:
        assert media in documented, f"{method} {path} answered {media}, documented: {sorted(documented)}"
    content = documented.get("application/json") if media == "application/json" else None
    if content:
        body = _json_schema(content["schema"], schema["components"]["schemas"])
        jsonschema.validate(response.json(), body, format_checker=FORMATS)
