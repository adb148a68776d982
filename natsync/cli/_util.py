"""Shared pieces of the ``natsync`` command: errors, argument types, output, signals,
confirmation prompts and the reply/answer gathering used by several command groups."""

from __future__ import annotations

import argparse
import base64
import dataclasses
import datetime
import enum
import json
import math
import re
import sys
import threading
import time
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

from ..client import Client
from ..errors import NatsError, PermissionsError
from ..errors import TimeoutError as NatsTimeoutError
from ..headers import Headers
from ..msg import Msg

PROG = "natsync"


class CommandError(Exception):
    """A failure reported as one line on standard error with exit status 1."""


class Interrupt:
    """SIGINT/SIGTERM handling: streaming commands poll :attr:`event`; others get
    KeyboardInterrupt.  :attr:`event` is a threading.Event (thread-safe on its own);
    :attr:`polling` is written by the main thread only."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.polling = False

    def handler(self, signum: int, frame: FrameType | None) -> None:
        self.event.set()
        if not self.polling:
            raise KeyboardInterrupt


interrupt = Interrupt()


class Problems:
    """Errors the server reports asynchronously (``error_cb``) that make a command fail.

    Guard: :attr:`lock` guards :attr:`errors` (written on the event thread, read on the
    main thread)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.errors: list[NatsError] = []

    def error_cb(self, err: NatsError) -> None:
        if isinstance(err, PermissionsError):
            with self.lock:
                self.errors.append(err)

    def clear(self) -> None:
        with self.lock:
            self.errors.clear()

    def check(self) -> None:
        with self.lock:
            first = self.errors[0] if self.errors else None
        if first is not None:
            raise CommandError(one_line(first))


problems = Problems()


def one_line(e: BaseException) -> str:
    """*e* as one line of text (a NatsError keeps its class name in front)."""
    text = " ".join(str(e).split()) or type(e).__name__
    if isinstance(e, NatsError):
        return f"{type(e).__name__}: {text}"
    return text


# --- argument types --------------------------------------------------------------------

_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds from ``"2.5"`` (seconds) or a Go duration (``"1m30s"``, ``"500ms"``)."""
    t = text.strip()
    try:
        v = float(t)
    except ValueError:
        pos, v = 0, 0.0
        if not t:
            raise ValueError("empty duration") from None
        while pos < len(t):
            m = _DURATION.match(t, pos)
            if not m:
                raise ValueError(
                    f"not a duration: {text!r} (use seconds, or e.g. 2s, 500ms, 1m30s)"
                ) from None
            v += float(m.group(1)) * _UNITS[m.group(2)]
            pos = m.end()
    if math.isnan(v) or math.isinf(v) or v < 0:
        raise ValueError(f"not a duration: {text!r}")
    return v


def duration(text: str) -> float:
    """argparse type: a duration > 0 (seconds or Go syntax)."""
    try:
        v = parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return v


def duration0(text: str) -> float:
    """argparse type: a duration >= 0."""
    try:
        return parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be an integer > 0, got {text!r}")
    return v


def non_negative_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return v


def header_arg(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    name = name.strip()
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"header must look like NAME:VALUE, got {text!r}")
    return name, value.strip()


# --- output ----------------------------------------------------------------------------


def jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, (datetime.datetime, datetime.date)):
        return obj.isoformat()
    if isinstance(obj, datetime.timedelta):
        return obj.total_seconds()
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return text_or_b64(bytes(obj))[0]
    if isinstance(obj, Headers):
        return {k: obj.get_all(k) for k in obj}
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    return str(obj)


def dumps(doc: Any) -> str:
    return json.dumps(doc, default=jsonable, ensure_ascii=False)


def text_or_b64(data: bytes) -> tuple[str, bool]:
    try:
        return data.decode("utf-8"), False
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii"), True


def out(line: str = "") -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def status(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def headers_dict(h: Headers | None) -> dict[str, list[str]] | None:
    if h is None:
        return None
    return {k: h.get_all(k) for k in h}


def msg_doc(msg: Msg, with_headers: bool = True) -> dict[str, Any]:
    text, b64 = text_or_b64(msg.data)
    doc: dict[str, Any] = {"subject": msg.subject}
    if msg.reply:
        doc["reply"] = msg.reply
    if with_headers and msg.headers is not None:
        doc["headers"] = headers_dict(msg.headers)
    doc["data_b64" if b64 else "data"] = text
    return doc


def write_data(data: bytes) -> None:
    sys.stdout.flush()
    sys.stdout.buffer.write(data)
    if not data.endswith(b"\n"):
        sys.stdout.buffer.write(b"\n")
    sys.stdout.buffer.flush()


def print_headers(h: Headers | None) -> None:
    if h is None:
        return
    for k in h:
        for v in h.get_all(k):
            out(f"{k}: {v}")


def table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> None:
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for r in cells:
        out("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


def get(obj: Any, *names: str, default: Any = None) -> Any:
    """``obj.a.b`` or ``obj["a"]["b"]``, or *default* when a step is missing."""
    for name in names:
        if obj is None:
            return default
        obj = obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)
    return default if obj is None else obj


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


# --- confirmation ----------------------------------------------------------------------


def confirm(args: argparse.Namespace, question: str) -> None:
    """Ask *question* on the terminal unless ``-f``; raise CommandError when not confirmed.

    Without a terminal on standard input nothing can be asked, so a destructive command
    needs ``-f`` there (as the Go ``nats`` CLI)."""
    if getattr(args, "force", False):
        return
    stdin = sys.stdin
    if stdin is None or not _isatty(stdin):
        raise CommandError(
            f"{question.rstrip('?')}: refusing without a terminal to ask on; pass -f to confirm"
        )
    sys.stderr.write(f"{question} [y/N] ")
    sys.stderr.flush()
    answer = stdin.readline()
    if answer.strip().lower() not in ("y", "yes"):
        raise CommandError("not confirmed: nothing was changed")


def _isatty(f: Any) -> bool:
    try:
        return bool(f.isatty())
    except (OSError, ValueError, AttributeError):
        return False


def stdin_is_tty() -> bool:
    return sys.stdin is None or _isatty(sys.stdin)


def read_stdin() -> bytes:
    """All of standard input, as bytes."""
    if sys.stdin is None:
        return b""
    buf = getattr(sys.stdin, "buffer", None)
    try:
        if buf is not None:
            return bytes(buf.read())
        return str(sys.stdin.read()).encode()
    except OSError as e:
        raise CommandError(f"cannot read standard input: {e}") from None


def add_force(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--force", action="store_true", help="do not ask for confirmation")


# --- gathering answers -----------------------------------------------------------------

STALL = 0.3  # natscli's --reply-timeout default: wait this long after the last answer


def gather(
    nc: Client,
    subject: str,
    payload: bytes,
    timeout: float,
    *,
    max_answers: int | None = None,
    stall: float | None = STALL,
    headers: Headers | None = None,
) -> list[tuple[Msg, float]]:
    """Publish *payload* to *subject* with a fresh inbox as reply and collect answers:
    the first within *timeout*, the next ones until *stall* seconds pass without one
    (``None``: until *timeout*), or *max_answers* arrived.  Returns (msg, rtt seconds)
    pairs.  A no-responders status ends the wait with no answer."""
    inbox = nc.new_inbox()
    answers: list[tuple[Msg, float]] = []
    with nc.subscribe(inbox) as sub:
        t0 = time.monotonic()
        nc.publish(subject, payload, reply=inbox, headers=headers)
        deadline = t0 + timeout
        while max_answers is None or len(answers) < max_answers:
            now = time.monotonic()
            left = deadline - now
            if answers and stall is not None:
                left = min(left, stall)
            if left <= 0:
                break
            try:
                msg = sub.next_msg(timeout=left)
            except NatsTimeoutError:
                break
            h = msg.headers
            if h is not None and h.status == 503 and not msg.data:
                break
            answers.append((msg, time.monotonic() - t0))
    return answers


def wait_interruptible(done: Callable[[], bool], poll: float = 0.25) -> None:
    """Wait until *done()* or Ctrl-C/SIGTERM (checking server-reported problems)."""
    while not interrupt.event.is_set() and not done():
        problems.check()
        interrupt.event.wait(poll)


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n} B"
