"""/billing/...: the organization's billing page and its changes."""

from django.urls import path

from billing import views

app_name = "billing"

urlpatterns = [
    path("", views.billing_page, name="page"),
    path("<uuid:organization_id>/change/", views.plan_change, name="change"),
    path("<uuid:organization_id>/cancel/", views.subscription_cancel, name="cancel"),
    path("<uuid:organization_id>/resume/", views.subscription_resume, name="resume"),
]
