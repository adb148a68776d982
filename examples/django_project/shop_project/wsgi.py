"""WSGI entry point: ``gunicorn -c ../gunicorn.conf.py shop_project.wsgi`` (no natsync hooks)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop_project.settings")

application = get_wsgi_application()
