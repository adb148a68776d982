"""What the ``kv`` and ``obj`` subcommands do alike: answer in JSON or text, list the
buckets, delete a bucket, follow a watcher."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from ..errors import TimeoutError as NatsTimeoutError
from ._util import confirm, dumps, get, interrupt, out, problems


def report(args: argparse.Namespace, doc: Any, text: str) -> None:
    """Print *doc* as JSON with ``--json``, else the line *text*."""
    out(dumps(doc) if args.json else text)


def list_buckets(js: Any, args: argparse.Namespace, prefix: str, none_text: str) -> int:
    """Print the names of the buckets whose streams are named *prefix* + bucket, sorted
    (``--json``: a list; none: *none_text*)."""
    names = sorted(
        str(get(i, "config", "name"))[len(prefix) :]
        for i in js.streams_info()
        if str(get(i, "config", "name", default="")).startswith(prefix)
    )
    if args.json:
        out(dumps(names))
    elif not names:
        out(none_text)
    else:
        for n in names:
            out(n)
    return 0


def delete_bucket(args: argparse.Namespace, delete: Callable[[str], object], what: str, contents: str) -> int:
    """Ask (unless ``--force``), then ``delete(args.bucket)``; *what* names the kind of
    bucket ("bucket", "object store"), *contents* what goes with it ("keys")."""
    confirm(args, f"Delete {what} {args.bucket!r} with all its {contents}?")
    delete(args.bucket)
    report(args, {"bucket": args.bucket, "deleted": True}, f"Deleted {what} {args.bucket!r}")
    return 0


def follow(
    args: argparse.Namespace,
    watcher: Any,
    show: Callable[[Any], None],
    on_current: Callable[[], None] | None = None,
) -> int:
    """Print each update of *watcher* with *show* until Ctrl-C/SIGTERM, the watcher's
    end, or ``--count`` updates; then stop the watcher.  A None update (the current
    values are delivered) calls *on_current*."""
    n = 0
    try:
        while not interrupt.event.is_set():
            problems.check()
            try:
                update = watcher.updates(timeout=0.25)
            except NatsTimeoutError:
                continue
            except StopIteration:  # the watcher ended
                break
            if update is None:
                if on_current is not None:
                    on_current()
                continue
            n += 1
            show(update)
            if args.count is not None and n >= args.count:
                break
    finally:
        watcher.stop()
    return 0
