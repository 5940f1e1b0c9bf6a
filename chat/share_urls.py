"""/s/<token>/: a shared conversation's public read-only page (a short link, outside /chat/)."""

from django.urls import path

from chat import share_views

urlpatterns = [path("<str:token>/", share_views.share_open, name="share")]
