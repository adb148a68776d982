"""A Flask view calling a NATS service.

The ``calc`` service (as in ``micro_service.py``; normally its own process) answers
``math.add``.  The Flask view ``/add?a=2&b=3`` asks it with ``nc.request()`` and turns
the answer, or its service error, into a JSON response.  The script exercises the view
with Flask's test client; run ``flask --app examples/micro_flask.py run`` to serve it.

The server address comes from ``NATS_URL_HOSTPORT`` (default ``127.0.0.1:4222``), an
optional token from ``NATS_TOKEN``.
"""

import os

from flask import Flask, jsonify, request

import natsync
from natsync import micro

hostport = os.environ.get("NATS_URL_HOSTPORT", "127.0.0.1:4222")
token = os.environ.get("NATS_TOKEN") or None
url = f"nats://{hostport}"

# One connection for the whole web process: natsync is thread-safe, so every request
# thread of the web server shares it.
nc = natsync.connect(url, token=token)
app = Flask(__name__)


@app.get("/add")
def add_view():  # type: ignore[no-untyped-def]
    payload = f"{request.args.get('a', '')} {request.args.get('b', '')}"
    try:
        reply = nc.request("math.add", payload.encode(), timeout=2)
    except (natsync.NoRespondersError, natsync.TimeoutError):
        return jsonify(error="calc service unavailable"), 503
    err = micro.ServiceError.from_msg(reply)
    if err is not None:
        return jsonify(error=err.description), int(err.code)
    return jsonify(sum=int(reply.data))


def add(req: micro.Request) -> None:
    try:
        a, b = (int(x) for x in req.data.split())
    except ValueError:
        req.respond_error(400, "expected two integers")
        return
    req.respond(str(a + b).encode())


if __name__ == "__main__":
    with natsync.connect(url, token=token) as service_nc:
        with micro.add_service(service_nc, name="calc", version="1.0.0") as svc:
            svc.add_group("math").add_endpoint("add", add)
            client = app.test_client()
            for query in ("a=2&b=3", "a=2&b=x"):
                rsp = client.get(f"/add?{query}")
                print(f"GET /add?{query} -> {rsp.status_code} {rsp.get_json()}")
        svc.stop()
        rsp = app.test_client().get("/add?a=1&b=1")
        print(f"service stopped: GET /add?a=1&b=1 -> {rsp.status_code} {rsp.get_json()}")
    nc.close()
