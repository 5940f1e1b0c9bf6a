from django.urls import path

from chat import api

app_name = "chat-api"

urlpatterns = [
    path("conversations", api.ConversationListApi.as_view(), name="conversations"),
    path("conversations/<uuid:conversation_id>", api.ConversationDetailApi.as_view(), name="conversation"),
    path("conversations/<uuid:conversation_id>/messages", api.MessageListApi.as_view(), name="messages"),
    path("personas", api.PersonaListApi.as_view(), name="personas"),
    path("personas/<uuid:persona_id>", api.PersonaDetailApi.as_view(), name="persona"),
    path("models", api.ModelListApi.as_view(), name="models"),
    path("search", api.SearchApi.as_view(), name="search"),
]
