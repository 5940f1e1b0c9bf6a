from django.urls import path

from chat import api, share_api
from chat.porting import api as porting_api

app_name = "chat-api"

urlpatterns = [
    path("conversations", api.ConversationListApi.as_view(), name="conversations"),
    path("conversations/<uuid:conversation_id>", api.ConversationDetailApi.as_view(), name="conversation"),
    path("conversations/<uuid:conversation_id>/messages", api.MessageListApi.as_view(), name="messages"),
    path("personas", api.PersonaListApi.as_view(), name="personas"),
    path("personas/<uuid:persona_id>", api.PersonaDetailApi.as_view(), name="persona"),
    path("models", api.ModelListApi.as_view(), name="models"),
    path("conversations/<uuid:conversation_id>/shares", share_api.ShareLinkCreateApi.as_view(), name="conversation-shares"),
    path("shares", share_api.ShareLinkListApi.as_view(), name="shares"),
    path("shares/<uuid:share_link_id>", share_api.ShareLinkDetailApi.as_view(), name="share"),
    path("conversations/<uuid:conversation_id>/export", porting_api.ConversationExportApi.as_view(), name="conversation-export"),
    path("exports", porting_api.ExportListApi.as_view(), name="exports"),
    path("exports/<uuid:export_id>", porting_api.ExportDetailApi.as_view(), name="export"),
    path("exports/<uuid:export_id>/download", porting_api.ExportDownloadApi.as_view(), name="export-download"),
    path("imports", porting_api.ImportListApi.as_view(), name="imports"),
    path("imports/<uuid:import_id>", porting_api.ImportDetailApi.as_view(), name="import"),
    path("search", api.SearchApi.as_view(), name="search"),
]
