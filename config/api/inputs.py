"""Request input through a serializer: invalid input raises, and the API answers 400 with `fields`.

A serializer of plain text fields only (the chat message's body) is checked here first, without
building a DRF serializer: DRF deep-copies every declared field for each instance, which was most
of the cost of validating a message. Only input that is plainly valid is taken that way, with the
value DRF would give; anything else (a wrong type, blank, too long, a NUL or a lone surrogate, a
missing required field) goes through the serializer, which decides and words the errors.
`config/tests/test_api_inputs.py` compares the two."""

import functools
import re

from django.core.validators import MaxLengthValidator, MinLengthValidator, ProhibitNullCharactersValidator
from django.utils import timezone
from rest_framework import serializers
from rest_framework.fields import empty
from rest_framework.request import Request
from rest_framework.validators import ProhibitSurrogateCharactersValidator

_SURROGATE = re.compile("[\ud800-\udfff]")
_MISSING = object()


class StringField(serializers.CharField):
    """DRF's CharField, taking only a JSON string: DRF's turns a number into its text, and a JSON
    1e400 (read as infinity) was sent to a model as the message "inf"."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class UUIDStringField(serializers.UUIDField):
    """DRF's UUIDField, taking only a JSON string: DRF's reads an integer as UUID(int=...), and
    true or false as 1 or 0, so `"persona_id": true` was looked up as an id."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid", value=data)
        return super().to_internal_value(data)


class ShortListField(serializers.ListField):
    """DRF's ListField, counting the items before checking each: DRF checks every item first, so
    a list of 100,000 bad items cost seconds and answered megabytes of errors to refuse."""

    def to_internal_value(self, data):
        if self.max_length is not None and isinstance(data, list) and len(data) > self.max_length:
            self.fail("max_length", max_length=self.max_length)
        return super().to_internal_value(data)


class StrictBooleanField(serializers.BooleanField):
    """DRF's BooleanField, taking only a JSON true or false: DRF's also takes 0, 1, "yes", "off"
    and the like, which the schema (`type: boolean`) does not allow. For request bodies only: a
    query parameter is text, and `?archived=true` stays DRF's BooleanField."""

    def to_internal_value(self, data):
        if data is True or data is False:
            return data
        self.fail("invalid", input=data)


class ZonedDateTimeField(serializers.DateTimeField):
    """DRF's DateTimeField, refusing a time without its offset: DRF reads one in the server's zone
    (UTC), so a client in New York asking for its own 09:00 got a time five hours early."""

    default_error_messages = {"naive": "Give the time with its time zone (an offset such as +02:00, or Z for UTC)."}

    def enforce_timezone(self, value):
        if timezone.is_naive(value):
            self.fail("naive")
        return super().enforce_timezone(value)


def validated_body(serializer_class: type[serializers.Serializer], request: Request, **kwargs) -> dict:
    plan = None if kwargs else _text_plan(serializer_class)
    if plan is not None and (data := _text_valid(plan, request.data)) is not None:
        return data
    serializer = serializer_class(data=request.data, **kwargs)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


def validated_query(serializer_class: type[serializers.Serializer], request: Request) -> dict:
    """The query's parameters (the last value of each), checked. Passed as a plain dict: DRF reads
    a QueryDict as an HTML form, where an empty value means "not given", so `?period=` or
    `?persona_id=` quietly meant the default; here an empty value is checked like any other."""
    serializer = serializer_class(data=request.query_params.dict())
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


@functools.cache
def _text_plan(serializer_class: type[serializers.Serializer]) -> tuple | None:
    """Each field's rules, when the serializer has only plain text fields and no checks of its own."""
    base = serializers.Serializer
    own = ("__init__", "get_fields", "run_validation", "to_internal_value", "validate")  # fields or checks of its own making
    if any(getattr(serializer_class, name) is not getattr(base, name) for name in own):
        return None
    serializer = serializer_class()
    if serializer.get_validators():
        return None
    plan = []
    for field in serializer._writable_fields:
        if (
            type(field) not in (serializers.CharField, StringField)
            or len(field.source_attrs) != 1
            or hasattr(serializer, f"validate_{field.field_name}")
        ):
            return None
        limits = []
        for validator in field.validators:
            kind = type(validator)
            if kind in (MaxLengthValidator, MinLengthValidator) and not callable(validator.limit_value):
                limits.append((kind is MaxLengthValidator, validator.limit_value))
            elif kind not in (ProhibitNullCharactersValidator, ProhibitSurrogateCharactersValidator):
                return None  # a check of the caller's own: DRF runs it
        skippable = not field.required and field.default is empty
        plan.append((field.field_name, field.source_attrs[0], skippable, field.trim_whitespace, field.allow_blank, tuple(limits)))
    return tuple(plan)


def _text_valid(plan: tuple, data) -> dict | None:
    """What DRF would validate `data` to, when it is plainly valid; None leaves it to DRF."""
    if type(data) is not dict:
        return None
    out = {}
    for name, source, skippable, trim, allow_blank, limits in plan:
        value = data.get(name, _MISSING)
        if value is _MISSING:
            if not skippable:
                return None  # required, or a default to compute: DRF's
            continue
        if type(value) is not str:
            return None
        if trim:
            value = value.strip()
        if value == "":  # DRF returns a blank before any validator runs
            if not allow_blank:
                return None
            out[source] = ""
            continue
        if "\x00" in value or _SURROGATE.search(value):
            return None
        for is_max, limit in limits:
            if (len(value) > limit) if is_max else (len(value) < limit):
                return None
        out[source] = value
    return out
