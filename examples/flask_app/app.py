"""A Flask app that publishes events, asks a NATS service and is served by a worker.

Run it (with a nats-server on 127.0.0.1:4222, or set FLASK_NATS_URL)::

    cd examples/flask_app
    flask --app app natsync worker          # the handlers below (one process, or many)
    flask --app app run                     # or: gunicorn -c ../gunicorn.conf.py app:app

    curl -X POST localhost:5000/orders/42   # publishes orders.created; the worker logs it
    curl localhost:5000/greet/ada           # request/reply: the worker answers
    curl localhost:5000/health/nats         # {"status": "ok", "rtt_ms": ..., ...}

Configuration comes from the environment through Flask's ``FLASK_`` prefix:
``FLASK_NATS_URL``, ``FLASK_NATS_TOKEN``, ``FLASK_NATS_OPTIONS='{"name": "shop"}'``.
Nothing here connects at import: the first request that needs NATS connects, in the
process that serves it.
"""

from __future__ import annotations

import os

from flask import Flask, jsonify
from flask.typing import ResponseReturnValue

import natsync
from natsync.flask import NATS

nats = NATS()


def create_app() -> Flask:
    """The app factory."""
    app = Flask(__name__)
    app.config["NATS_URL"] = "nats://127.0.0.1:4222"
    app.config.from_prefixed_env()  # FLASK_NATS_URL, FLASK_NATS_TOKEN, FLASK_NATS_OPTIONS
    nats.init_app(app)
    app.add_url_rule("/health/nats", view_func=nats.health_view)

    @app.post("/orders/<int:order_id>")
    def create_order(order_id: int) -> ResponseReturnValue:
        # ... write the order to the database, then announce it:
        nats.client.publish("orders.created", str(order_id).encode())
        return jsonify({"order": order_id, "pid": os.getpid()}), 201

    @app.get("/greet/<name>")
    def greet(name: str) -> ResponseReturnValue:
        # A request to a service; NATS down or no service: a 503 JSON answer (the
        # extension's error handler), never a hanging worker.
        reply = nats.client.request("svc.greet", name.encode(), timeout=2.0)
        return jsonify({"greeting": reply.data.decode(), "pid": os.getpid()})

    @app.get("/pid")
    def pid() -> ResponseReturnValue:
        return jsonify({"pid": os.getpid()})

    return app


# --- handlers: run by `flask --app app natsync worker`, never in web processes ----------


@nats.subscribe("svc.greet", queue="greeters")
def greet_service(msg: natsync.Msg) -> str:
    """Answer requests on svc.greet (the return value is the reply)."""
    return f"hello, {msg.data.decode()}"


@nats.subscribe("orders.created", queue="billing")
def bill_order(msg: natsync.Msg) -> None:
    """React to new orders (one worker of the 'billing' queue group gets each)."""
    print(f"billing order {msg.data.decode()}", flush=True)


app = create_app()
