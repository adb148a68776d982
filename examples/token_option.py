"""Authenticating with a token: the ``token`` option.

Mirrors "Connecting with a Token" of the NATS docs page "Authenticating with a Token".
Start a server with::

    nats-server --auth mytoken

then run ``python examples/token_option.py``.  The server address comes from
``NATS_URL_HOSTPORT`` (default ``127.0.0.1:4222``) and the token from ``NATS_TOKEN``
(default ``mytoken``).
"""

import os

import natsync

hostport = os.environ.get("NATS_URL_HOSTPORT", "127.0.0.1:4222")
token = os.environ.get("NATS_TOKEN", "mytoken")

# Set a token.  It travels in CONNECT's auth_token field; it is never logged or shown.
with natsync.connect(f"nats://{hostport}", name="API Token Example", token=token) as nc:
    # The URL carries no credentials here, so there is nothing to redact.
    print(f"connected to {nc.connected_url}")

    # Do something with the connection: a publish/subscribe round trip.
    sub = nc.subscribe("greet")
    nc.publish("greet", b"hello")
    msg = sub.next_msg(timeout=2.0)
    print(f"received: {msg.data!r}")
# Leaving the "with" block closes the connection.
