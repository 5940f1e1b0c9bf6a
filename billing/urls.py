"""/billing/...: the organization's billing page and its changes, payment at Stripe, Stripe's
webhook and the staff revenue page."""

from django.urls import path

from billing import revenue_views, stripe_views, views, webhooks

app_name = "billing"

urlpatterns = [
    path("", views.billing_page, name="page"),
    path("<uuid:organization_id>/change/", views.plan_change, name="change"),
    path("<uuid:organization_id>/cancel/", views.subscription_cancel, name="cancel"),
    path("<uuid:organization_id>/resume/", views.subscription_resume, name="resume"),
    path("checkout/", stripe_views.checkout, name="checkout"),
    path("portal/", stripe_views.portal, name="portal"),
    path("stripe/webhook", webhooks.stripe_webhook, name="stripe-webhook"),
    path("staff/", revenue_views.staff_revenue, name="staff"),
]
