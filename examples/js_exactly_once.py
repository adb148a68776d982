"""Exactly-once publishing with ``msg_id``: a retried publish is stored once.

A publisher that did not get its acknowledgement (a timeout, a broken connection)
cannot know whether the message was stored; it publishes again with the same
``msg_id`` (the ``Nats-Msg-Id`` header).  Inside the stream's duplicate window the
server stores it once and answers the retry with ``duplicate=True``.  An expectation
(``expected_last_subject_seq``) guards a write against a concurrent one.

Start a server with ``nats-server -js``; the address comes from ``NATS_URL`` (default
``nats://127.0.0.1:4222``).
"""

import os

import natsync
from natsync.js import APIError
from natsync.js.api import StorageType

url = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")

with natsync.connect(url) as nc:
    js = nc.jetstream()
    js.add_stream(name="PAYMENTS", subjects=["payments.>"], storage=StorageType.FILE, duplicate_window=120)
    first = js.publish("payments.in", b"pay 10 EUR to bob", msg_id="payment-0001")
    print(f"first publish: seq {first.seq}, duplicate {bool(first.duplicate)}")
    retry = js.publish("payments.in", b"pay 10 EUR to bob", msg_id="payment-0001")
    print(f"retried publish: seq {retry.seq}, duplicate {bool(retry.duplicate)}")
    print(f"messages stored: {js.stream_info('PAYMENTS').state.messages}")

    last = js.get_last_msg("PAYMENTS", "payments.in").seq
    js.publish("payments.in", b"pay 5 EUR to carol", expected_last_subject_seq=last)
    try:
        js.publish("payments.in", b"stale writer", expected_last_subject_seq=last)
    except APIError as e:
        print(f"stale write refused: err_code {e.err_code}")
    js.delete_stream("PAYMENTS")
