"""Authenticating with a user JWT and its seed, a ``.creds`` file (needs
``pip install 'natsync[nkeys]'``).

The server runs in operator mode (decentralised JWT auth), set up with ``nsc``::

    nsc add operator --generate-signing-key --sys --name OP
    nsc add account APP
    nsc add user --account APP app-user
    nsc generate config --mem-resolver --sys-account SYS > server.conf
    nats-server -c server.conf
    nsc generate creds --account APP --name app-user > user.creds

then run::

    NATS_URL_HOSTPORT=127.0.0.1:4222 NATS_CREDS_FILE=user.creds python examples/creds_connect.py

(or ``python examples/creds_connect.py HOST:PORT CREDS_FILE``).  The client sends the
JWT and signs the server's nonce with the seed; the file is read on every (re)connect
and the seed wiped from memory after use.  A JWT and a seed kept in two files work as
``user_credentials=(jwt_path, seed_path)``.
"""

import os
import sys

import natsync

args = sys.argv[1:]
hostport = args[0] if len(args) > 0 else os.environ.get("NATS_URL_HOSTPORT", "127.0.0.1:4222")
creds_file = args[1] if len(args) > 1 else os.environ["NATS_CREDS_FILE"]

with natsync.connect(f"nats://{hostport}", user_credentials=creds_file, name="Creds Example") as nc:
    print(f"connected to {nc.connected_url}")
    sub = nc.subscribe("greet")
    nc.publish("greet", b"hello with a JWT")
    print(f"received: {sub.next_msg(timeout=2.0).data!r}")
