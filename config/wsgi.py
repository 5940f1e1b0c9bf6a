import os

from django.core.wsgi import get_wsgi_application

from config.collector import garbage_collector_tune

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.production")
application = get_wsgi_application()
garbage_collector_tune()
