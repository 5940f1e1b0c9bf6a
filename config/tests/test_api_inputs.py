"""config/api/inputs.validated_body's plain-text path takes only what DRF would accept, as DRF would
validate it; everything else goes to the serializer, which answers the errors."""

import pytest
from django.core.validators import MaxLengthValidator, RegexValidator
from rest_framework import serializers
from rest_framework.exceptions import ValidationError

from chat.serializers import MessageIn
from config.api import inputs


class Texts(serializers.Serializer):
    name = serializers.CharField(max_length=5, min_length=2)
    note = serializers.CharField(required=False, allow_blank=True, trim_whitespace=False)
    code = serializers.CharField(required=False, default="none")
    tag = serializers.CharField(required=False, source="label")


class WithOwnCheck(serializers.Serializer):
    name = serializers.CharField(validators=[RegexValidator(r"^[a-z]+$")])


class WithFieldMethod(serializers.Serializer):
    name = serializers.CharField()

    def validate_name(self, value):
        return value.upper()


class WithOwnInit(serializers.Serializer):
    name = serializers.CharField()

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if isinstance(kwargs.get("data"), dict) and kwargs["data"].get("strict"):
            self.fields["name"].max_length = 2
            self.fields["name"].validators.append(MaxLengthValidator(2))


class WithNumber(serializers.Serializer):
    name = serializers.CharField()
    count = serializers.IntegerField()


BODIES = [
    {"content": "hello"},
    {"content": "  padded  \n", "provider": "echo", "model": ""},
    {"content": "x", "provider": "  ", "unknown": [1, 2]},
    {"content": ""},
    {"content": "   "},
    {"content": "a\x00b"},
    {"content": "a\ud800b"},
    {"content": "x" * 200_001},
    {"content": 5},
    {"content": True},
    {"content": None},
    {"content": ["a"]},
    {"content": {"a": 1}},
    {"provider": "echo"},
    {},
    {"name": "ab"},
    {"name": "a"},
    # with `code` given, so its default does not send Texts to DRF
    {"name": "ab", "code": "c"},
    {"name": " abc ", "code": "c"},
    {"name": "a", "code": "c"},
    {"name": "  a  ", "code": "c"},
    {"name": "abcdef", "code": "c"},
    {"name": "ab", "note": "  ", "code": "c"},
    {"name": "ab", "note": "", "code": "c"},
    {"name": "ab", "note": " x ", "code": "c"},
    {"name": "ab", "tag": "t", "code": "c"},
    {"name": "ab", "tag": "", "code": "c"},
    {"name": 12, "code": "c"},
    {"name": "AB", "code": "c"},
    {"name": "abc", "strict": True},
    [],
    "text",
]
SERIALIZERS = [MessageIn, Texts, WithOwnCheck, WithFieldMethod, WithOwnInit, WithNumber]


class _Request:
    def __init__(self, data):
        self.data = data


def _drf(serializer_class, data):
    serializer = serializer_class(data=data)
    return serializer.validated_data if serializer.is_valid() else None


@pytest.mark.parametrize("serializer_class", SERIALIZERS, ids=lambda cls: cls.__name__)
@pytest.mark.parametrize("body", BODIES, ids=repr)
def test_the_plain_path_accepts_only_what_drf_accepts_and_as_drf_does(serializer_class, body):
    plan = inputs._text_plan(serializer_class)
    fast = None if plan is None else inputs._text_valid(plan, body)
    drf = _drf(serializer_class, body)
    if fast is not None:
        assert drf is not None and list(fast.items()) == list(drf.items())
    if drf is None:  # refused: validated_body raises DRF's own error
        with pytest.raises(ValidationError) as raised:
            inputs.validated_body(serializer_class, _Request(body))
        serializer = serializer_class(data=body)
        assert not serializer.is_valid() and raised.value.detail == serializer.errors
    else:
        assert inputs.validated_body(serializer_class, _Request(body)) == drf


def test_the_plain_path_is_taken_for_a_valid_message_and_not_where_drf_must_decide():
    assert inputs._text_valid(inputs._text_plan(MessageIn), {"content": " hi "}) == {"content": "hi"}
    assert inputs._text_valid(inputs._text_plan(Texts), {"name": "ab", "code": "c", "tag": "t"}) == {
        "name": "ab",
        "code": "c",
        "label": "t",
    }
    assert inputs._text_valid(inputs._text_plan(Texts), {"name": "ab"}) is None  # `code` has a default to fill
    assert [inputs._text_plan(cls) for cls in (WithOwnCheck, WithFieldMethod, WithOwnInit, WithNumber)] == [None] * 4
