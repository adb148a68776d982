"""natsync under gevent's and eventlet's monkey patching, each in a subprocess.

The subprocess patches first (``gevent.monkey.patch_all()`` / ``eventlet.monkey_patch()``),
then imports natsync and, against a real nats-server it starts itself: publishes,
subscribes and makes requests from 100 greenlets at once (sync subscriptions and
callbacks), survives a server restart (reconnect), lets 100 greenlets make the first
use of a lazy client (one connection, counted with ``/connz``), and closes.  Each stage
prints one line; the tests read them.

``close()`` ends every natsync green thread under both libraries.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from webkit import ROOT

SCRIPT = r"""
import sys
MODE = sys.argv[1]
if MODE == "gevent":
    from gevent import monkey
    monkey.patch_all()
    import gevent
    def spawn(f, *a): return gevent.spawn(f, *a)
    def joinall(gs):
        gevent.joinall(gs, timeout=30, raise_error=True)
    def is_patched():
        import socket, threading
        return monkey.is_module_patched("socket") and monkey.is_module_patched("threading")
elif MODE == "eventlet":
    import eventlet
    eventlet.monkey_patch()
    def spawn(f, *a): return eventlet.spawn(f, *a)
    def joinall(gs):
        for g in gs:
            g.wait()
    def is_patched():
        from eventlet import patcher
        return patcher.is_monkey_patched("socket") and patcher.is_monkey_patched("thread")
else:
    raise SystemExit(f"unknown mode {MODE}")

import json, threading, time, urllib.request
import natsync
from natsync.testing import NATSServer

assert is_patched(), "monkey patching did not take"
N = 100
server = NATSServer(http_port=0)
server.start()
try:
    reconnected = threading.Event()
    disconnected = threading.Event()
    errors = []
    nc = natsync.connect(server.url, reconnect_time_wait=0.1, reconnect_jitter=0.0, connect_timeout=0.5,
                         reconnected_cb=reconnected.set, disconnected_cb=disconnected.set,
                         error_cb=errors.append)
    nc.subscribe("svc.echo", cb=lambda m: m.respond(b"echo " + m.data))
    sub = nc.subscribe("events")
    got = []
    all_cb = threading.Event()
    def on_cb(m):
        got.append(m.data)
        if len(got) == N:
            all_cb.set()
    nc.subscribe("cb.events", cb=on_cb)
    nc.flush()

    def work(i):
        nc.publish("events", str(i).encode())
        nc.publish("cb.events", str(i).encode())
        r = nc.request("svc.echo", str(i).encode(), timeout=5)
        assert r.data == b"echo %d" % i, r.data
    joinall([spawn(work, i) for i in range(N)])
    seen = sorted(int(sub.next_msg(timeout=5).data) for _ in range(N))
    assert seen == list(range(N)), seen
    assert all_cb.wait(10) and sorted(int(x) for x in got) == list(range(N))
    print("pubsub+request+callbacks from", N, "greenlets: ok", flush=True)

    # reconnect
    server.stop()
    assert disconnected.wait(10), "no disconnect noticed"
    server.start()
    assert reconnected.wait(15), "did not reconnect"
    assert nc.request("svc.echo", b"again", timeout=5).data == b"echo again"
    print("reconnect: ok", flush=True)

    # a lazy client used first by 100 greenlets at once: one connection
    lazy = natsync.connect(server.url, lazy=True, name="lazy-green", connect_timeout=0.5)
    def first_use(i):
        lazy.publish("events", b"x")
        lazy.flush(5)
    joinall([spawn(first_use, i) for i in range(N)])
    with urllib.request.urlopen(server.monitor_url + "/connz", timeout=5) as resp:
        names = [c.get("name") for c in json.loads(resp.read())["connections"]]
    assert names.count("lazy-green") == 1, names
    print("lazy client, one connection for", N, "greenlets: ok", flush=True)

    started = time.monotonic()
    joinall([spawn(lazy.close), spawn(nc.close)])
    assert nc.is_closed and lazy.is_closed
    deadline = time.monotonic() + 2
    left = []
    while True:
        left = [t.name for t in threading.enumerate() if t.name.startswith("natsync") and t.is_alive()]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    took = time.monotonic() - started
    state = "ok" if not left else "threads still running: " + ", ".join(left)
    print(f"close: {state} ({took:.1f} s)", flush=True)
finally:
    server.stop()
print("ALL OK", MODE, flush=True)
"""

MODES = ("gevent", "eventlet")
STAGES = [
    "pubsub+request+callbacks from 100 greenlets: ok",
    "reconnect: ok",
    "lazy client, one connection for 100 greenlets: ok",
]


@pytest.fixture(scope="module")
def outputs(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, subprocess.CompletedProcess[str]]]:
    """Run both modes at once (each takes a few seconds, mostly waiting)."""
    path = tmp_path_factory.mktemp("green") / "green_check.py"
    path.write_text(SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONWARNINGS="ignore")
    procs = {
        mode: subprocess.Popen(
            [sys.executable, str(path), mode],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for mode in MODES
    }
    results: dict[str, subprocess.CompletedProcess[str]] = {}
    try:
        for mode, p in procs.items():
            out, err = p.communicate(timeout=50)
            results[mode] = subprocess.CompletedProcess(p.args, p.returncode, out, err)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait(5)
    yield results


@pytest.mark.parametrize("mode", MODES)
def test_natsync_works_after_monkey_patching(
    mode: str, outputs: dict[str, subprocess.CompletedProcess[str]]
) -> None:
    proc = outputs[mode]
    report = f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0, report
    lines = proc.stdout.splitlines()
    for stage in STAGES:
        assert stage in lines, report
    assert f"ALL OK {mode}" in lines, report
    assert "Traceback" not in proc.stderr, report


def test_gevent_close_stops_every_thread(outputs: dict[str, subprocess.CompletedProcess[str]]) -> None:
    proc = outputs["gevent"]
    assert any(line.startswith("close: ok") for line in proc.stdout.splitlines()), proc.stdout


def test_eventlet_close_stops_every_thread(outputs: dict[str, subprocess.CompletedProcess[str]]) -> None:
    proc = outputs["eventlet"]
    assert any(line.startswith("close: ok") for line in proc.stdout.splitlines()), proc.stdout


def test_the_script_is_a_real_check(tmp_path: Path) -> None:
    """An unknown mode fails: the script does not pass by doing nothing."""
    path = tmp_path / "green_check.py"
    path.write_text(SCRIPT)
    proc = subprocess.run([sys.executable, str(path), "asyncio"], capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0 and "unknown mode asyncio" in proc.stderr
