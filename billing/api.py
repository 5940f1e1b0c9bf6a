"""The billing REST API (/api/v1/): plans, and an organization's subscription.

API keys need `billing:read` to read and `billing:write` to change a plan; members read,
owners and admins change (the service and the row-level policies both say so). With
payment configured, a paid upgrade answers 201 with the Stripe Checkout URL that buys it."""

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import selectors as accounts_selectors
from accounts.models import ApiKey
from billing import selectors, stripe_services
from billing.serializers import CheckoutOut, PlanOut, SubscriptionChangeIn, SubscriptionOut
from config.api.errors import error_responses
from config.db import rls
from config.errors import NotFoundError
from config.http import site_url

READ, WRITE = ApiKey.Scope.BILLING_READ.value, ApiKey.Scope.BILLING_WRITE.value
BILLING_SCOPES = {"GET": READ, "HEAD": READ, "OPTIONS": READ, "*": WRITE}


class PlanListApi(APIView):
    required_scopes = BILLING_SCOPES

    @extend_schema(responses={200: PlanOut(many=True), **error_responses(401, 403)})
    def get(self, request):
        return Response(PlanOut(selectors.plan_list(), many=True).data)


@rls.own_transactions("POST")  # a paid upgrade calls Stripe: no transaction is held while it answers
class SubscriptionApi(APIView):
    required_scopes = BILLING_SCOPES

    @extend_schema(responses={200: SubscriptionOut, **error_responses(401, 403, 404)})
    def get(self, request, organization_id):
        organization = accounts_selectors.organization_get(user=request.user, organization_id=organization_id)
        return Response(SubscriptionOut(selectors.subscription_overview(organization=organization)).data)

    @extend_schema(
        request=SubscriptionChangeIn,
        responses={
            200: OpenApiResponse(SubscriptionOut, description="Changed, scheduled, or (payment not configured) requested."),
            201: OpenApiResponse(CheckoutOut, description="A paid upgrade with payment configured: pay at this Stripe Checkout page."),
            **error_responses(400, 401, 403, 404, 502),
        },
    )
    def post(self, request, organization_id):
        with rls.atomic_as(request.user.pk):
            organization = accounts_selectors.organization_get(user=request.user, organization_id=organization_id)
            data = SubscriptionChangeIn(data=request.data)
            data.is_valid(raise_exception=True)
            plan = selectors.plan_get(slug=data.validated_data["plan"])
        if plan is None:
            raise NotFoundError(f"There is no plan called '{data.validated_data['plan']}'.", {"code": "plan_not_found"})
        outcome = stripe_services.subscription_change_or_checkout(
            actor=request.user,
            organization=organization,
            plan=plan,
            interval=data.validated_data["interval"],
            immediately=data.validated_data["immediately"],
            return_url=site_url(request) + selectors.billing_page_path(organization.pk),
        )
        if isinstance(outcome, str):
            return Response(CheckoutOut({"checkout_url": outcome}).data, status=status.HTTP_201_CREATED)
        with rls.atomic_as(request.user.pk):
            return Response(SubscriptionOut(selectors.subscription_overview(organization=organization)).data)
