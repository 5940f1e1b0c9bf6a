"""Share links in the REST API: create one for a conversation, list yours, revoke one.

`POST /api/v1/conversations/{id}/shares` answers the link's `url` once (only its hash is
stored); `GET /api/v1/shares`; `DELETE /api/v1/shares/{id}` revokes (the link 404s at once).
Another user's conversation or link is 404. Keys need `chat:read` to list, `chat:write` to change.
"""

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import APIView

from chat import selectors, sharing
from chat.api import CHAT_SCOPES, _page
from chat.models import ShareLink
from chat.share_views import share_url
from config.api.errors import error_responses
from config.api.inputs import ZonedDateTimeField, validated_body


class ShareLinkOut(serializers.Serializer):
    id = serializers.UUIDField(read_only=True)
    conversation_id = serializers.UUIDField(read_only=True)
    audience = serializers.ChoiceField(choices=ShareLink.Audience.choices, read_only=True)
    status = serializers.CharField(read_only=True, help_text="`active`, `expired` or `revoked`.")
    expires_at = serializers.DateTimeField(read_only=True, allow_null=True, help_text="null: the link does not expire.")
    revoked_at = serializers.DateTimeField(read_only=True, allow_null=True, help_text="null: not revoked.")
    created_at = serializers.DateTimeField(read_only=True)


class ShareLinkCreatedOut(ShareLinkOut):
    url = serializers.URLField(read_only=True, help_text="The link, shown in this response only: store it now.")


class ShareLinkIn(serializers.Serializer):
    audience = serializers.ChoiceField(
        choices=ShareLink.Audience.choices,
        default=ShareLink.Audience.ORGANIZATION,
        error_messages={"invalid_choice": "The audience must be 'organization' (signed-in members) or 'anyone'."},
    )
    expires_at = ZonedDateTimeField(required=False, allow_null=True, default=None)


class ShareLinkCreateApi(APIView):
    required_scopes = CHAT_SCOPES

    @extend_schema(request=ShareLinkIn, responses={201: ShareLinkCreatedOut, **error_responses(400, 401, 403, 404)})
    def post(self, request, conversation_id):
        conversation = selectors.conversation_get(user=request.user, conversation_id=conversation_id)
        link, token = sharing.share_link_create(user=request.user, conversation=conversation, **validated_body(ShareLinkIn, request))
        data = {**ShareLinkOut(link).data, "url": share_url(request, token)}
        return Response(data, status=status.HTTP_201_CREATED)


class ShareLinkListApi(APIView):
    required_scopes = CHAT_SCOPES
    pagination_class = api_settings.DEFAULT_PAGINATION_CLASS

    @extend_schema(responses={200: ShareLinkOut(many=True), **error_responses(401, 403)})
    def get(self, request):
        return _page(self, request, sharing.share_link_list(user=request.user), ShareLinkOut)


class ShareLinkDetailApi(APIView):
    required_scopes = CHAT_SCOPES

    @extend_schema(responses={204: None, **error_responses(401, 403, 404)})
    def delete(self, request, share_link_id):
        link = sharing.share_link_get(user=request.user, share_link_id=share_link_id)
        sharing.share_link_revoke(user=request.user, share_link=link)
        return Response(status=status.HTTP_204_NO_CONTENT)
