"""A NATS service (ADR-32) with two endpoints in a group and one at the top.

``calc`` answers ``math.add`` ("2 3" -> "5", or a 400 service error), ``math.greet`` and
``status``.  Any ``nats micro ls`` / ``natsync micro ls`` sees it while it runs.  This
script also plays the client: it calls the endpoints, shows a service error and reads
the service's INFO and STATS through discovery.  With ``--serve`` it keeps serving
until Ctrl-C instead.

The server address comes from ``NATS_URL_HOSTPORT`` (default ``127.0.0.1:4222``), an
optional token from ``NATS_TOKEN``.
"""

import os
import signal
import sys

import natsync
from natsync import micro

hostport = os.environ.get("NATS_URL_HOSTPORT", "127.0.0.1:4222")
token = os.environ.get("NATS_TOKEN") or None


def add(req: micro.Request) -> None:
    try:
        a, b = (int(x) for x in req.data.split())
    except ValueError:
        # Nats-Service-Error-Code: 400, Nats-Service-Error: expected two integers
        req.respond_error(400, "expected two integers")
        return
    req.respond(str(a + b).encode())


def greet(req: micro.Request) -> None:
    req.respond(b"hello, " + (req.data or b"world"))


def status(req: micro.Request) -> None:
    req.respond(b"ok")


with natsync.connect(f"nats://{hostport}", token=token) as nc:
    with micro.add_service(nc, name="calc", version="1.0.0", description="adds numbers") as svc:
        math = svc.add_group("math")
        math.add_endpoint("add", add, max_concurrency=4)  # up to 4 requests at once
        math.add_endpoint("greet", greet)
        svc.add_endpoint("status", status)

        if "--serve" in sys.argv:
            print(f"serving calc (id {svc.id}); Ctrl-C to stop")
            signal.signal(signal.SIGINT, lambda *_: svc.stopped.set())
            svc.stopped.wait()
            sys.exit(0)

        # The client side (usually another process).
        print("add:", nc.request("math.add", b"2 3", timeout=2).data.decode())
        print("greeting:", nc.request("math.greet", b"natsync", timeout=2).data.decode())
        reply = nc.request("math.add", b"2 x", timeout=2)
        err = micro.ServiceError.from_msg(reply)
        if err is not None:
            print(f"error {err.code}: {err.description}")
        nc.request("status", timeout=2)

        [info] = micro.info(nc, "calc", svc.id, max_responses=1)
        print("endpoints:", ", ".join(e["subject"] for e in info["endpoints"]))
        [stats] = micro.stats(nc, "calc", svc.id, max_responses=1)
        requests = sum(e["num_requests"] for e in stats["endpoints"])
        errors = sum(e["num_errors"] for e in stats["endpoints"])
        print(f"requests: {requests}, errors: {errors}")
    print("service stopped:", svc.stopped.is_set())
