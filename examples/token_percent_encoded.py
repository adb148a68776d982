"""Authenticating with a token that holds special characters, in the URL.

In a URL, a token that contains ``@ : / ? # %`` (or spaces and other non-URL
characters) must be percent-encoded: natsync decodes the user info with
``urllib.parse.unquote`` before sending it, as nats.go does.  ``+`` is not a space: it
is sent as ``+``.  The ``token=`` option needs no encoding at all.

Start a server with ``nats-server --auth mytoken`` (or any token, e.g.
``nats-server --auth 'p@ss:w/rd'`` with ``NATS_TOKEN='p@ss:w/rd'``); the address comes
from ``NATS_URL_HOSTPORT`` (default ``127.0.0.1:4222``), the token from ``NATS_TOKEN``
(default ``mytoken``).
"""

import os
from urllib.parse import quote

import natsync

hostport = os.environ.get("NATS_URL_HOSTPORT", "127.0.0.1:4222")
token = os.environ.get("NATS_TOKEN", "mytoken")

# safe="" escapes every reserved character, "/" included.
encoded = quote(token, safe="")
escaped = sum(1 for ch in token if quote(ch, safe="") != ch)
print(f"percent-encoding the token escaped {escaped} character(s)")

with natsync.connect(f"nats://{encoded}@{hostport}") as nc:
    print(f"connected to {nc.connected_url}")
    sub = nc.subscribe("greet")
    nc.publish("greet", b"hello")
    msg = sub.next_msg(timeout=2.0)
    print(f"received: {msg.data!r}")
