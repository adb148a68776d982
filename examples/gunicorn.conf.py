"""gunicorn settings for a natsync app: no natsync hooks needed.

    gunicorn -c examples/gunicorn.conf.py --chdir examples/flask_app app:app

The app's client is lazy (``natsync.flask``, ``natsync.django`` or
``natsync.connect(..., lazy=True)``): each worker process connects on its first request
that needs NATS, the master never connects (``--preload`` included), and each worker
drains its client when it exits. So there is no ``post_fork`` or ``worker_exit`` hook
here, and none is needed for any worker class (sync, gthread, gevent).
"""

import os

bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("GUNICORN_WORKERS", "2"))
worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "gthread")
threads = int(os.environ.get("GUNICORN_THREADS", "4"))

# A worker drains its client at exit (buffered publishes are sent, within 5 s): keep the
# graceful timeout above that.
graceful_timeout = 10
timeout = 30

# natsync logs to the "natsync" logger and prints nothing by default. gunicorn configures
# only its own loggers; route natsync's warnings (reconnects, errors) to gunicorn's error
# stream next to them.
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "root": {"level": "INFO", "handlers": ["error_console"]},
    "loggers": {
        "natsync": {"level": "WARNING", "handlers": ["error_console"], "propagate": False},
        "gunicorn.error": {"level": "INFO", "handlers": ["error_console"], "propagate": False},
        "gunicorn.access": {"level": "INFO", "handlers": ["console"], "propagate": False},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "generic", "stream": "ext://sys.stdout"},
        "error_console": {
            "class": "logging.StreamHandler",
            "formatter": "generic",
            "stream": "ext://sys.stderr",
        },
    },
    "formatters": {
        "generic": {"format": "%(asctime)s [%(process)d] [%(levelname)s] %(name)s: %(message)s"},
    },
}
