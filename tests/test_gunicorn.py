"""gunicorn serving the example Flask app against a real nats-server: the matrix of issue 10.

Every case runs ``gunicorn -c examples/gunicorn.conf.py`` (a config with no natsync hooks)
on ``examples/flask_app/app.py`` and checks, with the server's ``/connz`` and the
operating system's view of each process's sockets (``/proc``):

* the master holds no connection to NATS, every worker that served a request holds
  exactly one (a worker that served none holds none: the client is lazy), and the server
  sees exactly those;
* every event published by a view (``POST /orders/<id>``) reaches a separate subscriber
  exactly once, including across ``--max-requests`` recycling and a HUP reload;
* SIGTERM to the master ends everything in under 3 s with exit status 0 and no
  traceback, and the server sees no connection of the app afterwards.

The cases run concurrently (gunicorn boots are slow) in one test; its table of results
is printed and, with ``NATSYNC_GUNICORN_TABLE=path``, written to that file (it is the
table in the README). A second test boots gunicorn while NATS is down.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gunicorn
import pytest
from proxy import TCPProxy
from webkit import EXAMPLES, PYTHON, Proc, children, connz, free_port, http, nats_conns_by_pid, wait_for

import natsync
from natsync.testing import NATSServer

EVENTS = 60  # events published through views per case
CLIENTS = 8  # concurrent HTTP clients
GREETS = 24  # requests to the (slow) greeting service per case
SUBSCRIBER = "matrix-subscriber"
SHUTDOWN_LIMIT = 3.0  # seconds, from SIGTERM to the master's exit (issue 10)
BOOT_TIMEOUT = 30.0
DJANGO = EXAMPLES / "django_project"
_one_shutdown_at_a_time = threading.Lock()


@dataclass
class Case:
    name: str
    args: list[str]
    workers: int
    hup: bool = False
    django: bool = False  # the example Django project instead of the Flask app


CASES = [
    # --threads 1: gunicorn turns "sync" into "gthread" when threads > 1 (the config's default)
    Case("sync -w 3", ["-k", "sync", "-w", "3", "--threads", "1"], 3),
    Case("gthread -w 2 --threads 8", ["-k", "gthread", "-w", "2", "--threads", "8"], 2),
    Case("sync -w 2 --preload", ["-k", "sync", "-w", "2", "--threads", "1", "--preload"], 2),
    Case(
        "sync -w 2 --max-requests 10", ["-k", "sync", "-w", "2", "--threads", "1", "--max-requests", "10"], 2
    ),
    Case("gthread -w 2 + HUP reload", ["-k", "gthread", "-w", "2", "--threads", "4"], 2, hup=True),
    Case("gevent -w 2", ["-k", "gevent", "-w", "2", "--worker-connections", "100"], 2),
    Case("gevent -w 2 --preload", ["-k", "gevent", "-w", "2", "--preload"], 2),
    Case("django: sync -w 2", ["-k", "sync", "-w", "2", "--threads", "1"], 2, django=True),
]

_traffic_done = threading.Barrier(len(CASES))


@dataclass
class Result:
    case: Case
    served_by: set[int] = field(default_factory=set)  # worker pids that answered
    conns: dict[int, int] = field(default_factory=dict)  # live worker pid -> connections
    master_conns: int = -1
    server_clients: int = -1  # app connections the server saw (before shutdown)
    server_clients_after: int = -1  # ... and after shutdown
    sent: int = 0
    received: Counter[str] = field(default_factory=Counter)
    shutdown_s: float = -1.0
    returncode: int | None = None
    output: str = ""
    problems: list[str] = field(default_factory=list)

    @property
    def row(self) -> list[str]:
        per_worker = sorted(self.conns.values(), reverse=True)
        dup = sum(n - 1 for n in self.received.values() if n > 1)
        return [
            self.case.name,
            str(len(self.served_by)),
            " ".join(str(n) for n in per_worker) or "-",
            str(self.master_conns),
            f"{self.sent}/{len(self.received)}" + (f" ({dup} dup)" if dup else ""),
            f"{self.shutdown_s:.2f} s",
            "ok" if not self.problems else "FAIL",
        ]


# gunicorn 25.1+ opens a control socket at one fixed path per user: concurrent test
# instances would share it.
_NO_CONTROL = (
    ["--no-control-socket"] if tuple(int(x) for x in gunicorn.__version__.split(".")[:2]) >= (25, 1) else []
)


def _gunicorn(
    case: Case, server_url: str, port: int, log: Path, extra_env: dict[str, str] | None = None
) -> Proc:
    if case.django:
        db = log.with_suffix(".sqlite3")
        env = {
            "NATSYNC_SERVERS": server_url,
            "SHOP_DB": str(db),
            "DJANGO_SETTINGS_MODULE": "shop_project.settings",
        }
        migrate = Proc(
            [PYTHON, "manage.py", "migrate", "--no-input"], env=env, cwd=DJANGO, log=log.with_suffix(".m")
        )
        assert migrate.proc.wait(60) == 0, migrate.output
        migrate.kill()
        folder, target = DJANGO, "shop_project.wsgi"
    else:
        env = {"FLASK_NATS_URL": server_url}
        folder, target = EXAMPLES / "flask_app", "app:app"
    env.update(extra_env or {})
    args = [
        PYTHON, "-m", "gunicorn",
        "-c", str(EXAMPLES / "gunicorn.conf.py"),
        "--chdir", str(folder),
        "-b", f"127.0.0.1:{port}",
        *_NO_CONTROL,
        *case.args,
        target,
    ]  # fmt: skip
    return Proc(args, env=env, log=log)


def _fire(base: str, ids: range, result: Result) -> None:
    def one(i: int) -> None:
        try:
            status, body = http(f"{base}/orders/{i}", "POST")
        except OSError as e:
            result.problems.append(f"POST /orders/{i}: {e!r}")
            return
        if status != 201:
            result.problems.append(f"POST /orders/{i}: {status} {body}")
            return
        result.served_by.add(int(body["pid"]))
        result.sent += 1

    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(one, ids))


def _greet(base: str, result: Result) -> None:
    """Requests to a slow service first: every worker is busy at some point, so every
    worker gets to use (and connect) its client."""

    def one(i: int) -> None:
        try:
            status, body = http(f"{base}/greet/w{i}")
        except OSError as e:
            result.problems.append(f"GET /greet/w{i}: {e!r}")
            return
        if status != 200 or body.get("greeting") != f"hello, w{i}":
            result.problems.append(f"GET /greet/w{i}: {status} {body}")
            return
        result.served_by.add(int(body["pid"]))

    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(one, range(GREETS)))


def _slow_greeter(msg: natsync.Msg) -> None:
    time.sleep(0.05)
    msg.respond(b"hello, " + msg.data)


def _run_case(case: Case, tmp: Path) -> Result:
    result = Result(case)
    with NATSServer(http_port=0) as server, natsync.connect(server.url, name=SUBSCRIBER) as sub_nc:
        assert server.monitor_url is not None
        sub = sub_nc.subscribe("orders.created")
        for _ in range(CLIENTS):  # CLIENTS callback threads answer in parallel
            sub_nc.subscribe("svc.greet", queue="greeters", cb=_slow_greeter)
        sub_nc.flush()
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        g = _gunicorn(case, server.url, port, tmp / f"gunicorn-{CASES.index(case)}.log")
        try:
            if not wait_for(lambda: _up(base), BOOT_TIMEOUT):
                result.problems.append("gunicorn did not serve in time")
                return result
            _greet(base, result)
            if case.hup:
                _fire(base, range(EVENTS // 2), result)
                old = set(children(g.pid))
                os.kill(g.pid, signal.SIGHUP)
                if not wait_for(
                    lambda: not (set(children(g.pid)) & old) and len(children(g.pid)) == case.workers, 20
                ):
                    result.problems.append(f"HUP: old workers {old} still there: {children(g.pid)}")
                wait_for(lambda: _up(base), BOOT_TIMEOUT)
                _greet(base, result)
                _fire(base, range(EVENTS // 2, EVENTS), result)
            else:
                _fire(base, range(EVENTS), result)

            # Every event arrives once; a flush afterwards shows nothing more is coming.
            deadline = time.monotonic() + 15
            while len(result.received) < result.sent and time.monotonic() < deadline:
                try:
                    result.received[sub.next_msg(timeout=1.0).data.decode()] += 1
                except natsync.TimeoutError:
                    pass
            sub_nc.flush()
            while sub.pending_msgs:
                result.received[sub.next_msg(timeout=1.0).data.decode()] += 1

            # Connections settle (recycled workers close theirs) to: one per worker that
            # served, none in the master, and the server sees exactly those.
            def snapshot() -> bool:
                workers = children(g.pid)
                per = nats_conns_by_pid([g.pid, *workers], server.port)
                result.master_conns = per.pop(g.pid)
                result.conns = per
                result.server_clients = sum(
                    1 for c in connz(server.monitor_url or "") if c.get("name") != SUBSCRIBER
                )
                return (
                    len(workers) == case.workers
                    and result.master_conns == 0
                    and all(n == (1 if pid in result.served_by else 0) for pid, n in per.items())
                    and result.server_clients == sum(per.values())
                )

            if not wait_for(snapshot, 10, interval=0.1):
                result.problems.append(
                    f"connections: master {result.master_conns}, workers {result.conns} "
                    f"(served: {sorted(result.served_by)}), server sees {result.server_clients}"
                )
        finally:
            # Each shutdown is timed alone: after every case's traffic, one at a time.
            try:
                _traffic_done.wait(BOOT_TIMEOUT * 2)
            except threading.BrokenBarrierError:
                pass
            with _one_shutdown_at_a_time:
                result.returncode = g.stop(signal.SIGTERM)
                result.shutdown_s = g.stop_seconds if g.stop_seconds is not None else -1.0
            g.kill()
            result.output = g.output
        wait_for(
            lambda: sum(1 for c in connz(server.monitor_url) if c.get("name") != SUBSCRIBER) == 0,
            5,
            interval=0.1,
        )
        result.server_clients_after = sum(1 for c in connz(server.monitor_url) if c.get("name") != SUBSCRIBER)

    if result.sent != EVENTS:
        result.problems.append(f"only {result.sent} of {EVENTS} requests succeeded")
    missing = {str(i) for i in range(EVENTS)} - set(result.received)
    if missing:
        result.problems.append(f"events never received: {sorted(missing, key=int)}")
    dups = {k: n for k, n in result.received.items() if n > 1}
    if dups:
        result.problems.append(f"events received more than once: {dups}")
    if not result.served_by:
        result.problems.append("no worker served a request")
    if result.returncode != 0:
        result.problems.append(f"gunicorn exited {result.returncode}")
    if not 0 <= result.shutdown_s < SHUTDOWN_LIMIT:
        result.problems.append(f"shutdown took {result.shutdown_s:.2f} s")
    if "Traceback" in result.output:
        result.problems.append("a traceback in gunicorn's output")
    if result.server_clients_after != 0:
        result.problems.append(f"{result.server_clients_after} app connection(s) left after shutdown")
    return result


def _up(base: str) -> bool:
    """gunicorn answers (any status: the Django example has no /pid; 404 is an answer)."""
    try:
        http(f"{base}/pid", timeout=2.0)
        return True
    except OSError:
        return False


def _table(results: list[Result]) -> str:
    head = [
        "case",
        "workers used",
        "NATS connections per live worker",
        "in master",
        "events sent/received",
        "shutdown",
        "result",
    ]
    rows = [head] + [r.row for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    sep = "  ".join("=" * w for w in widths)
    lines = [sep, "  ".join(c.ljust(w) for c, w in zip(head, widths)).rstrip(), sep]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows[1:]]
    lines.append(sep)
    return "\n".join(lines)


@pytest.mark.timeout(150)
def test_gunicorn_matrix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with ThreadPoolExecutor(len(CASES)) as pool:
        results = list(pool.map(lambda c: _run_case(c, tmp_path), CASES))
    table = _table(results)
    with capsys.disabled():
        print("\n" + table)
    out = os.environ.get("NATSYNC_GUNICORN_TABLE")
    if out:
        Path(out).write_text(table + "\n")
    failures = [
        f"{r.case.name}: " + "; ".join(r.problems) + "\n--- output (tail) ---\n" + r.output[-3000:]
        for r in results
        if r.problems
    ]
    assert not failures, "\n\n".join(failures)


def test_nats_down_at_boot(tmp_path: Path) -> None:
    """Workers boot with NATS down; NATS requests fail fast with a clear 503; all recovers."""
    case = Case("sync -w 2, NATS down at boot", ["-k", "sync", "-w", "2", "--threads", "1"], 2)
    with NATSServer(http_port=0) as server, TCPProxy(server.host, server.port) as proxy:
        proxy.refuse(True)  # the app's NATS URL leads nowhere until refuse(False)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        options = '{"reconnect_time_wait": 0.1, "reconnect_jitter": 0.05, "connect_timeout": 0.5}'
        g = _gunicorn(case, proxy.url, port, tmp_path / "down.log", {"FLASK_NATS_OPTIONS": options})
        try:
            assert wait_for(lambda: _up(base), BOOT_TIMEOUT), g.output
            assert "Worker failed to boot" not in g.output

            status, body = http(f"{base}/health/nats")
            assert status == 503
            assert body["status"] in ("connecting", "reconnecting") and body["rtt_ms"] is None
            assert body["last_error"]

            started = time.monotonic()
            status, body = http(f"{base}/greet/ada")
            took = time.monotonic() - started
            assert status == 503, body
            assert body["error"] == "NATS unavailable" and "not connected" in body["detail"], body
            assert took < 10, f"a request needing NATS took {took:.1f} s while NATS was down"

            # Events published while NATS is down are buffered and sent when it is back.
            queued: list[Any] = [http(f"{base}/orders/{i}", "POST") for i in range(5)]
            assert all(s == 201 for s, _ in queued), queued

            with natsync.connect(server.url, name=SUBSCRIBER) as sub_nc:
                sub = sub_nc.subscribe("orders.created")
                sub_nc.subscribe("svc.greet", cb=lambda m: m.respond(b"hello, " + m.data))
                sub_nc.flush()
                proxy.refuse(False)

                healthy: list[Any] = []

                def health_ok() -> bool:
                    status, body = http(f"{base}/health/nats")
                    healthy[:] = [body]
                    return status == 200

                assert wait_for(health_ok, 20), healthy
                body = healthy[0]
                assert body["status"] == "ok" and body["rtt_ms"] is not None and body["server"] is None

                for i in range(5, 10):
                    assert http(f"{base}/orders/{i}", "POST")[0] == 201
                # The workers reconnect on their own (retry loop); a request that reaches one
                # still reconnecting gets a fast 503, so wait for an answer.
                greeted: list[Any] = []

                def greet_ok() -> bool:
                    greeted[:] = [http(f"{base}/greet/ada")]
                    return greeted[0][0] == 200

                assert wait_for(greet_ok, 10), greeted
                assert greeted[0][1]["greeting"] == "hello, ada"

                got: Counter[str] = Counter()
                deadline = time.monotonic() + 15
                while len(got) < 10 and time.monotonic() < deadline:
                    try:
                        got[sub.next_msg(timeout=1.0).data.decode()] += 1
                    except natsync.TimeoutError:
                        pass
                sub_nc.flush()
                assert sorted(got, key=int) == [str(i) for i in range(10)]
                assert set(got.values()) == {1} and sub.pending_msgs == 0

                workers = children(g.pid)
                per = nats_conns_by_pid([g.pid, *workers], proxy.port)
                assert per.pop(g.pid) == 0
                assert all(n <= 1 for n in per.values()), per
        finally:
            rc = g.stop(signal.SIGTERM)
            g.kill()
        assert rc == 0, g.output
        assert "Traceback" not in g.output, g.output
