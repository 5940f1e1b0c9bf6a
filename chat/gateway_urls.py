"""The OpenAI-compatible gateway under /v1/ (chat/gateway.py); any other /v1/ path is a 404 in OpenAI's shape."""

from django.urls import path, re_path

from chat import gateway

app_name = "gateway"

urlpatterns = [
    path("chat/completions", gateway.ChatCompletionsGateway.as_view(), name="chat-completions"),
    path("models", gateway.ModelsGateway.as_view(), name="models"),
    re_path(r"^(?P<path>.*)$", gateway.not_found, name="not-found"),
]
