"""Authenticating with a token: nats-py style, ``NATS()`` then ``connect(servers=[...])``.

The NATS docs page "Authenticating with a Token" shows, for Python::

    nc = NATS()
    await nc.connect(servers=["nats://mytoken@demo.nats.io:4222"])

natsync is blocking, so the same code works without ``await``.  Start a server with
``nats-server --auth mytoken``; the address comes from ``NATS_URL_HOSTPORT`` (default
``127.0.0.1:4222``), the token from ``NATS_TOKEN`` (default ``mytoken``).
"""

import os

import natsync

hostport = os.environ.get("NATS_URL_HOSTPORT", "127.0.0.1:4222")
token = os.environ.get("NATS_TOKEN", "mytoken")

nc = natsync.NATS()  # an alias of natsync.Client
nc.connect(servers=[f"nats://{token}@{hostport}"])
try:
    # connected_url is redacted: the token shows as ***.
    print(f"connected to {nc.connected_url}")

    # Do something with the connection.
    sub = nc.subscribe("greet")
    nc.publish("greet", b"hello")
    msg = sub.next_msg(timeout=2.0)
    print(f"received: {msg.data!r}")
finally:
    nc.close()
