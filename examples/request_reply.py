"""Request/reply on a token-protected server.

A callback subscription serves ``svc.echo``; ``request()`` sends a request and blocks
for the first reply.  A request nobody listens to fails at once with
``NoRespondersError`` instead of waiting for the timeout.

Start a server with ``nats-server --auth mytoken``; the address comes from
``NATS_URL_HOSTPORT`` (default ``127.0.0.1:4222``), the token from ``NATS_TOKEN``
(default ``mytoken``).
"""

import os

import natsync

hostport = os.environ.get("NATS_URL_HOSTPORT", "127.0.0.1:4222")
token = os.environ.get("NATS_TOKEN", "mytoken")


def serve(msg: natsync.Msg) -> None:
    # Runs on the subscription's own delivery thread, never on the reader thread.
    msg.respond(b"pong: " + msg.data)


with natsync.connect(f"nats://{hostport}", token=token) as nc:
    print(f"connected to {nc.connected_url}")
    nc.subscribe("svc.echo", cb=serve)
    nc.flush()  # make sure the server has the subscription before requesting

    reply = nc.request("svc.echo", b"ping", timeout=2.0)
    print(f"reply: {reply.data!r}")

    try:
        nc.request("svc.nobody", b"ping", timeout=2.0)
    except natsync.NoRespondersError as e:
        print(f"NoRespondersError: {e}")
