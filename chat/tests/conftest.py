import pytest


@pytest.fixture
def plans(django_db_blocker):
    from billing.tests.factories import make_plans

    with django_db_blocker.unblock():
        return make_plans()


@pytest.fixture
def alice(catalog, plans):
    from accounts.tests.factories import make_user

    return make_user(email="alice@example.com")


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def server():
    """A local server speaking the providers' wire formats (chat/tests/provider_servers.py)."""
    from chat.tests.provider_servers import ProviderServer

    server = ProviderServer().start()
    yield server
    server.stop()
