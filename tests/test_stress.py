"""Stress test for issue 7 ("What to build" #6): 16 threads mix publish, subscribe,
unsubscribe, drain, request, flush, connect and close on several clients while a
loopback proxy cuts the connections at random.

It runs for ``NATSYNC_STRESS_SECONDS`` seconds (default 30; ``make soak`` runs it
longer) and asserts:

* no exception escapes a thread: a worker may only see the errors each call is
  documented to raise (``ALLOWED`` below), and no library thread dies of an exception
  (``threading.excepthook``) or logs an internal error;
* no deadlock: every call returns by its deadline (its own timeout, or a bound for the
  calls that take none), plus a margin; a watchdog records the worst overrun and the
  stack of a call still running past it;
* no message is delivered after its subscription ended: no callback starts after
  ``unsubscribe()``/``drain()``/``close()`` returned, and ``next_msg()`` after
  ``unsubscribe()`` returns no message;
* no natsync thread is alive once every client is closed.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from proxy import TCPProxy

import natsync
from natsync.testing import NATSServer

DURATION = float(os.environ.get("NATSYNC_STRESS_SECONDS", "30"))
WORKERS = 16
VOLATILE = 4  # clients that workers close (and replace) while others use them
SUBJECTS = [f"stress.s.{i}" for i in range(8)]
SERVICE = "stress.svc"
MARGIN = 2.0  # a call may overrun its deadline by this much before it counts as hung
NO_TIMEOUT_BOUND = 5.0  # deadline of the calls that take no timeout (publish, subscribe, ...)
UNSUBSCRIBE_BOUND = 1.0  # unsubscribe() never waits for a busy callback
CLOSE_BOUND = 3.0  # close(): final flush (2 s) and the joins, one shared deadline
CLIENT_OPTIONS: dict[str, Any] = {
    "reconnect_time_wait": 0.05,
    "reconnect_jitter": 0.0,
    "connect_timeout": 1.0,
    "max_reconnect_attempts": -1,
    "ping_interval": 1.0,
    "drain_timeout": 2.0,
}

E = natsync
# The errors each call is documented to raise in these conditions (a client that may be
# closed or draining under it, connections cut at random, stalled peers); anything else
# is a failure.  A subclass matches, except E.NatsError, which matches only a plain
# NatsError (the contract's "the connection was lost before the server confirmed").
_GONE = (E.ConnectionClosedError, E.ConnectionDrainingError)
ALLOWED: dict[str, tuple[type[BaseException], ...]] = {
    "connect": (E.NoServersError,),  # the proxy may cut the handshake
    "publish": (E.OutboundBufferFullError, *_GONE),
    "subscribe": _GONE,
    # unsubscribe/drain on a subscription that already ended (limit, close, drain)
    "unsubscribe": (E.BadSubscriptionError, *_GONE),
    "next_msg": (E.TimeoutError, E.BadSubscriptionError, E.ConnectionClosedError),
    # TimeoutError past the deadline or while not connected; a plain NatsError when the
    # connection broke before the PONG
    "flush": (E.TimeoutError, E.NatsError, *_GONE),
    "request": (E.TimeoutError, E.NoRespondersError, E.NatsError, *_GONE),
    "sub_drain": (E.TimeoutError, E.BadSubscriptionError, E.NatsError, *_GONE),
    "drain": (E.TimeoutError, E.NatsError, *_GONE),
    "close": (),
}


def allowed(name: str, e: BaseException) -> bool:
    for cls in ALLOWED[name]:
        if cls is E.NatsError:
            if type(e) is E.NatsError:
                return True
        elif isinstance(e, cls):
            return True
    return False


class Findings:
    """Everything the threads observed, under one lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.failures: list[str] = []
        self.max_overrun: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.raised: dict[str, int] = {}

    def fail(self, text: str) -> None:
        with self.lock:
            if len(self.failures) < 50:
                self.failures.append(text)


class Watchdog:
    """Knows every worker's current call and its deadline; reports calls that overran."""

    def __init__(self, findings: Findings) -> None:
        self.findings = findings
        self.current: dict[int, tuple[str, float]] = {}  # thread ident -> (call, deadline)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.reported: set[tuple[int, float]] = set()
        self.thread = threading.Thread(target=self.run, name="stress-watchdog", daemon=True)

    def run(self) -> None:
        while not self.stop.wait(0.25):
            now = time.monotonic()
            with self.lock:
                late = [(i, c, d) for i, (c, d) in self.current.items() if now > d + MARGIN]
            for ident, call, deadline in late:
                if (ident, deadline) in self.reported:
                    continue
                self.reported.add((ident, deadline))
                frame = sys._current_frames().get(ident)
                stack = "".join(traceback.format_stack(frame)) if frame is not None else "?"
                self.findings.fail(f"{call} still running {now - deadline:.1f} s past its deadline:\n{stack}")


class Tracked:
    """A client of the pool and the subscriptions made on it."""

    def __init__(self, nc: natsync.Client) -> None:
        self.nc = nc
        self.closed_at: float | None = None  # when close()/drain() of the client returned
        self.subs: list[SubRecord] = []


class SubRecord:
    def __init__(self, sub: natsync.Subscription, owner: Tracked) -> None:
        self.sub = sub
        self.owner = owner
        self.ended_at: float | None = None  # when unsubscribe()/drain() returned
        self.last_cb_start = 0.0

    def end(self) -> float | None:
        ends = [t for t in (self.ended_at, self.owner.closed_at) if t is not None]
        return min(ends) if ends else None


class Stress:
    def __init__(self, server: NATSServer, proxy: TCPProxy, findings: Findings) -> None:
        self.server = server
        self.proxy = proxy
        self.findings = findings
        self.watchdog = Watchdog(findings)
        self.stop = threading.Event()
        self.pool_lock = threading.Lock()
        self.pool: list[Tracked] = []
        self.all_clients: list[Tracked] = []
        self.records: list[SubRecord] = []
        self.seq = itertools.count()

    # --- calls with a deadline ------------------------------------------------------------

    def call(self, name: str, fn: Callable[[], Any], timeout: float | None = None) -> tuple[bool, Any]:
        """Run *fn* as call *name*; returns (True, value) or (False, the allowed error)."""
        bound = timeout if timeout is not None else NO_TIMEOUT_BOUND
        ident = threading.get_ident()
        start = time.monotonic()
        with self.watchdog.lock:
            self.watchdog.current[ident] = (name, start + bound)
        ok = True
        value: Any = None
        try:
            value = fn()
        except BaseException as e:  # noqa: BLE001 - sorted below
            ok, value = False, e
            if allowed(name, e):
                with self.findings.lock:
                    key = f"{name}:{type(e).__name__}"
                    self.findings.raised[key] = self.findings.raised.get(key, 0) + 1
            else:
                self.findings.fail(f"{name} raised an undocumented {type(e).__name__}: {e}")
        finally:
            elapsed = time.monotonic() - start
            with self.watchdog.lock:
                self.watchdog.current.pop(ident, None)
            with self.findings.lock:
                over = elapsed - bound
                if over > self.findings.max_overrun.get(name, float("-inf")):
                    self.findings.max_overrun[name] = over
                self.findings.calls[name] = self.findings.calls.get(name, 0) + 1
            if elapsed > bound + MARGIN:
                self.findings.fail(f"{name} returned {elapsed - bound:.1f} s after its deadline")
        return ok, value

    # --- clients --------------------------------------------------------------------------

    def new_client(self) -> Tracked | None:
        # half of them without pings: nothing but the writer's deadline notices a stall
        opts = {**CLIENT_OPTIONS, "ping_interval": random.choice([0, CLIENT_OPTIONS["ping_interval"]])}
        ok, nc = self.call("connect", lambda: natsync.connect(self.proxy.url, **opts), 1.0 + 1.0)
        if not ok:
            return None
        t = Tracked(nc)
        with self.pool_lock:
            self.all_clients.append(t)
        return t

    def pick(self, rnd: random.Random) -> Tracked:
        with self.pool_lock:
            return rnd.choice(self.pool)

    def replace(self, old: Tracked, rnd: random.Random) -> None:
        """Close (or drain) a pool client while others may be using it; put a new one in
        (again later if connecting failed)."""
        with self.pool_lock:
            if old not in self.pool or old.closed_at == float("inf"):
                return  # replaced already, or another thread is closing it
            claim = old.closed_at is None
            if claim:
                old.closed_at = float("inf")  # closing: claimed by this thread
        if claim:
            if rnd.random() < 0.5:
                self.call("close", old.nc.close, CLOSE_BOUND)
            else:
                self.call("drain", lambda: old.nc.drain(timeout=2.0), 2.0)
            with self.pool_lock:
                old.closed_at = time.monotonic()
        new = self.new_client()
        with self.pool_lock:
            if new is not None and old in self.pool:
                self.pool[self.pool.index(old)] = new

    # --- subscriptions --------------------------------------------------------------------

    def callback_for(self, box: list[SubRecord]) -> Callable[[natsync.Msg], None]:
        def cb(msg: natsync.Msg) -> None:
            now = time.monotonic()
            if box:
                box[0].last_cb_start = max(box[0].last_cb_start, now)
            if msg.reply:
                try:
                    msg.respond(b"ok")
                except natsync.NatsError:
                    pass
            # slow enough that messages queue up: close() and unsubscribe() find work pending
            time.sleep(random.random() * 0.004)
            if random.random() < 0.002:
                time.sleep(0.5)  # a busy callback

        return cb

    def register(
        self, sub: natsync.Subscription, owner: Tracked, box: list[SubRecord] | None = None
    ) -> SubRecord:
        rec = SubRecord(sub, owner)
        if box is not None:
            box.append(rec)
        with self.pool_lock:
            owner.subs.append(rec)
            self.records.append(rec)
        return rec

    # --- the worker -----------------------------------------------------------------------

    def worker(self, index: int) -> None:
        rnd = random.Random(index * 7919 + int(time.time()))
        try:
            while not self.stop.is_set():
                self.one_op(rnd)
        except BaseException as e:  # noqa: BLE001 - the finding
            self.findings.fail(f"worker {index} died: {type(e).__name__}: {e}\n{traceback.format_exc()}")

    def one_op(self, rnd: random.Random) -> None:
        t = self.pick(rnd)
        nc = t.nc
        op = rnd.random()
        subject = rnd.choice(SUBJECTS)
        if op < 0.05:
            # large: while a connection is stalled these fill the socket buffers
            self.call("publish", lambda: nc.publish("stress.big", b"b" * 900_000))
        elif op < 0.30:
            for _ in range(rnd.randint(1, 50)):
                self.call("publish", lambda: nc.publish(subject, b"x" * rnd.randint(0, 200)))
        elif op < 0.45:
            ok, sub = self.call("subscribe", lambda: nc.subscribe(subject))
            if not ok:
                return
            rec = self.register(sub, t)
            for _ in range(rnd.randint(0, 3)):
                self.call("next_msg", lambda: sub.next_msg(timeout=0.1), 0.1)
            ok, _ = self.call("unsubscribe", sub.unsubscribe, UNSUBSCRIBE_BOUND)
            if ok:
                rec.ended_at = time.monotonic()
                got, msg = self.call("next_msg", lambda: sub.next_msg(timeout=0.05), 0.05)
                if got:
                    self.findings.fail(f"next_msg() returned {msg!r} after unsubscribe() returned")
        elif op < 0.60:
            box: list[SubRecord] = []
            ok, sub = self.call("subscribe", lambda: nc.subscribe(subject, cb=self.callback_for(box)))
            if not ok:
                return
            rec = self.register(sub, t, box)
            if rnd.random() < 0.3:
                self.call("unsubscribe", lambda: sub.unsubscribe(limit=rnd.randint(1, 50)), UNSUBSCRIBE_BOUND)
            self.stop.wait(rnd.uniform(0, 0.2))
            if rnd.random() < 0.5:
                ok, _ = self.call("unsubscribe", sub.unsubscribe, UNSUBSCRIBE_BOUND)
            else:
                ok, _ = self.call("sub_drain", lambda: sub.drain(timeout=1.0), 1.0)
            if ok:
                rec.ended_at = time.monotonic()
        elif op < 0.75:
            self.call("request", lambda: nc.request(SERVICE, b"q", timeout=0.5), 0.5)
        elif op < 0.85:
            self.call("flush", lambda: nc.flush(timeout=1.0), 1.0)
        elif op < 0.90:
            box2: list[SubRecord] = []
            ok, sub = self.call("subscribe", lambda: nc.subscribe(SERVICE, cb=self.callback_for(box2)))
            if ok:
                rec = self.register(sub, t, box2)
                self.stop.wait(rnd.uniform(0, 0.3))
                ok, _ = self.call("unsubscribe", sub.unsubscribe, UNSUBSCRIBE_BOUND)
                if ok:
                    rec.ended_at = time.monotonic()
        elif op < 0.93:
            self.replace(t, rnd)
        else:
            self.stop.wait(rnd.uniform(0, 0.05))

    def chaos(self) -> None:
        """Cut every connection at random; now and then first stall them (the server
        stops reading) for a few seconds: calls must still return by their deadlines."""
        rnd = random.Random()
        while not self.stop.wait(rnd.uniform(0.2, 1.0)):
            if rnd.random() < 0.2:
                self.proxy.stall_client()
                self.stop.wait(rnd.uniform(3.0, 6.0))
            self.proxy.cut()


@pytest.fixture
def server() -> Iterator[NATSServer]:
    with NATSServer() as srv:
        yield srv


def test_stress_lifecycle_under_random_connection_cuts(
    server: NATSServer, caplog: pytest.LogCaptureFixture
) -> None:
    """What #6: 16 threads mixing publish/subscribe/unsubscribe/drain/request/close on
    several clients while a proxy cuts connections at random: no exception escapes a
    thread, every call returns by its deadline, no message is delivered after its
    subscription ended, no natsync thread is alive after close."""
    findings = Findings()
    before = {t for t in threading.enumerate() if t.name.startswith("natsync")}
    hooked: list[str] = []
    old_hook = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        name = args.thread.name if args.thread is not None else "?"
        hooked.append(f"{name}: {args.exc_type.__name__}: {args.exc_value}")

    threading.excepthook = hook
    caplog.set_level(logging.WARNING, logger="natsync")
    with TCPProxy("127.0.0.1", server.port, client_rcvbuf=64 * 1024) as proxy:
        stress = Stress(server, proxy, findings)
        stable = natsync.connect(server.url)  # the service, never cut
        try:
            stable.subscribe(SERVICE, cb=lambda m: m.respond(b"pong"))
            stable.flush(timeout=5)
            for _ in range(VOLATILE):
                t = stress.new_client()
                assert t is not None
                stress.pool.append(t)
            stress.watchdog.thread.start()
            threads = [
                threading.Thread(target=stress.worker, args=(i,), name=f"stress-worker-{i}", daemon=True)
                for i in range(WORKERS)
            ]
            chaos = threading.Thread(target=stress.chaos, name="stress-chaos", daemon=True)
            for th in threads:
                th.start()
            chaos.start()
            stress.stop.wait(DURATION)
            stress.stop.set()
            chaos.join(5)
            # every call in flight returns by its deadline (the longest is close: 5 s)
            end_by = time.monotonic() + NO_TIMEOUT_BOUND + 2 * MARGIN
            for th in threads:
                th.join(max(end_by - time.monotonic(), 0.1))
            alive = [th.name for th in threads if th.is_alive()]
            stress.watchdog.stop.set()
            stress.watchdog.thread.join(5)
            assert not alive, f"workers still running after their last deadline: {alive}; {findings.failures}"
        finally:
            stress.stop.set()
            stress.watchdog.stop.set()
            with stress.pool_lock:
                everyone = list(stress.all_clients)
            for t in everyone:
                if t.closed_at is None or t.closed_at == float("inf"):
                    stress.call("close", t.nc.close, CLOSE_BOUND)
                    t.closed_at = time.monotonic()
            stable.close()
            threading.excepthook = old_hook

    # no message delivered after its subscription ended
    late = []
    for rec in stress.records:
        end = rec.end()
        if end is not None and rec.last_cb_start > end:
            late.append(
                f"sid {rec.sub.sid}: a callback started {rec.last_cb_start - end:.3f} s after the end"
            )
    # no natsync thread alive after close
    deadline = time.monotonic() + 5.0
    while True:
        left = [t.name for t in threading.enumerate() if t.name.startswith("natsync") and t not in before]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    internal = [
        r.getMessage()
        for r in caplog.records
        if "changed size" in r.getMessage()
        or (
            r.exc_info
            and r.exc_info[0] is not None
            and not issubclass(r.exc_info[0], (natsync.NatsError, OSError))
        )
    ]
    summary = (
        f"calls: {findings.calls}\nallowed errors: {findings.raised}\n"
        f"max overrun (s): { {k: round(v, 3) for k, v in findings.max_overrun.items()} }"
    )
    print(summary)
    assert findings.calls.get("close", 0) + findings.calls.get("drain", 0) >= 2, summary
    assert not findings.failures, "\n".join(findings.failures) + "\n" + summary
    assert not hooked, f"exceptions escaped library threads: {hooked}"
    assert not late, late[:10]
    assert not left, f"natsync threads alive after every client closed: {left}"
    assert not internal, internal[:5]
