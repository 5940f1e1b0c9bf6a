"""/chat/...: conversations, sending (the reply streams back), personas."""

from django.urls import path

from chat import share_views, views
from chat.porting import views as porting_views

app_name = "chat"

urlpatterns = [
    path("", views.conversation_list, name="list"),
    path("new/", views.conversation_new, name="new"),
    path("<uuid:conversation_id>/", views.conversation_detail, name="conversation"),
    path("<uuid:conversation_id>/edit/", views.conversation_update, name="update"),
    path("<uuid:conversation_id>/archive/", views.conversation_archive, name="archive"),
    path("<uuid:conversation_id>/delete/", views.conversation_delete, name="delete"),
    path("<uuid:conversation_id>/messages/", views.message_send, name="send"),
    path("personas/", views.persona_list, name="personas"),
    path("personas/<uuid:persona_id>/", views.persona_edit, name="persona"),
    path("personas/<uuid:persona_id>/delete/", views.persona_delete, name="persona-delete"),
    path("<uuid:conversation_id>/shares/", share_views.share_conversation, name="share-conversation"),
    path("shares/", share_views.share_list, name="shares"),
    path("shares/<uuid:share_link_id>/revoke/", share_views.share_revoke, name="share-revoke"),
    path("<uuid:conversation_id>/export/", porting_views.conversation_export, name="export"),
    path("porting/", porting_views.porting, name="porting"),
    path("porting/imports/", porting_views.import_list, name="import-list"),
    path("porting/export/", porting_views.export_start, name="export-start"),
    path("exports/<str:token>/", porting_views.export_download, name="export-download"),
]
