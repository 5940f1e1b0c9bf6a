"""The chat REST API (/api/v1/): conversations, their messages (sent and streamed), personas,
the model catalog and search. Each view parses input, calls one service or selector, renders.

Another user's conversation or persona is 404 (row-level security hides it). API keys need
`chat:read` to read and `chat:write` to change or send. Refusals answer 402 (quota), 429
(rate, with Retry-After), 403 (plan) or 400 (unknown model, no price, no key).
"""

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.exceptions import NotFound
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.utils.urls import replace_query_param
from rest_framework.views import APIView

from accounts.models import ApiKey
from chat import selectors, services
from chat.response_cache import HEADER as CACHE_HEADER
from chat.response_cache import header_choice
from chat.serializers import (
    ConversationFilter,
    ConversationIn,
    ConversationOut,
    MessageIn,
    MessageOut,
    ModelPriceOut,
    PersonaSerializer,
    ReplyOut,
    SearchPageOut,
    SearchQuery,
    StreamQuery,
)
from chat.streaming import reply_stream_response
from config.api.errors import error_responses
from config.api.inputs import validated_body, validated_query
from config.api.negotiation import EventStreamNegotiation
from config.api.outputs import Representation
from config.api.pagination import StrictCursorPagination
from config.db import rls
from config.errors import NotFoundError

READ, WRITE = ApiKey.Scope.CHAT_READ.value, ApiKey.Scope.CHAT_WRITE.value
CHAT_SCOPES = {"GET": READ, "HEAD": READ, "OPTIONS": READ, "*": WRITE}
SEND_ERRORS = error_responses(400, 401, 402, 403, 404, 429)


class MessageCursor(StrictCursorPagination):
    ordering = "sequence"
    page_size = 50

    def decode_cursor(self, request):
        """DRF's, with the position read as the sequence number it is: DRF passes it on as text,
        and a forged one ('p=abc') reached the query as a 500; now DRF's 404 "Invalid cursor"."""
        cursor = super().decode_cursor(request)
        if cursor is None or cursor.position is None:
            return cursor
        try:
            return cursor._replace(position=int(cursor.position))
        except ValueError:
            raise NotFound(self.invalid_cursor_message) from None


def _page(view: APIView, request, queryset, serializer_class) -> Response:
    paginator = view.pagination_class()
    page = paginator.paginate_queryset(queryset, request, view=view)
    return paginator.get_paginated_response(serializer_class(page, many=True).data)


def _api_key_id(request):
    return request.auth.pk if isinstance(request.auth, ApiKey) else None


def _persona(request, fields: dict):
    """Swap `persona_id` for the user's persona (404 if not theirs); None clears it."""
    if "persona_id" in fields:
        persona_id = fields.pop("persona_id")
        fields["persona"] = selectors.persona_get(user=request.user, persona_id=persona_id) if persona_id else None
    return fields


# --- Conversations -------------------------------------------------------------------


class ConversationListApi(APIView):
    required_scopes = CHAT_SCOPES
    pagination_class = api_settings.DEFAULT_PAGINATION_CLASS

    @extend_schema(parameters=[ConversationFilter], responses={200: ConversationOut(many=True), **error_responses(400, 401, 403, 404)})
    def get(self, request):
        filters = validated_query(ConversationFilter, request)
        return _page(self, request, selectors.conversation_list(user=request.user, **filters), ConversationOut)

    @extend_schema(request=ConversationIn, responses={201: ConversationOut, **error_responses(400, 401, 403, 404)})
    def post(self, request):
        fields = _persona(request, dict(validated_body(ConversationIn, request)))
        for ignored in ("summary", "is_archived"):  # a new conversation starts unsummarized and active
            fields.pop(ignored, None)
        conversation = services.conversation_create(user=request.user, **fields)
        return Response(ConversationOut(conversation).data, status=status.HTTP_201_CREATED)


class ConversationDetailApi(APIView):
    required_scopes = CHAT_SCOPES

    @extend_schema(responses={200: ConversationOut, **error_responses(401, 403, 404)})
    def get(self, request, conversation_id):
        return Response(ConversationOut(selectors.conversation_get(user=request.user, conversation_id=conversation_id)).data)

    @extend_schema(request=ConversationIn, responses={200: ConversationOut, **error_responses(400, 401, 403, 404)})
    def patch(self, request, conversation_id):
        conversation = selectors.conversation_get(user=request.user, conversation_id=conversation_id)
        fields = _persona(request, dict(validated_body(ConversationIn, request, partial=True)))
        fields.pop("organization_id", None)
        conversation = services.conversation_update(user=request.user, conversation=conversation, **fields)
        return Response(ConversationOut(conversation).data)

    @extend_schema(responses={204: None, **error_responses(401, 403, 404)})
    def delete(self, request, conversation_id):
        conversation = selectors.conversation_get(user=request.user, conversation_id=conversation_id)
        services.conversation_delete(user=request.user, conversation=conversation)
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- Messages ------------------------------------------------------------------------


# Built once: a serializer deep-copies its declared fields on every instantiation (35 here), and its
# output keeps no state between calls. Rendered as DRF would, without its per-field steps
# (config/api/outputs.py): the metered POST's answer.
_REPLY_OUT = Representation(ReplyOut())


# A send waits on the provider: its POST keeps no request transaction (each step opens its own).
@rls.own_transactions("POST")
class MessageListApi(APIView):
    required_scopes = CHAT_SCOPES
    pagination_class = MessageCursor
    content_negotiation_class = EventStreamNegotiation  # `Accept: text/event-stream` alone gets its stream

    @extend_schema(responses={200: MessageOut(many=True), **error_responses(401, 403, 404)})
    def get(self, request, conversation_id):
        conversation = selectors.conversation_get(user=request.user, conversation_id=conversation_id)
        return _page(self, request, selectors.message_list(conversation=conversation), MessageOut)

    @extend_schema(
        request=MessageIn,
        parameters=[
            OpenApiParameter("stream", OpenApiTypes.BOOL, description="Answer with server-sent events: deltas, then `done`."),
            OpenApiParameter(
                CACHE_HEADER,
                OpenApiTypes.STR,
                OpenApiParameter.HEADER,
                enum=["on", "any", "off"],
                description="The response cache, where the plan allows it: `on` (temperature 0 only), `any` (any temperature) or "
                "`off`. Without it the persona's choice applies.",
            ),
        ],
        responses={201: ReplyOut, **SEND_ERRORS},
    )
    def post(self, request, conversation_id):
        body = validated_body(MessageIn, request)
        send = {
            "user": request.user,
            "conversation_id": conversation_id,
            "content": body["content"],
            "provider": body.get("provider") or None,
            "model": body.get("model") or None,
            "api_key_id": _api_key_id(request),
            "response_cache": header_choice(request.headers.get(CACHE_HEADER)),
        }
        # Most sends carry no `stream`: its default (false) needs no serializer.
        if not ("stream" in request.query_params and validated_query(StreamQuery, request)["stream"]):
            reply = services.message_send(**send)
            data = {"conversation": reply.conversation, "user_message": reply.user_message, "message": reply.message}
            return Response(_REPLY_OUT(data), status=status.HTTP_201_CREATED)
        # Checked and stored in short transactions (a refusal is a plain 4xx); the body opens its own.
        return reply_stream_response(services.message_prepare(**send))


# --- Personas ------------------------------------------------------------------------


class PersonaListApi(APIView):
    required_scopes = CHAT_SCOPES
    pagination_class = api_settings.DEFAULT_PAGINATION_CLASS

    @extend_schema(responses={200: PersonaSerializer(many=True), **error_responses(401, 403)})
    def get(self, request):
        return _page(self, request, selectors.persona_list(user=request.user), PersonaSerializer)

    @extend_schema(request=PersonaSerializer, responses={201: PersonaSerializer, **error_responses(400, 401, 403)})
    def post(self, request):
        persona = services.persona_create(user=request.user, **validated_body(PersonaSerializer, request))
        return Response(PersonaSerializer(persona).data, status=status.HTTP_201_CREATED)


class PersonaDetailApi(APIView):
    required_scopes = CHAT_SCOPES

    @extend_schema(responses={200: PersonaSerializer, **error_responses(401, 403, 404)})
    def get(self, request, persona_id):
        return Response(PersonaSerializer(selectors.persona_get(user=request.user, persona_id=persona_id)).data)

    @extend_schema(request=PersonaSerializer, responses={200: PersonaSerializer, **error_responses(400, 401, 403, 404)})
    def patch(self, request, persona_id):
        persona = selectors.persona_get(user=request.user, persona_id=persona_id)
        persona = services.persona_update(user=request.user, persona=persona, **validated_body(PersonaSerializer, request, partial=True))
        return Response(PersonaSerializer(persona).data)

    @extend_schema(responses={204: None, **error_responses(401, 403, 404)})
    def delete(self, request, persona_id):
        services.persona_delete(user=request.user, persona=selectors.persona_get(user=request.user, persona_id=persona_id))
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- The catalog ---------------------------------------------------------------------


class ModelListApi(APIView):
    required_scopes = READ

    @extend_schema(responses={200: ModelPriceOut(many=True), **error_responses(401, 403)})
    def get(self, request):
        return Response(ModelPriceOut(selectors.model_price_list(), many=True).data)


# --- Search --------------------------------------------------------------------------


class SearchApi(APIView):
    required_scopes = READ

    @extend_schema(parameters=[SearchQuery], responses={200: SearchPageOut, **error_responses(400, 401, 403, 404)})
    def get(self, request):
        """Your messages and conversation titles matching `q`, best first, with highlighted snippets."""
        params = validated_query(SearchQuery, request)
        page, size = params["page"], params["page_size"]
        found = selectors.conversation_search(user=request.user, query=params["q"], limit=size, offset=(page - 1) * size)
        if page > 1 and not found.hits:
            raise NotFoundError("No such page of results.")
        url = request.build_absolute_uri()
        data = {
            "count": found.total,
            # No link past the last page the API serves (SEARCH_PAGES_MAX), which it would refuse.
            "next": replace_query_param(url, "page", page + 1) if found.has_next and page < selectors.SEARCH_PAGES_MAX else None,
            "previous": replace_query_param(url, "page", page - 1) if page > 1 else None,
            "results": found.hits,
        }
        return Response(SearchPageOut(data).data)
