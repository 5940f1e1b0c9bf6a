from django.urls import path

from accounts import api

app_name = "accounts-api"

urlpatterns = [
    path("me", api.MeApi.as_view(), name="me"),
]
