"""An event log replayed with an ordered consumer.

Events of accounts are appended to stream ``EVENTS``.  A reader rebuilds every
balance by replaying the whole log, in order, with an ordered consumer (no acks, no
state on the server), then keeps following new events as they are appended.

Start a server with ``nats-server -js``; the address comes from ``NATS_URL`` (default
``nats://127.0.0.1:4222``).
"""

import json
import os

import natsync
from natsync.js.api import StorageType

url = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")

with natsync.connect(url) as nc:
    js = nc.jetstream()
    js.add_stream(name="EVENTS", subjects=["events.>"], storage=StorageType.FILE)
    history = [("alice", 100), ("bob", 50), ("alice", -30), ("carol", 10), ("bob", 25)]
    for account, amount in history:
        js.publish(f"events.{account}", json.dumps({"amount": amount}).encode())

    balances: dict[str, int] = {}
    log = js.subscribe("events.>", ordered_consumer=True)
    pending = len(history)
    while pending:
        msg = log.next_msg(timeout=5)
        account = msg.subject.split(".", 1)[1]
        balances[account] = balances.get(account, 0) + json.loads(msg.data)["amount"]
        pending = msg.metadata.num_pending
    print("replayed:", dict(sorted(balances.items())))

    js.publish("events.carol", json.dumps({"amount": 5}).encode())
    msg = log.next_msg(timeout=5)
    print(f"followed: {msg.subject} seq {msg.metadata.sequence.stream}")
    log.unsubscribe()
    js.delete_stream("EVENTS")
