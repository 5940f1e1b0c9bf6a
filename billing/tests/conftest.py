import pytest


@pytest.fixture
def plans(django_db_blocker):
    from billing.tests.factories import make_plans

    with django_db_blocker.unblock():
        return make_plans()
