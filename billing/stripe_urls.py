"""Payment and revenue routes under /billing/ (the billing page's own routes are in billing/urls.py)."""

from django.urls import path

from billing import revenue_views, stripe_views, webhooks

app_name = "billing_payments"

urlpatterns = [
    path("checkout/", stripe_views.checkout, name="checkout"),
    path("portal/", stripe_views.portal, name="portal"),
    path("stripe/webhook", webhooks.stripe_webhook, name="stripe-webhook"),
    path("staff/", revenue_views.staff_revenue, name="staff"),
]
