import os

import django
from django.core.handlers.wsgi import WSGIHandler

from config.collector import garbage_collector_tune
from config.resolving import ResolveOnceMixin

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.production")


class ResolveOnceWSGIHandler(ResolveOnceMixin, WSGIHandler):
    """Django's WSGI handler, taking the URL match the middleware made (config/resolving.py)."""


django.setup(set_prefix=False)  # as get_wsgi_application
application = ResolveOnceWSGIHandler()
garbage_collector_tune()
