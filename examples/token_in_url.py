"""Authenticating with a token in the server URL.

The NATS docs page "Authenticating with a Token" says some clients accept the token as
part of the URL, ``nats://token@server:port``.  natsync accepts three spellings:

* ``nats://mytoken@host:port``  -- the token as the URL's user name (every client);
* ``mytoken@host:port``         -- the same without a scheme (``nats://`` is implied);
* ``nats://:mytoken@host:port`` -- empty user, token as the password.  The docs show this
  form too; other clients send it as a password, which a token server rejects.  natsync
  sends it as a token, so it works.

A token holding ``@ : / ? #`` or ``%`` must be percent-encoded in a URL: see
``token_percent_encoded.py``.  Start a server with ``nats-server --auth mytoken``; the
address comes from ``NATS_URL_HOSTPORT`` (default ``127.0.0.1:4222``), the token from
``NATS_TOKEN`` (default ``mytoken``).
"""

import os

import natsync

hostport = os.environ.get("NATS_URL_HOSTPORT", "127.0.0.1:4222")
token = os.environ.get("NATS_TOKEN", "mytoken")

forms = [
    ("nats://TOKEN@HOST:PORT", f"nats://{token}@{hostport}"),
    ("TOKEN@HOST:PORT", f"{token}@{hostport}"),
    ("nats://:TOKEN@HOST:PORT", f"nats://:{token}@{hostport}"),
]

for label, url in forms:
    # The URL is a secret now: print only the label and the redacted URL.
    with natsync.connect(url) as nc:
        print(f"{label}: connected to {nc.connected_url}")
        sub = nc.subscribe("greet")
        nc.publish("greet", b"hello")
        msg = sub.next_msg(timeout=2.0)
        print(f"received: {msg.data!r}")
