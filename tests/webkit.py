"""Helpers for the tests of the web integrations (gunicorn, Celery, Flask, Django).

* :func:`nats_conns_by_pid` counts, from the operating system's side, the TCP connections
  each process holds to a NATS port (``/proc``, Linux);
* :func:`children` lists a process's child processes;
* :func:`http` makes one HTTP request and returns (status, JSON body);
* :class:`Proc` runs a command with its output in a file, waits for a line, stops it by
  PID and reports how long the stop took.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _established_inodes(remote_port: int) -> set[str]:
    inodes: set[str] = set()
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(path).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) < 10:
                continue
            rport = int(parts[2].rsplit(":", 1)[1], 16)
            if rport == remote_port and parts[3] == "01":  # 01 = ESTABLISHED
                inodes.add(parts[9])
    return inodes


def nats_conns_by_pid(pids: Sequence[int], nats_port: int) -> dict[int, int]:
    """For each pid, the number of established TCP connections it holds to *nats_port*."""
    inodes = _established_inodes(nats_port)
    out: dict[int, int] = {}
    for pid in pids:
        count = 0
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            out[pid] = 0
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:[") and link[8:-1] in inodes:
                count += 1
        out[pid] = count
    return out


def children(pid: int) -> list[int]:
    """The pids of the live (not zombie) child processes of *pid*."""
    kids: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces; split after the last ')'
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            kids.append(int(entry))
    return sorted(kids)


def alive(pid: int) -> bool:
    """True while *pid* exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def http(url: str, method: str = "GET", timeout: float = 10.0) -> tuple[int, Any]:
    """Make one request; return (status, parsed JSON body or the text)."""
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, body = resp.status, resp.read()
    except urllib.error.HTTPError as e:
        status, body = e.code, e.read()
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body.decode(errors="replace")


def connz(monitor_url: str) -> list[dict[str, Any]]:
    """The server's current client connections (``/connz``)."""
    with urllib.request.urlopen(monitor_url + "/connz?limit=1000", timeout=5.0) as resp:
        data = json.loads(resp.read())
    return list(data.get("connections") or [])


def wait_for(pred: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll *pred* until it is true (True) or *timeout* seconds passed (False)."""
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


class Proc:
    """A subprocess whose output goes to a file; stopped by PID, never by name."""

    def __init__(
        self, args: Sequence[str], *, env: dict[str, str] | None = None, cwd: Path | str = ROOT, log: Path
    ) -> None:
        full_env = dict(os.environ)
        full_env.update(env or {})
        full_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), full_env.get("PYTHONPATH", "")) if p)
        full_env.setdefault("PYTHONUNBUFFERED", "1")
        self.log_path = log
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            list(args), env=full_env, cwd=str(cwd), stdout=self._log, stderr=subprocess.STDOUT
        )
        self.pid = self.proc.pid
        self.stop_seconds: float | None = None

    @property
    def output(self) -> str:
        """Everything printed so far (stdout and stderr)."""
        return self.log_path.read_text(errors="replace")

    def wait_for_line(self, text: str, timeout: float) -> bool:
        """Wait until *text* appears in the output (False on timeout or exit)."""
        return wait_for(lambda: text in self.output or self.proc.poll() is not None, timeout) and (
            text in self.output
        )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Send *sig*, wait for the exit (kill after *timeout*); return the exit code."""
        if self.proc.poll() is None:
            started = time.monotonic()
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            self.stop_seconds = time.monotonic() - started
        self._log.close()
        return self.proc.returncode

    def kill(self) -> None:
        """Kill the process and its children (and close the log) if it still runs."""
        if self.proc.poll() is None:
            kids = children(self.pid)
            self.proc.kill()
            self.proc.wait(5)
            for kid in kids:
                try:
                    os.kill(kid, signal.SIGKILL)
                except OSError:
                    pass
        if not self._log.closed:
            self._log.close()


PYTHON = sys.executable
