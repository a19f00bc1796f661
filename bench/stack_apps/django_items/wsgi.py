import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.stack_apps.django_items.settings")
application = get_wsgi_application()
