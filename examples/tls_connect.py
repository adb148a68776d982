"""Connecting over TLS, verifying the server's certificate against your CA.

Start a server with a ``tls`` block, for example ``server.conf``::

    tls {
      cert_file: "server-cert.pem"
      key_file: "server-key.pem"
    }

    nats-server -c server.conf

then run::

    NATS_URL_HOSTPORT=127.0.0.1:4222 NATS_CA_FILE=ca.pem python examples/tls_connect.py

(or ``python examples/tls_connect.py HOST:PORT CA_FILE``).  ``NATS_TLS_HOSTNAME`` (or a
third argument) sets the name the certificate is checked against when it differs from
the host you dial.

A ``tls://`` URL requires TLS; so does passing ``tls=``.  The certificate and the host
name are always verified: a server whose certificate is not signed by the CA, or not
issued for the host name, is refused with ``natsync.SecureConnectionError``.  Without
``NATS_CA_FILE`` the system's trusted CAs are used.
"""

import os
import ssl
import sys

import natsync

args = sys.argv[1:]
hostport = args[0] if len(args) > 0 else os.environ.get("NATS_URL_HOSTPORT", "127.0.0.1:4222")
ca_file = args[1] if len(args) > 1 else os.environ.get("NATS_CA_FILE")
tls_hostname = args[2] if len(args) > 2 else os.environ.get("NATS_TLS_HOSTNAME")

# Verification (certificate chain and host name) is on in a default context.
ctx = ssl.create_default_context(cafile=ca_file)

with natsync.connect(f"tls://{hostport}", tls=ctx, tls_hostname=tls_hostname, name="TLS Example") as nc:
    print(f"connected to {nc.connected_url}")
    sub = nc.subscribe("greet")
    nc.publish("greet", b"hello over TLS")
    print(f"received: {sub.next_msg(timeout=2.0).data!r}")
