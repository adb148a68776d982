"""Settings of the example Django project that uses natsync.

Run it (with a nats-server on 127.0.0.1:4222, or set NATSYNC_SERVERS)::

    cd examples/django_project
    python manage.py migrate                    # works with NATS down: nothing connects
    python manage.py natsync_worker             # the handlers in orders/nats_handlers.py
    python manage.py runserver                  # or: gunicorn -c ../gunicorn.conf.py shop_project.wsgi

    curl -X POST localhost:8000/orders/42       # saved, then announced on commit (core NATS)
    curl -X POST localhost:8000/events/42       # saved with an outbox row: must not be lost
    python manage.py natsync_outbox status      # (a stream must capture events.>; the
                                                #  worker's relay publishes the rows)
    curl localhost:8000/greet/ada               # request/reply: the worker answers
    curl localhost:8000/health/nats
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-secret")
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]

INSTALLED_APPS = [
    "natsync.django",
    "orders",
]

MIDDLEWARE = [
    # NATS down, no responders, a timeout: a 503 JSON answer instead of a 500 page
    "natsync.django.middleware.NatsUnavailableMiddleware",
]

ROOT_URLCONF = "shop_project.urls"
WSGI_APPLICATION = "shop_project.wsgi.application"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("SHOP_DB", str(BASE_DIR / "db.sqlite3")),
    }
}
if os.environ.get("SHOP_PG_PORT"):  # PostgreSQL instead (the outbox tests use both)
    DATABASES["default"] = {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": os.environ.get("SHOP_PG_HOST", "127.0.0.1"),
        "PORT": os.environ["SHOP_PG_PORT"],
        "NAME": os.environ.get("SHOP_PG_NAME", "shop"),
        "USER": os.environ.get("SHOP_PG_USER", "postgres"),
    }
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
USE_TZ = True

# Any natsync.connect() option; each can be overridden by NATSYNC_<OPTION> in the
# environment (NATSYNC_SERVERS, NATSYNC_TOKEN, ...). Secrets belong in the environment.
NATSYNC = {
    "servers": "nats://127.0.0.1:4222",
    "name": "shop",
}

# The outbox relay (publish_on_commit(..., durable=True)); every key is optional.
NATSYNC_OUTBOX = {
    "relay_in_web": os.environ.get("SHOP_RELAY_IN_WEB", "") == "1",
    "lease": float(os.environ.get("SHOP_OUTBOX_LEASE", "30")),
    "batch": int(os.environ.get("SHOP_OUTBOX_BATCH", "100")),
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {
        "natsync": {"handlers": ["console"], "level": "WARNING"},
        "natsync.worker": {"handlers": ["console"], "level": "INFO", "propagate": False},
        "natsync.outbox": {"handlers": ["console"], "level": "INFO", "propagate": False},
    },
}
