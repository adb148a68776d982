"""Mutual TLS: the client shows a certificate too.

Start a server that verifies client certificates, for example ``server.conf``::

    tls {
      cert_file: "server-cert.pem"
      key_file: "server-key.pem"
      ca_file: "ca.pem"        # CA of the client certificates
      verify: true             # require one
    }

    nats-server -c server.conf

then run::

    NATS_URL_HOSTPORT=127.0.0.1:4222 NATS_CA_FILE=ca.pem \\
        NATS_CERT_FILE=client-cert.pem NATS_KEY_FILE=client-key.pem \\
        python examples/mtls_connect.py

(or ``python examples/mtls_connect.py HOST:PORT CA_FILE CERT_FILE [KEY_FILE]``).
``NATS_KEY_FILE`` may be left out when the certificate file holds the key as well.
The client certificate goes into the ``ssl.SSLContext`` passed as ``tls=``.
"""

import os
import ssl
import sys

import natsync

args = sys.argv[1:]
hostport = args[0] if len(args) > 0 else os.environ.get("NATS_URL_HOSTPORT", "127.0.0.1:4222")
ca_file = args[1] if len(args) > 1 else os.environ.get("NATS_CA_FILE")
cert_file = args[2] if len(args) > 2 else os.environ["NATS_CERT_FILE"]
key_file = args[3] if len(args) > 3 else os.environ.get("NATS_KEY_FILE")

ctx = ssl.create_default_context(cafile=ca_file)
ctx.load_cert_chain(cert_file, key_file)

with natsync.connect(f"tls://{hostport}", tls=ctx, name="mTLS Example") as nc:
    print(f"connected to {nc.connected_url}")
    sub = nc.subscribe("greet")
    nc.publish("greet", b"hello over mutual TLS")
    print(f"received: {sub.next_msg(timeout=2.0).data!r}")
