from django.urls import path

from analytics import api

app_name = "analytics-api"

urlpatterns = [
    path("events", api.EventBatchApi.as_view(), name="events"),
    path("usage/summary", api.UsageSummaryApi.as_view(), name="usage-summary"),
    path("usage/daily", api.UsageDailyApi.as_view(), name="usage-daily"),
]
