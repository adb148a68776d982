"""Authenticating with a token returned by a callable (token rotation).

``token=`` may be a function returning the token.  natsync calls it on every connect
and every reconnect attempt, so a token rotated in a secret store, file or environment
is picked up on the next reconnect without restarting the process.

A callable token together with a token in a URL is ambiguous: ``connect()`` raises
``ValueError`` before any socket is opened (as nats.go's ``ErrTokenAlreadySet``).

Start a server with ``nats-server --auth mytoken``; the address comes from
``NATS_URL_HOSTPORT`` (default ``127.0.0.1:4222``), the token from ``NATS_TOKEN``
(default ``mytoken``).
"""

import os

import natsync

hostport = os.environ.get("NATS_URL_HOSTPORT", "127.0.0.1:4222")
calls = 0


def current_token() -> str:
    """Read the token afresh; a real application might ask a secret store."""
    global calls
    calls += 1
    return os.environ.get("NATS_TOKEN", "mytoken")


with natsync.connect(f"nats://{hostport}", token=current_token) as nc:
    print(f"connected to {nc.connected_url}")
    print(f"token callable called {calls} time(s)")
    sub = nc.subscribe("greet")
    nc.publish("greet", b"hello")
    msg = sub.next_msg(timeout=2.0)
    print(f"received: {msg.data!r}")

# A callable token plus a token in the URL: refused, and the message shows no secret.
try:
    natsync.connect(f"nats://{current_token()}@{hostport}", token=current_token)
except ValueError as e:
    print(f"ValueError: {e}")
