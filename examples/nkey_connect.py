"""Authenticating with an NKEY (needs ``pip install 'natsync[nkeys]'``).

The server lists the user's public key (``U...``)::

    authorization {
      users = [ { nkey: UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF4 } ]
    }

    nats-server -c server.conf

and the client holds the seed (``SU...``), in a file as ``nk -gen user`` or ``nsc``
write it::

    NATS_URL_HOSTPORT=127.0.0.1:4222 NATS_NKEY_SEED_FILE=user.nk python examples/nkey_connect.py

(or ``python examples/nkey_connect.py HOST:PORT SEED_FILE``).  The client signs the
server's nonce with the seed and sends the public key and the signature; the seed never
leaves the process, is read from the file on every (re)connect, and is wiped from memory
after use.  ``nkeys_seed_str="SU..."`` takes the seed itself instead of a file.
"""

import os
import sys

import natsync

args = sys.argv[1:]
hostport = args[0] if len(args) > 0 else os.environ.get("NATS_URL_HOSTPORT", "127.0.0.1:4222")
seed_file = args[1] if len(args) > 1 else os.environ["NATS_NKEY_SEED_FILE"]

with natsync.connect(f"nats://{hostport}", nkeys_seed=seed_file, name="NKEY Example") as nc:
    print(f"connected to {nc.connected_url}")
    sub = nc.subscribe("greet")
    nc.publish("greet", b"hello with an NKEY")
    print(f"received: {sub.next_msg(timeout=2.0).data!r}")
