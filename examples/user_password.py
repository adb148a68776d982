"""Authenticating with a user and password.

Start a server with::

    nats-server --user myuser --pass mypassword

The address comes from ``NATS_URL_HOSTPORT`` (default ``127.0.0.1:4222``), the user and
password from ``NATS_USER`` and ``NATS_PASSWORD`` (defaults ``myuser``/``mypassword``).
Both spellings are shown: the ``user``/``password`` options, and ``user:password@`` in
the URL (percent-encode special characters there).
"""

import os
from urllib.parse import quote

import natsync

hostport = os.environ.get("NATS_URL_HOSTPORT", "127.0.0.1:4222")
user = os.environ.get("NATS_USER", "myuser")
password = os.environ.get("NATS_PASSWORD", "mypassword")

# 1. As options.
with natsync.connect(f"nats://{hostport}", user=user, password=password) as nc:
    print(f"options: connected to {nc.connected_url}")
    sub = nc.subscribe("greet")
    nc.publish("greet", b"hello")
    print(f"received: {sub.next_msg(timeout=2.0).data!r}")

# 2. In the URL.  The password is redacted wherever the URL is shown.
url = f"nats://{quote(user, safe='')}:{quote(password, safe='')}@{hostport}"
with natsync.connect(url) as nc:
    print(f"URL: connected to {nc.connected_url}")
    sub = nc.subscribe("greet")
    nc.publish("greet", b"hello")
    print(f"received: {sub.next_msg(timeout=2.0).data!r}")
