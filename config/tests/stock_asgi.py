"""Django's own ASGI handler (middleware chain in async mode), which config/asgi.py's
OneHopASGIHandler replaced: bench_serving serves it beside ours to measure the difference."""

import os

from django.core.asgi import get_asgi_application

from config.collector import garbage_collector_tune

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.production")
application = get_asgi_application()
garbage_collector_tune()  # as ours and WSGI do: the comparison is of the handlers
