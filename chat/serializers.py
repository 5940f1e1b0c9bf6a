from rest_framework import serializers

from chat.models import Conversation, Message, ModelPrice, Persona
from chat.services import MAX_CONTENT

TAG = serializers.CharField(max_length=50)


class ConversationOut(serializers.ModelSerializer):
    persona_id = serializers.UUIDField(allow_null=True)

    class Meta:
        model = Conversation
        fields = [
            "id",
            "organization_id",
            "title",
            "summary",
            "persona_id",
            "tags",
            "is_archived",
            "message_count",
            "total_tokens",
            "total_cost",
            "created_at",
            "updated_at",
        ]


class ConversationIn(serializers.Serializer):
    title = serializers.CharField(max_length=200, required=False, allow_blank=True)
    summary = serializers.CharField(max_length=10_000, required=False, allow_blank=True)
    tags = serializers.ListField(child=TAG, max_length=20, required=False)
    is_archived = serializers.BooleanField(required=False)
    persona_id = serializers.UUIDField(required=False, allow_null=True)
    organization_id = serializers.UUIDField(required=False)


class ConversationFilter(serializers.Serializer):
    archived = serializers.BooleanField(required=False, allow_null=True, default=None)
    q = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")
    tag = serializers.CharField(max_length=50, required=False, allow_blank=True, default="")
    persona_id = serializers.UUIDField(required=False, default=None)
    organization_id = serializers.UUIDField(required=False, default=None)


class MessageOut(serializers.ModelSerializer):
    class Meta:
        model = Message
        fields = [
            "id",
            "conversation_id",
            "sequence",
            "role",
            "content",
            "provider",
            "model",
            "input_tokens",
            "output_tokens",
            "cost",
            "latency_ms",
            "status",
            "error",
            "metadata",
            "created_at",
        ]


class MessageIn(serializers.Serializer):
    content = serializers.CharField(max_length=MAX_CONTENT, trim_whitespace=True)
    provider = serializers.CharField(max_length=32, required=False, allow_blank=True)
    model = serializers.CharField(max_length=100, required=False, allow_blank=True)


class StreamQuery(serializers.Serializer):
    stream = serializers.BooleanField(required=False, default=False)


class ReplyOut(serializers.Serializer):
    conversation = ConversationOut()
    user_message = MessageOut()
    message = MessageOut()


class PersonaSerializer(serializers.ModelSerializer):
    temperature = serializers.DecimalField(max_digits=3, decimal_places=2, min_value=0, max_value=2, required=False, allow_null=True)

    class Meta:
        model = Persona
        fields = ["id", "name", "system_prompt", "provider", "model", "temperature", "usage_count", "created_at", "updated_at"]
        read_only_fields = ["id", "usage_count", "created_at", "updated_at"]


class ModelPriceOut(serializers.ModelSerializer):
    class Meta:
        model = ModelPrice
        fields = ["provider", "model", "display_name", "context_window", "input_price", "output_price", "effective_from", "effective_to"]
