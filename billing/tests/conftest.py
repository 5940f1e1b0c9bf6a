import pytest


@pytest.fixture
def plans(django_db_blocker):
    from billing.tests.factories import make_plans

    with django_db_blocker.unblock():
        return make_plans()


@pytest.fixture
def fake_stripe(settings, plans, django_db_blocker):
    """Payment configured against a local server speaking Stripe's wire format; the paid
    plans carry Stripe price ids (pro monthly and yearly, enterprise monthly)."""
    from billing.tests import stripe_server
    from config.db import rls

    with django_db_blocker.unblock(), rls.privileged(reason="test factory"):
        for plan, monthly, yearly in ((plans["pro"], "price_pro_month", "price_pro_year"), (plans["enterprise"], "price_ent_month", "")):
            plan.stripe_monthly_price_id, plan.stripe_yearly_price_id = monthly, yearly
            plan.save(update_fields=["stripe_monthly_price_id", "stripe_yearly_price_id"])
    with stripe_server.fake_stripe_running() as fake:
        settings.STRIPE_SECRET_KEY, settings.STRIPE_WEBHOOK_SECRET = stripe_server.SECRET_KEY, stripe_server.WEBHOOK_SECRET
        settings.STRIPE_API_BASE = fake.url
        yield fake
