"""Shared test helpers: an event-callback recorder and a bounded poll."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import natsync

WAIT = 10.0  # upper bound for anything that should happen "soon"


class Recorder:
    """Event callbacks that record what happened and let a test wait for it."""

    def __init__(self, wait: float = WAIT) -> None:
        self.cond = threading.Condition()
        self.default_wait = wait
        self.errors: list[natsync.NatsError] = []
        self.counts = {"disconnected": 0, "reconnected": 0, "closed": 0, "discovered": 0, "lame_duck": 0}
        self.threads: set[str] = set()

    def _note(self, what: str) -> None:
        with self.cond:
            self.counts[what] += 1
            self.threads.add(threading.current_thread().name)
            self.cond.notify_all()

    def error_cb(self, err: natsync.NatsError) -> None:
        with self.cond:
            self.errors.append(err)
            self.threads.add(threading.current_thread().name)
            self.cond.notify_all()

    def options(self) -> dict[str, Any]:
        """The connect() keywords of every event callback."""
        return {
            "error_cb": self.error_cb,
            "disconnected_cb": lambda: self._note("disconnected"),
            "reconnected_cb": lambda: self._note("reconnected"),
            "closed_cb": lambda: self._note("closed"),
            "discovered_server_cb": lambda: self._note("discovered"),
            "lame_duck_mode_cb": lambda: self._note("lame_duck"),
        }

    def wait(self, pred: Callable[[], bool], timeout: float | None = None) -> bool:
        with self.cond:
            return self.cond.wait_for(pred, self.default_wait if timeout is None else timeout)

    def wait_count(self, what: str, n: int = 1, timeout: float | None = None) -> bool:
        return self.wait(lambda: self.counts[what] >= n, timeout)

    def wait_errors(self, n: int, timeout: float | None = None) -> bool:
        return self.wait(lambda: len(self.errors) >= n, timeout)

    def errors_of(self, kind: type[BaseException]) -> list[natsync.NatsError]:
        with self.cond:
            return [e for e in self.errors if isinstance(e, kind)]


def wait_until(pred: Callable[[], bool], timeout: float = WAIT) -> bool:
    """Poll a condition that no callback reports (bounded; for state without an event)."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True
