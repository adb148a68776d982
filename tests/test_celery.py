"""Celery's prefork pool publishing from tasks, against a real nats-server.

A real ``celery worker --pool prefork -c 2`` runs a tasks module whose NATS client is
created at import time with ``lazy=True`` (so in the main process, before the pool
forks). Tasks are sent through kombu's ``filesystem://`` transport, which works across
processes without a broker service. Checked with ``/connz`` and ``/proc``: the main
process holds no NATS connection, each pool process that ran a task holds exactly one,
every task's event reaches a separate subscriber exactly once, and a warm shutdown
(SIGTERM) exits 0 without a traceback and leaves no connection behind (the pool
processes drain their client on ``worker_process_shutdown``: Celery's pool processes
end with ``os._exit``, so ``atexit`` never runs there).
"""

from __future__ import annotations

import signal
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from webkit import PYTHON, Proc, children, connz, nats_conns_by_pid, wait_for

import natsync
from natsync.testing import NATSServer

TASKS = 40

TASKS_MODULE = '''
"""Celery tasks that publish to NATS (the pattern the README recommends)."""
import os
from pathlib import Path

from celery import Celery
from celery.signals import worker_process_shutdown

import natsync

QUEUE = Path(os.environ["CELERY_QUEUE_DIR"])
app = Celery("natsync_celery", broker="filesystem://")
app.conf.update(
    broker_transport_options={
        "data_folder_in": str(QUEUE),
        "data_folder_out": str(QUEUE),
        "control_folder": str(QUEUE / "control"),
        "polling_interval": 0.1,
    },
    task_ignore_result=True,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
)

# Created at import (in the main process, before the pool forks): lazy, so each pool
# process connects on its first task, and the main process never does.
nc = natsync.connect(
    os.environ["NATS_URL"], lazy=True, name="celery-tasks",
    retry_on_failed_connect=True, max_reconnect_attempts=-1,
)


@app.task
def announce(i):
    nc.publish("tasks.done", f"{i}:{os.getpid()}".encode())


@worker_process_shutdown.connect
def drain_nats(**kwargs):
    nc.drain(timeout=5)
'''


@pytest.fixture
def tasks_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder with the tasks module and the file-based queue; the module is importable."""
    (tmp_path / "queue").mkdir()
    (tmp_path / "celery_tasks.py").write_text(TASKS_MODULE)
    monkeypatch.setenv("CELERY_QUEUE_DIR", str(tmp_path / "queue"))
    monkeypatch.delenv("DJANGO_SETTINGS_MODULE", raising=False)  # no Celery Django fixup
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    module = sys.modules.pop("celery_tasks", None)
    if module is not None:
        module.nc.close()


@pytest.mark.timeout(90)
def test_prefork_pool_publishes_from_tasks(tasks_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tasks_folder
    with NATSServer(http_port=0) as server, natsync.connect(server.url, name="subscriber") as sub_nc:
        monitor = server.monitor_url
        assert monitor is not None
        monkeypatch.setenv("NATS_URL", server.url)
        sub = sub_nc.subscribe("tasks.done")
        sub_nc.flush()
        worker = Proc(
            [
                PYTHON, "-m", "celery", "-A", "celery_tasks", "worker",
                "--pool", "prefork", "-c", "2", "--loglevel", "INFO",
                "--without-heartbeat", "--without-gossip", "--without-mingle",
            ],
            env={"NATS_URL": server.url, "CELERY_QUEUE_DIR": str(folder / "queue")},
            cwd=folder,
            log=folder / "worker.log",
        )  # fmt: skip
        try:
            assert worker.wait_for_line(" ready.", 40), worker.output
            import celery_tasks  # the client side: its lazy client stays unused here

            for i in range(TASKS):
                celery_tasks.announce.delay(i)
            got: Counter[str] = Counter()
            pids: set[int] = set()
            deadline = time.monotonic() + 30
            while len(got) < TASKS and time.monotonic() < deadline:
                try:
                    number, pid = sub.next_msg(timeout=1).data.decode().split(":")
                except natsync.TimeoutError:
                    continue
                got[number] += 1
                pids.add(int(pid))
            sub_nc.flush()
            assert sorted(got, key=int) == [str(i) for i in range(TASKS)], worker.output[-3000:]
            assert set(got.values()) == {1} and sub.pending_msgs == 0

            pool = children(worker.pid)
            assert pids <= set(pool), (pids, pool)
            per = nats_conns_by_pid([worker.pid, *pool], server.port)
            assert per.pop(worker.pid) == 0, "the main process holds a NATS connection"
            assert all(n == (1 if pid in pids else 0) for pid, n in per.items()), (per, pids)
            assert sum(1 for c in connz(monitor) if c.get("name") == "celery-tasks") == len(pids)
            assert not celery_tasks.nc.is_connected
        finally:
            rc = worker.stop(signal.SIGTERM, timeout=30)
            worker.kill()
        assert rc == 0, worker.output[-3000:]
        assert "Traceback" not in worker.output, worker.output[-3000:]
        assert wait_for(lambda: not [c for c in connz(monitor) if c.get("name") == "celery-tasks"], 5)
