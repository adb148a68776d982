#!/usr/bin/env python
"""CPU instructions per message of natsync's hot paths, counted by valgrind (callgrind).

Every natsync thread shares one GIL, so the instructions a message costs in the whole
process bound the throughput. This script runs a scenario twice under
``valgrind --tool=callgrind`` (with N and 2N messages) and prints the difference divided
by N: what one more message costs, every thread included, the fixed costs (start-up,
connect, close) cancelled out.

Scenarios (all against a tiny scripted server in this process, no nats-server needed,
so no network timing enters the count):

* ``reader``: the server sends N ``MSG`` lines of 16 B to a subscription without a
  callback; counts the reader thread's work for them (read, parse, ``Msg``, routing,
  queueing) while the main thread sleeps until all are queued. Deterministic.
* ``callback``: the same to a callback subscription; counts everything from the socket
  to the callback (the above, plus the delivery thread, its wake-ups, the callback
  call). How often the delivery thread sleeps and wakes depends on thread scheduling, so
  this one varies from run to run: it is run three times and the median shown.
* ``publish``: N ``publish()`` calls of 16 B then one ``flush()``; counts the call and
  the writer that sends the bytes.
* ``request``: N sequential ``request()`` calls that the server answers at once;
  counts the call, the reader that routes the reply and the hand-off to the caller.
* ``respond``: the server sends a request, waits for the answer, then sends the next,
  N times, to a callback subscription that calls ``msg.respond()``; counts the reader,
  the delivery thread's wake-up, the callback and the send of the answer.

Usage::

    python bench/cost.py                       # every scenario, N = 20000
    python bench/cost.py reader --count 50000
    python bench/cost.py reader --run 1000     # one plain run, no valgrind (a smoke test)

valgrind serialises threads, so batches are larger than on a real machine; the numbers
are for comparing versions of natsync, not absolute speeds.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import natsync  # noqa: E402

SUBJECT = "bench.cost"
PAYLOAD = b"x" * 16
INFO = (
    b'INFO {"server_id":"COST","server_name":"cost","version":"2.10.0","proto":1,'
    b'"headers":true,"max_payload":1048576,"host":"127.0.0.1","port":4222}\r\n'
)


class _Server:
    """Accepts one client; answers PINGs; after the first SUB's PING sends *count* MSGs."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(1)
        self.port = self.lsock.getsockname()[1]
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        # Costs as little per byte as it can (it is counted too): no copy, no search of
        # what the client publishes; a PING is answered when a read ends with one (the
        # client sends nothing after a PING before the PONG comes, ping_interval=0).
        conn, _ = self.lsock.accept()
        self.lsock.close()
        conn.sendall(INFO)
        sid = None
        sent = False
        buf = bytearray(1 << 20)
        tail = b""
        with conn:
            while True:
                try:
                    n = conn.recv_into(buf)
                except OSError:
                    return
                if not n:
                    return
                if sid is None and self.count and b"SUB " in buf[:n]:
                    m = re.search(rb"SUB \S+ (\d+)\r\n", bytes(buf[:n]))
                    if m:
                        sid = int(m.group(1))
                tail = (tail + bytes(buf[max(0, n - 6) : n]))[-6:]
                if tail == b"PING\r\n":
                    tail = b""
                    conn.sendall(b"PONG\r\n")
                    if sid is not None and not sent and self.count:
                        sent = True
                        one = b"MSG %s %d %d\r\n%s\r\n" % (SUBJECT.encode(), sid, len(PAYLOAD), PAYLOAD)
                        conn.sendall(one * self.count)


def run_reader(count: int) -> None:
    srv = _Server(count)
    nc = natsync.connect(f"nats://127.0.0.1:{srv.port}", ping_interval=0)
    sub = nc.subscribe(SUBJECT, pending_msgs_limit=None, pending_bytes_limit=None)
    nc.flush()
    deadline = time.monotonic() + 600
    while sub.pending_msgs < count:
        if time.monotonic() > deadline:
            raise SystemExit(f"reader: only {sub.pending_msgs} of {count} messages arrived")
        time.sleep(0.05)
    nc.close()
    srv.thread.join(10)


def run_callback(count: int) -> None:
    srv = _Server(count)
    done = threading.Event()
    got = 0

    def cb(msg: natsync.Msg) -> None:
        nonlocal got
        got += 1
        if got == count:
            done.set()

    nc = natsync.connect(f"nats://127.0.0.1:{srv.port}", ping_interval=0)
    nc.subscribe(SUBJECT, cb=cb, pending_msgs_limit=None, pending_bytes_limit=None)
    nc.flush()
    if not done.wait(600):
        raise SystemExit(f"reader: only {got} of {count} messages arrived")
    nc.close()
    srv.thread.join(10)


def run_publish(count: int) -> None:
    srv = _Server(0)
    nc = natsync.connect(f"nats://127.0.0.1:{srv.port}", ping_interval=0)
    nc.flush()
    publish = nc.publish
    for _ in range(count):
        publish(SUBJECT, PAYLOAD)
    nc.flush(timeout=600)
    nc.close()
    srv.thread.join(10)


class _Echo(_Server):
    """Accepts one client; answers PINGs; ``mode="request"``: answers each ``PUB`` that
    has a reply subject with a ``MSG`` to it (the client's inbox subscription);
    ``mode="respond"``: after the first SUB's PING sends a request, and the next one
    each time the answer comes, *count* times."""

    def __init__(self, mode: str, count: int) -> None:
        self.mode = mode
        super().__init__(count)  # the listener, and the thread that runs _run

    def _run(self) -> None:
        conn, _ = self.lsock.accept()
        self.lsock.close()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.sendall(INFO)
        sids: dict[bytes, bytes] = {}  # subscribed subject (or inbox prefix) -> sid
        data = b""
        left = self.count
        with conn:
            while True:
                try:
                    chunk = conn.recv(1 << 16)
                except OSError:
                    return
                if not chunk:
                    return
                data += chunk
                out = []
                while True:
                    end = data.find(b"\r\n")
                    if end < 0:
                        break
                    line = data[:end].split()
                    rest = end + 2
                    if line and line[0] in (b"PUB", b"HPUB"):
                        size = int(line[-1])
                        if len(data) < rest + size + 2:
                            break
                        body = data[rest : rest + size]
                        rest += size + 2
                        if self.mode == "request" and len(line) == 4:
                            reply = line[2]
                            sid = sids.get(reply.rsplit(b".", 1)[0] + b".*", b"1")
                            out.append(b"MSG %s %s %d\r\n%s\r\n" % (reply, sid, len(body), body))
                        elif self.mode == "respond" and left > 0:
                            left -= 1
                            if left:
                                out.append(self._request(sids))
                    elif line and line[0] == b"SUB":
                        sids[line[1]] = line[-1]
                    elif line == [b"PING"]:
                        out.append(b"PONG\r\n")
                        if self.mode == "respond" and left == self.count and sids:
                            out.append(self._request(sids))
                    data = data[rest:]
                if out:
                    conn.sendall(b"".join(out))

    @staticmethod
    def _request(sids: dict[bytes, bytes]) -> bytes:
        sid = sids.get(SUBJECT.encode(), b"1")
        return b"MSG %s %s _INBOX.cost.1 %d\r\n%s\r\n" % (SUBJECT.encode(), sid, len(PAYLOAD), PAYLOAD)


def run_request(count: int) -> None:
    srv = _Echo("request", count)
    nc = natsync.connect(f"nats://127.0.0.1:{srv.port}", ping_interval=0)
    nc.flush()
    request = nc.request
    for _ in range(count):
        request(SUBJECT, PAYLOAD, timeout=600)
    nc.close()
    srv.thread.join(10)


def run_respond(count: int) -> None:
    srv = _Echo("respond", count)
    done = threading.Event()
    got = 0

    def cb(msg: natsync.Msg) -> None:
        nonlocal got
        msg.respond(msg.data)
        got += 1
        if got == count:
            done.set()

    nc = natsync.connect(f"nats://127.0.0.1:{srv.port}", ping_interval=0)
    nc.subscribe(SUBJECT, cb=cb)
    nc.flush()
    if not done.wait(600):
        raise SystemExit(f"respond: only {got} of {count} requests answered")
    nc.close()
    srv.thread.join(10)


SCENARIOS = {
    "reader": run_reader,
    "callback": run_callback,
    "publish": run_publish,
    "request": run_request,
    "respond": run_respond,
}
REPEAT = {"callback": 3}


def _instructions(scenario: str, count: int) -> int:
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "callgrind.out")
        cmd = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            sys.executable,
            __file__,
            scenario,
            "--run",
            str(count),
        ]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for line in Path(out).read_text().splitlines():
            if line.startswith("summary:") or line.startswith("totals:"):
                return int(line.split()[1])
    raise RuntimeError("no instruction total in the callgrind output")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("scenario", nargs="*", help="reader, callback, publish, request, respond (default: all)")
    ap.add_argument("--count", type=int, default=20_000, help="N (default 20000)")
    ap.add_argument("--run", type=int, metavar="N", help="run the scenario once with N messages, no valgrind")
    args = ap.parse_args(argv)
    names = args.scenario or list(SCENARIOS)
    for name in names:
        if name not in SCENARIOS:
            ap.error(f"unknown scenario {name!r}: choose from {', '.join(SCENARIOS)}")
    if args.run is not None:
        for name in names:
            SCENARIOS[name](args.run)
        return 0
    if shutil.which("valgrind") is None:
        ap.error("valgrind is not installed (apt-get install valgrind)")
    for name in names:
        per = []
        for _ in range(REPEAT.get(name, 1)):
            a = _instructions(name, args.count)
            b = _instructions(name, 2 * args.count)
            per.append((b - a) / args.count)
        shown = f"{statistics.median(per):10,.0f} instructions/message  (N={args.count:,}"
        if len(per) > 1:
            shown += ", median of " + ", ".join(f"{x:,.0f}" for x in per)
        print(f"{name:8} {shown})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
