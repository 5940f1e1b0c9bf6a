import uuid

from drf_spectacular.utils import extend_schema
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.reverse import reverse
from rest_framework.views import APIView

PLACEHOLDER_ID = uuid.UUID(int=0)


class ApiRootView(APIView):
    """Where everything in API v1 is: the endpoints, the schema and its docs."""

    permission_classes = [AllowAny]
    # Collection endpoints only; items are reached from their collection.
    endpoint_names = [
        "accounts-api:me",
        "accounts-api:preferences",
        "accounts-api:organizations",
        "accounts-api:invitation-accept",
        "accounts-api:api-keys",
        "accounts-api:provider-credentials",
        "accounts-api:sessions",
        "analytics-api:events",
        "analytics-api:usage-summary",
        "analytics-api:usage-daily",
        "billing-api:plans",
    ]
    # Endpoints under an item, as URI templates (RFC 6570): the placeholder id becomes `{argument}`.
    endpoint_templates = {"billing-api:subscription": "organization_id"}

    @extend_schema(exclude=True)
    def get(self, request):
        endpoints = {}
        for name in self.endpoint_names:
            endpoints[name.split(":")[-1]] = reverse(name, request=request)
        for name, argument in self.endpoint_templates.items():
            url = reverse(name, kwargs={argument: PLACEHOLDER_ID}, request=request)
            endpoints[name.split(":")[-1]] = url.replace(str(PLACEHOLDER_ID), f"{{{argument}}}")
        return Response(
            {
                "version": "v1",
                "endpoints": endpoints,
                "schema": reverse("schema", request=request),
                "docs": reverse("swagger-ui", request=request),
            }
        )
