"""config/api/outputs.Representation renders exactly what DRF's to_representation does: same keys,
same order, same values, same errors, for every kind it converts itself and for those it leaves
to the field."""

import functools
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from types import SimpleNamespace

import pytest
from django.utils import timezone
from rest_framework import serializers

from config.api.outputs import Representation

U = uuid.UUID("7b0c9a3e-1111-4222-8333-944455556666")


class Inner(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()


class Everything(serializers.Serializer):
    text = serializers.CharField()
    number = serializers.IntegerField()
    ident = serializers.UUIDField(allow_null=True)
    hex_ident = serializers.UUIDField(format="hex")
    flag = serializers.BooleanField()
    choice = serializers.ChoiceField(choices=[("a", "A"), (1, "One"), ("", "Blank")])
    data = serializers.JSONField()
    tags = serializers.ListField(child=serializers.CharField())
    numbers = serializers.ListField(child=serializers.IntegerField())
    when = serializers.DateTimeField()
    when_formatted = serializers.DateTimeField(format="%Y-%m-%d", source="when")
    when_in_utc = serializers.DateTimeField(default_timezone=UTC, source="when")
    money = serializers.DecimalField(max_digits=20, decimal_places=10)
    inner = Inner(allow_null=True)
    inners = Inner(many=True)
    dotted = serializers.CharField(source="inner.name", required=False)  # skipped when inner is None
    whole = serializers.SerializerMethodField()
    called = serializers.CharField()
    optional = serializers.CharField(required=False)
    defaulted = serializers.CharField(default="fallback")
    nullable = serializers.CharField(allow_null=True)
    secret = serializers.CharField(write_only=True)
    email = serializers.EmailField()

    def get_whole(self, instance):
        return "method"


def _instance(**overrides):
    when = datetime(2026, 11, 30, 15, 4, 5, 123456, tzinfo=UTC)
    values = {
        "text": "hi\x00\u202e",
        "number": 7,
        "ident": U,
        "hex_ident": U,
        "flag": True,
        "choice": "a",
        "data": {"deep": [1, {"x": None}]},
        "tags": ["a", "b"],
        "numbers": [1, 2],
        "when": when,
        "money": Decimal("0.00012345678912"),
        "inner": SimpleNamespace(id=U, name="in"),
        "inners": [SimpleNamespace(id=U, name="one")],
        "called": functools.partial(lambda text: text.upper(), "from a partial"),
        "optional": "here",
        "defaulted": "given",
        "nullable": "set",
        "secret": "never shown",
        "email": "a@b.c",
    }
    values.update(overrides)
    return values


VARIANTS = {
    "plain": {},
    "text from a number": {"text": 5},
    "number from text and Decimal": {"number": "12", "money": Decimal("3")},
    "uuid as text": {"ident": str(U)},
    "null uuid": {"ident": None},
    "flag from 0, 'false' and 1": {"flag": 0},
    "flag from text": {"flag": "false"},
    "flag truthy": {"flag": 1},
    "flag null": {"flag": None},
    "choice by int, blank and unknown": {"choice": 1},
    "choice blank": {"choice": ""},
    "choice by text of an int key": {"choice": "1"},
    "choice unknown": {"choice": "zzz"},
    "tags with None and numbers": {"tags": ["a", None, 3]},
    "tags as a tuple": {"tags": ("a", "b")},
    "naive datetime": {"when": datetime(2026, 1, 2, 3, 4, 5)},
    "datetime as text": {"when": "2026-01-02T03:04:05Z"},
    "datetime in another zone": {"when": datetime(2026, 6, 1, 12, tzinfo=timezone.get_fixed_timezone(330))},
    "nested none": {"inner": None},
    "missing optional, default and nullable": "drop:optional,defaulted,nullable",
    "a function attribute": {"called": lambda: "from a function"},
    "a text attribute": {"called": "plain"},
}


def _both(serializer, instance):
    def run(render):
        try:
            return "ok", render(instance)
        except Exception as exc:  # the same error, or the test fails
            return "error", type(exc)

    drf, ours = run(serializer.to_representation), run(Representation(serializer))
    if drf[0] == "ok" and ours[0] == "ok":
        assert list(ours[1].items()) == list(drf[1].items())  # order too
    assert ours == drf
    return ours


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("zone", ["UTC", "Asia/Kolkata"])
@pytest.mark.parametrize("as_mapping", [True, False], ids=["mapping", "object"])
def test_every_kind_renders_as_drf_does(variant, zone, as_mapping):
    change = VARIANTS[variant]
    values = _instance(**(change if isinstance(change, dict) else {}))
    if isinstance(change, str):
        for name in change.removeprefix("drop:").split(","):
            del values[name]
    instance = values if as_mapping else SimpleNamespace(**values)
    with timezone.override(zone):
        kind, _ = _both(Everything(), instance)
    assert kind == "ok"  # both rendered: a test where both fail alike would compare nothing


def test_a_missing_required_value_is_the_same_error():
    values = _instance()
    del values["text"]
    assert _both(Everything(), values) == ("error", KeyError)


class When(serializers.Serializer):
    when = serializers.DateTimeField()


def test_a_datetime_past_the_calendar_is_the_same_error():
    values = {"when": datetime.max.replace(tzinfo=timezone.get_fixed_timezone(-60))}
    with timezone.override("Asia/Kolkata"):
        assert _both(When(), values) == ("error", serializers.ValidationError)


def test_a_serializer_with_its_own_to_representation_is_refused():
    class Own(serializers.Serializer):
        def to_representation(self, instance):
            return {}

    with pytest.raises(TypeError, match="overrides to_representation"):
        Representation(Own())
