import pytest

from accounts.tests.factories import make_user


@pytest.fixture
def alice():
    return make_user(email="alice@example.com", display_name="Alice")


@pytest.fixture
def bob():
    return make_user(email="bob@example.com", display_name="Bob")
