from django.urls import path

from billing import api

app_name = "billing-api"

urlpatterns = [
    path("plans", api.PlanListApi.as_view(), name="plans"),
    path("organizations/<uuid:organization_id>/subscription", api.SubscriptionApi.as_view(), name="subscription"),
]
