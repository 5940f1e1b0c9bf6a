"""A read-only serializer's output without DRF's per-field machinery, for the hottest answers.

DRF's `Serializer.to_representation` finds each field's value through `Field.get_attribute`
(a mapping key or an attribute, callables called, missing values mapped to defaults) and then
calls the field's `to_representation`, a microsecond or two a field; a chat reply has 45 fields,
and in the metered POST that was several percent of the server's time (docs/performance.md).
`Representation(serializer)` reads the serializer's own bound fields once and renders the same
output directly for the kinds whose rule is a plain conversion, listed in `_converter`: text,
integers, UUIDs, booleans, choices, JSON, lists of text, ISO datetimes and nested serializers of
such fields. Any other field is rendered by its own `to_representation`, and any value the plain
path cannot take as it is (missing, callable, a naive or non-datetime value) goes through DRF's
own steps for that field, so the output is DRF's in every case; `config/tests/test_api_outputs.py`
compares the two field by field. The schema stays the serializer's."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from django.conf import settings
from django.utils import timezone
from rest_framework import fields as drf_fields
from rest_framework import serializers
from rest_framework.fields import SkipField
from rest_framework.relations import PKOnlyObject
from rest_framework.settings import api_settings

_NEEDS_FIELD = object()  # a converter's answer for "let the field render this value itself"


def _datetime_iso(value):
    if type(value) is not datetime or value.tzinfo is None:
        return _NEEDS_FIELD  # strings, naive values, subclasses: the field's own rules
    try:
        text = value.astimezone(timezone.get_current_timezone()).isoformat()  # DRF: the current time zone
    except OverflowError:
        return _NEEDS_FIELD  # the field raises its own error for it
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def _converter(field) -> Callable[[Any], Any] | None:
    """A plain conversion equal to `field.to_representation` for every value it accepts, or None."""
    kind = type(field)
    if kind is drf_fields.CharField:
        return str
    if kind is drf_fields.IntegerField:
        return int
    if kind is drf_fields.UUIDField and field.uuid_format == "hex_verbose":
        return str
    if kind is drf_fields.BooleanField:
        return lambda value: value if value is True or value is False else _NEEDS_FIELD
    if kind is drf_fields.ChoiceField:
        choices = field.choice_strings_to_values
        return lambda value: value if value == "" else choices.get(str(value), value)
    if kind is drf_fields.JSONField and not field.binary:
        return lambda value: value
    if kind is drf_fields.ListField and type(field.child) is drf_fields.CharField:
        return lambda value: [None if item is None else str(item) for item in value]
    if kind is drf_fields.DateTimeField and _datetime_default(field):
        return _datetime_iso
    if isinstance(field, serializers.Serializer) and not isinstance(field, serializers.ListSerializer):
        return Representation(field) if _plain_serializer(field) else None
    return None


def _datetime_default(field) -> bool:
    """ISO 8601 in the current time zone: DRF's default rule for a DateTimeField (settings read
    once, when the plan is built)."""
    output_format = getattr(field, "format", api_settings.DATETIME_FORMAT)
    return (
        settings.USE_TZ
        and isinstance(output_format, str)
        and output_format.lower() == drf_fields.ISO_8601
        and not hasattr(field, "timezone")
    )


def _plain_serializer(serializer) -> bool:
    return type(serializer).to_representation is serializers.Serializer.to_representation


class Representation:
    """`Representation(serializer)(instance)` equals `serializer.to_representation(instance)`."""

    def __init__(self, serializer: serializers.Serializer):
        if not _plain_serializer(serializer):
            raise TypeError(f"{type(serializer).__name__} overrides to_representation; render it with DRF.")
        self._serializer = serializer
        self._plan: list[tuple[str, str | None, Callable[[Any], Any] | None, Any]] | None = None

    def _plan_build(self):
        plan = []
        for field in self._serializer._readable_fields:
            simple_source = len(field.source_attrs) == 1 and type(field).get_attribute is drf_fields.Field.get_attribute
            plan.append((field.field_name, field.source_attrs[0] if simple_source else None, _converter(field), field))
        self._plan = plan  # built whole before it is published: threads may race here, each builds the same
        return plan

    def __call__(self, instance) -> dict:
        plan = self._plan or self._plan_build()
        is_mapping = isinstance(instance, Mapping)
        out = {}
        for name, source, convert, field in plan:
            value = _NEEDS_FIELD
            if source is not None:
                try:
                    value = instance[source] if is_mapping else getattr(instance, source)
                except Exception:  # missing, or an error to report: DRF's own steps below
                    value = _NEEDS_FIELD
                if callable(value):
                    value = _NEEDS_FIELD  # DRF calls some callables (a method, a partial): let it decide
            if value is _NEEDS_FIELD:
                try:
                    value = field.get_attribute(instance)
                except SkipField:
                    continue
                if isinstance(value, PKOnlyObject) and value.pk is None:
                    out[name] = None
                    continue
            if value is None:
                out[name] = None
                continue
            rendered = convert(value) if convert is not None else _NEEDS_FIELD
            out[name] = field.to_representation(value) if rendered is _NEEDS_FIELD else rendered
        return out
