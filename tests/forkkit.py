"""Shared piece of the fork-safety tests: run a function in a forked child and get its
result back."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable
from typing import Any


def run_in_child(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Fork; run *fn* in the child and return what it returned (as JSON through a pipe).
    The child always ends with os._exit, never running the parent's cleanup."""
    r, w = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12+ warns that fork() in a multi-threaded process may deadlock: that
        # is exactly the situation under test.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            os.close(r)
            try:
                result = fn()
            except BaseException as e:  # noqa: BLE001 - reported to the parent
                result = {"child_crashed": f"{type(e).__name__}: {e}"}
            with os.fdopen(w, "w") as f:
                json.dump(result, f)
        except BaseException:  # noqa: BLE001
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r) as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, data
    result: dict[str, Any] = json.loads(data)
    assert "child_crashed" not in result, result["child_crashed"]
    return result
