from rest_framework import serializers

from chat.models import (
    MAX_SYSTEM_PROMPT,
    MAX_TAG_LENGTH,
    MAX_TAGS,
    MONEY,
    Message,
    ModelPrice,
    Persona,
    tag_composed,
    tags_kept,
    validate_one_line,
)
from chat.selectors import SEARCH_LIMIT_MAX, SEARCH_MAX_LENGTH, SEARCH_PAGES_MAX
from chat.services import MAX_CONTENT
from config.api.inputs import ShortListField, StrictBooleanField, StringField, UUIDStringField


def _no_comma(tag: str) -> None:
    if "," in tag:  # the pages separate tags with commas: one would come back as two
        raise serializers.ValidationError("A tag cannot contain a comma.")


class TagField(StringField):
    """A tag composed (tag_composed) before its checks: its length is the stored one, so a tag
    pasted with combining accents is taken, and found, as the same tag typed."""

    def to_internal_value(self, data):
        return tag_composed(super().to_internal_value(data))


TAG = TagField(max_length=MAX_TAG_LENGTH, validators=[_no_comma, validate_one_line])


# Output serializers declare their fields: a ModelSerializer rebuilds them from the model on
# every instantiation, which cost the metered send about 1 ms of its answer.
class ConversationOut(serializers.Serializer):
    id = serializers.UUIDField(read_only=True)
    organization_id = serializers.UUIDField(read_only=True)
    title = serializers.CharField(read_only=True)
    summary = serializers.CharField(read_only=True)
    persona_id = serializers.UUIDField(allow_null=True, read_only=True)
    tags = serializers.ListField(child=serializers.CharField(), read_only=True)
    is_archived = serializers.BooleanField(read_only=True)
    message_count = serializers.IntegerField(read_only=True)
    total_tokens = serializers.IntegerField(read_only=True)
    total_cost = serializers.DecimalField(**MONEY, read_only=True)
    created_at = serializers.DateTimeField(read_only=True)
    updated_at = serializers.DateTimeField(read_only=True)


class ConversationIn(serializers.Serializer):
    title = StringField(max_length=200, required=False, allow_blank=True, validators=[validate_one_line])
    summary = StringField(max_length=10_000, required=False, allow_blank=True)
    tags = ShortListField(child=TAG, max_length=MAX_TAGS, required=False)
    is_archived = StrictBooleanField(required=False)
    persona_id = UUIDStringField(required=False, allow_null=True)
    organization_id = UUIDStringField(required=False)

    def validate_tags(self, tags: list[str]) -> list[str]:
        """Each tag once (each composed by TagField), in the order given, as the conversation page keeps them."""
        return tags_kept(tags)


class ConversationFilter(serializers.Serializer):
    archived = serializers.BooleanField(required=False, default=None)  # no allow_null: "?archived=" is a 400, not "both"
    q = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")
    tag = TagField(max_length=MAX_TAG_LENGTH, required=False, allow_blank=True, default="")
    persona_id = serializers.UUIDField(required=False, default=None)
    organization_id = serializers.UUIDField(required=False, default=None)


class MessageOut(serializers.Serializer):
    id = serializers.UUIDField(read_only=True)
    conversation_id = serializers.UUIDField(read_only=True)
    sequence = serializers.IntegerField(read_only=True)
    role = serializers.ChoiceField(choices=Message.Role.choices, read_only=True)
    content = serializers.CharField(read_only=True)
    provider = serializers.CharField(read_only=True)
    model = serializers.CharField(read_only=True)
    input_tokens = serializers.IntegerField(read_only=True)
    output_tokens = serializers.IntegerField(read_only=True)
    cost = serializers.DecimalField(**MONEY, read_only=True)
    latency_ms = serializers.IntegerField(read_only=True)
    status = serializers.ChoiceField(choices=Message.Status.choices, read_only=True)
    error = serializers.CharField(read_only=True)
    metadata = serializers.JSONField(read_only=True)
    created_at = serializers.DateTimeField(read_only=True)


class MessageIn(serializers.Serializer):
    content = StringField(max_length=MAX_CONTENT, trim_whitespace=True)
    provider = StringField(max_length=32, required=False, allow_blank=True)
    model = StringField(max_length=100, required=False, allow_blank=True)


class StreamQuery(serializers.Serializer):
    stream = serializers.BooleanField(required=False, default=False)


class ReplyOut(serializers.Serializer):
    conversation = ConversationOut()
    user_message = MessageOut()
    message = MessageOut()


class PersonaSerializer(serializers.ModelSerializer):
    name = StringField(max_length=100, validators=[validate_one_line])  # as the personas page refuses
    system_prompt = StringField(max_length=MAX_SYSTEM_PROMPT)
    provider = StringField(max_length=32, required=False, allow_blank=True)
    model = StringField(max_length=100, required=False, allow_blank=True)
    response_cache = StrictBooleanField(required=False)
    temperature = serializers.DecimalField(max_digits=3, decimal_places=2, min_value=0, max_value=2, required=False, allow_null=True)

    class Meta:
        model = Persona
        fields = [
            "id",
            "name",
            "system_prompt",
            "provider",
            "model",
            "temperature",
            "response_cache",
            "usage_count",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["id", "usage_count", "created_at", "updated_at"]


class ModelPriceOut(serializers.ModelSerializer):
    class Meta:
        model = ModelPrice
        fields = ["provider", "model", "display_name", "context_window", "input_price", "output_price", "effective_from", "effective_to"]


class SearchQuery(serializers.Serializer):
    # Blank, too long and control characters are the search's own 400s (chat.selectors.search_query_clean).
    q = serializers.CharField(
        allow_blank=True, trim_whitespace=False, help_text=f'Words, "a phrase", -excluded, or; at most {SEARCH_MAX_LENGTH} characters.'
    )
    page = serializers.IntegerField(min_value=1, max_value=SEARCH_PAGES_MAX, default=1)
    page_size = serializers.IntegerField(min_value=1, max_value=SEARCH_LIMIT_MAX, default=20)


class SearchHitOut(serializers.Serializer):
    conversation_id = serializers.UUIDField()
    conversation_title = serializers.CharField()
    message_id = serializers.UUIDField(allow_null=True, help_text="Null when the conversation's title matched and none of its messages.")
    role = serializers.CharField(help_text="The message's role; empty for a title hit.")
    created_at = serializers.DateTimeField()
    rank = serializers.FloatField()
    snippet = serializers.CharField(source="snippet_plain", help_text="The matching passage as plain text.")
    snippet_html = serializers.CharField(source="snippet", help_text="The same passage as HTML: text escaped, matches in <mark>.")


class SearchPageOut(serializers.Serializer):
    count = serializers.IntegerField()
    next = serializers.URLField(allow_null=True)
    previous = serializers.URLField(allow_null=True)
    results = SearchHitOut(many=True)
