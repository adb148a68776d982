"""The ``natsync`` command: everyday NATS operations from a shell, on the blocking client.

Run ``natsync --help`` (or ``python -m natsync --help``) for the commands.  Connection
options (``--server``, ``--token``, ``--user``/``--password``, ``--creds``, ``--nkey``,
``--tls-ca``, ``--tls-cert``/``--tls-key``) and ``--json`` go before or after the
command; without them the environment variables of the Go ``nats`` CLI are read
(``NATS_URL``, ``NATS_USER``, ``NATS_PASSWORD``, ``NATS_CREDS``, ``NATS_NKEY``,
``NATS_CA``, ``NATS_CERT``, ``NATS_KEY``) plus ``NATS_TOKEN``.  ``--token -`` reads the
token from standard input, so it stays out of ``ps``.

Output is for humans by default; ``--json`` prints one JSON document (JSON Lines for
streams such as ``sub`` and ``kv watch``).  Exit status: 0 success, 1 error (one line on
standard error, no traceback), 2 usage error.  Ctrl-C ends streaming commands after
draining the connection, with status 0.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import datetime
import enum
import importlib
import io
import json
import logging
import math
import os
import signal
import ssl
import sys
import threading
import time
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

from . import micro
from .client import Client, __version__
from .errors import NatsError, NoRespondersError, PermissionsError
from .errors import TimeoutError as NatsTimeoutError
from .headers import Headers
from .msg import Msg

__all__ = ["main", "build_parser"]

PROG = "natsync"
DEFAULT_URL = "nats://127.0.0.1:4222"
CLIENT_NAME = "natsync-cli"


class CommandError(Exception):
    """A failure reported as one line on standard error with exit status 1."""


class _Interrupt:
    """SIGINT handling: streaming commands poll :attr:`event`; others get KeyboardInterrupt."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.polling = False

    def handler(self, signum: int, frame: FrameType | None) -> None:
        self.event.set()
        if not self.polling:
            raise KeyboardInterrupt


_interrupt = _Interrupt()


# --- argument parsing ----------------------------------------------------------------


def _conn_parent() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("connection (also accepted after the command)")
    S = argparse.SUPPRESS
    g.add_argument("-s", "--server", default=S, metavar="URL",
                   help="server URL(s), comma separated (env NATS_URL; default nats://127.0.0.1:4222)")
    g.add_argument("--token", default=S, help="auth token, '-' to read it from stdin (env NATS_TOKEN)")
    g.add_argument("--user", default=S, help="user name (env NATS_USER)")
    g.add_argument("--password", default=S, help="password (env NATS_PASSWORD)")
    g.add_argument("--creds", default=S, metavar="FILE", help="JWT credentials file (env NATS_CREDS)")
    g.add_argument("--nkey", default=S, metavar="FILE", help="NKEY seed file (env NATS_NKEY)")
    g.add_argument("--tls-ca", default=S, metavar="FILE", help="CA certificates for TLS (env NATS_CA)")
    g.add_argument("--tls-cert", default=S, metavar="FILE", help="client certificate (env NATS_CERT)")
    g.add_argument("--tls-key", default=S, metavar="FILE", help="client certificate key (env NATS_KEY)")
    g.add_argument("--connect-timeout", default=S, type=_positive_float, metavar="SECONDS",
                   help="connect timeout per server (default 2)")
    g.add_argument("--json", action="store_true", default=S, help="machine-readable JSON output")
    return p


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not v > 0 or math.isinf(v):
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")
    return v


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be an integer > 0, got {text!r}")
    return v


def _non_negative_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return v


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    name = name.strip()
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"header must look like NAME:VALUE, got {text!r}")
    return name, value.strip()


def build_parser() -> argparse.ArgumentParser:
    """The ``natsync`` argument parser (exposed for documentation and tests)."""
    conn = _conn_parent()
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="natsync: the NATS command line of the natsync Python client.",
        parents=[conn],
        epilog="Connection options and --json may also follow the command. "
        "Exit status: 0 ok, 1 error, 2 usage.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def cmd(parent: Any, name: str, help_: str, fn: Callable[..., int]) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = parent.add_parser(name, help=help_, description=help_, parents=[conn])
        p.set_defaults(func=fn)
        return p

    p = cmd(sub, "pub", "publish a message", cmd_pub)
    p.add_argument("subject")
    p.add_argument("data", nargs="?", default="", help="payload; {{Count}} is replaced by the message number")
    p.add_argument("--count", type=_positive_int, default=1, help="publish this many messages (default 1)")
    p.add_argument("--header", "-H", type=_header, action="append", default=[], metavar="K:V",
                   help="add a header (repeatable)")
    p.add_argument("--reply", default=None, help="reply subject")

    p = cmd(sub, "sub", "subscribe and print messages until Ctrl-C (or --count)", cmd_sub)
    p.add_argument("subject")
    p.add_argument("--queue", default=None, help="join this queue group")
    p.add_argument("--count", type=_positive_int, default=None, help="exit after this many messages")
    p.add_argument("--headers", action="store_true", help="print message headers")

    p = cmd(sub, "req", "send a request and print the reply", cmd_req)
    p.add_argument("subject")
    p.add_argument("data", nargs="?", default="")
    p.add_argument("--timeout", type=_positive_float, default=2.0, help="seconds to wait (default 2)")
    p.add_argument("--header", "-H", type=_header, action="append", default=[], metavar="K:V")
    p.add_argument("--headers", action="store_true", help="print the reply's headers")

    p = cmd(sub, "reply", "answer requests on SUBJECT with RESPONSE until Ctrl-C (or --count)", cmd_reply)
    p.add_argument("subject")
    p.add_argument("response")
    p.add_argument("--queue", default=None, help="join this queue group")
    p.add_argument("--count", type=_positive_int, default=None, help="exit after this many requests")

    p = cmd(sub, "bench", "measure throughput (msgs/s) and request latency, like `nats bench`", cmd_bench)
    p.add_argument("mode", choices=("pub", "sub", "pubsub", "req"))
    p.add_argument("--subject", default=None, help="subject (default: a fresh one; sub: 'natsync.bench')")
    p.add_argument("--msgs", type=_positive_int, default=None,
                   help="messages (default 100000; req: 5000)")
    p.add_argument("--size", type=_non_negative_int, default=16, help="payload bytes (default 16)")
    p.add_argument("--timeout", type=_positive_float, default=10.0,
                   help="give up after this many seconds without progress (default 10)")
    p.add_argument("--no-progress", action="store_true", help="do not show progress on standard error")
    p.add_argument("--progress-interval", type=_positive_float, default=1.0, help=argparse.SUPPRESS)

    p = cmd(sub, "rtt", "measure the round trip time to the server", cmd_rtt)
    p.add_argument("--count", type=_positive_int, default=5, help="round trips (default 5)")

    server = sub.add_parser("server", help="server commands", parents=[conn])
    ssub = server.add_subparsers(dest="server_command", metavar="SUBCOMMAND", required=True)
    cmd(ssub, "info", "print the INFO of the connected server", cmd_server_info)

    m = sub.add_parser("micro", help="discover NATS services (ADR-32)", parents=[conn])
    msub = m.add_subparsers(dest="micro_command", metavar="SUBCOMMAND", required=True)
    micro_cmds = (("ls", "list services"), ("info", "describe services"), ("stats", "service statistics"))
    for name, help_ in micro_cmds:
        p = cmd(msub, name, help_, cmd_micro)
        p.add_argument("name", nargs="?", default=None, help="service name")
        p.add_argument("id", nargs="?", default=None, help="instance id")
        p.add_argument("--timeout", type=_positive_float, default=1.0, help="seconds to collect answers")

    st = sub.add_parser("stream", help="JetStream streams", parents=[conn])
    stsub = st.add_subparsers(dest="stream_command", metavar="SUBCOMMAND", required=True)
    cmd(stsub, "ls", "list streams", cmd_stream_ls)
    p = cmd(stsub, "info", "describe a stream", cmd_stream_info)
    p.add_argument("name")
    p = cmd(stsub, "add", "create a stream", cmd_stream_add)
    p.add_argument("name")
    p.add_argument("--subjects", action="append", default=[], metavar="SUBJECT",
                   help="subject(s), comma separated or repeated (default: the stream name)")
    p.add_argument("--storage", choices=("file", "memory"), default="file")
    p.add_argument("--retention", choices=("limits", "interest", "workqueue"), default="limits")
    p.add_argument("--max-msgs", type=int, default=None)
    p.add_argument("--max-bytes", type=int, default=None)
    p.add_argument("--max-age", type=_positive_float, default=None, metavar="SECONDS")
    p.add_argument("--replicas", type=_positive_int, default=1)
    p = cmd(stsub, "rm", "delete a stream", cmd_stream_rm)
    p.add_argument("name")

    kv = sub.add_parser("kv", help="Key/Value store", parents=[conn])
    kvsub = kv.add_subparsers(dest="kv_command", metavar="SUBCOMMAND", required=True)
    p = cmd(kvsub, "add", "create a bucket", cmd_kv_add)
    p.add_argument("bucket")
    p.add_argument("--history", type=_positive_int, default=1)
    p.add_argument("--ttl", type=_positive_float, default=None, metavar="SECONDS")
    p = cmd(kvsub, "get", "print a key's value", cmd_kv_get)
    p.add_argument("bucket")
    p.add_argument("key")
    p = cmd(kvsub, "put", "set a key", cmd_kv_put)
    p.add_argument("bucket")
    p.add_argument("key")
    p.add_argument("value", help="the value; '-' reads standard input")
    p = cmd(kvsub, "del", "delete a key", cmd_kv_del)
    p.add_argument("bucket")
    p.add_argument("key")
    p = cmd(kvsub, "ls", "list buckets, or the keys of BUCKET", cmd_kv_ls)
    p.add_argument("bucket", nargs="?", default=None)
    p = cmd(kvsub, "watch", "print changes of a bucket until Ctrl-C (or --count)", cmd_kv_watch)
    p.add_argument("bucket")
    p.add_argument("keys", nargs="?", default=">", help="key pattern (default '>')")
    p.add_argument("--count", type=_positive_int, default=None, help="exit after this many updates")

    ob = sub.add_parser("obj", help="Object Store", parents=[conn])
    obsub = ob.add_subparsers(dest="obj_command", metavar="SUBCOMMAND", required=True)
    p = cmd(obsub, "add", "create a bucket", cmd_obj_add)
    p.add_argument("bucket")
    p = cmd(obsub, "put", "store a file", cmd_obj_put)
    p.add_argument("bucket")
    p.add_argument("file", help="file to store; '-' reads standard input (then --name is needed)")
    p.add_argument("--name", default=None, help="object name (default: the file's name)")
    p = cmd(obsub, "get", "fetch an object", cmd_obj_get)
    p.add_argument("bucket")
    p.add_argument("name")
    p.add_argument("--output", "-o", default=None, metavar="FILE", help="write here (default: stdout)")
    p = cmd(obsub, "ls", "list objects", cmd_obj_ls)
    p.add_argument("bucket")
    p = cmd(obsub, "rm", "delete an object", cmd_obj_rm)
    p.add_argument("bucket")
    p.add_argument("name")
    return parser


# --- connecting ----------------------------------------------------------------------


def _opt(args: argparse.Namespace, name: str, env: str | None) -> Any:
    value = getattr(args, name, None)
    if value is None and env is not None:
        value = os.environ.get(env) or None
    return value


def connect(args: argparse.Namespace) -> Client:
    """Connect as the connection options and environment of *args* say."""
    servers = _opt(args, "server", "NATS_URL") or DEFAULT_URL
    kwargs: dict[str, Any] = {"name": CLIENT_NAME, "error_cb": _problems.error_cb}
    token = _opt(args, "token", "NATS_TOKEN")
    if token == "-":
        token = sys.stdin.readline().strip()
        if not token:
            raise CommandError("--token -: no token on standard input")
        args.token = token  # read once: bench opens more connections with these args
    if token:
        kwargs["token"] = token
    user = _opt(args, "user", "NATS_USER")
    password = _opt(args, "password", "NATS_PASSWORD")
    if user is not None:
        kwargs["user"] = user
    if password is not None:
        kwargs["password"] = password
    creds = _opt(args, "creds", "NATS_CREDS")
    if creds:
        kwargs["user_credentials"] = creds
    nkey = _opt(args, "nkey", "NATS_NKEY")
    if nkey:
        kwargs["nkeys_seed"] = nkey
    ca = _opt(args, "tls_ca", "NATS_CA")
    cert = _opt(args, "tls_cert", "NATS_CERT")
    key = _opt(args, "tls_key", "NATS_KEY")
    if ca or cert or key:
        if bool(cert) != bool(key):
            raise CommandError("--tls-cert and --tls-key go together: give both or neither")
        try:
            ctx = ssl.create_default_context(cafile=ca)
            if cert:
                ctx.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as e:
            raise CommandError(f"cannot load TLS files: {e}") from None
        kwargs["tls"] = ctx
    timeout = getattr(args, "connect_timeout", None)
    if timeout is not None:
        kwargs["connect_timeout"] = timeout
    from .client import connect as _connect

    return _connect(servers, **kwargs)


# --- output --------------------------------------------------------------------------


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, (datetime.datetime, datetime.date)):
        return obj.isoformat()
    if isinstance(obj, datetime.timedelta):
        return obj.total_seconds()
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return _text_or_b64(bytes(obj))[0]
    if isinstance(obj, Headers):
        return {k: obj.get_all(k) for k in obj}
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    return str(obj)


def _dumps(doc: Any) -> str:
    return json.dumps(doc, default=_jsonable, ensure_ascii=False)


def _text_or_b64(data: bytes) -> tuple[str, bool]:
    try:
        return data.decode("utf-8"), False
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii"), True


def _out(line: str = "") -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _status(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _headers_dict(h: Headers | None) -> dict[str, list[str]] | None:
    if h is None:
        return None
    return {k: h.get_all(k) for k in h}


def _msg_doc(msg: Msg, with_headers: bool = True) -> dict[str, Any]:
    text, b64 = _text_or_b64(msg.data)
    doc: dict[str, Any] = {"subject": msg.subject}
    if msg.reply:
        doc["reply"] = msg.reply
    if with_headers and msg.headers is not None:
        doc["headers"] = _headers_dict(msg.headers)
    doc["data_b64" if b64 else "data"] = text
    return doc


def _write_data(data: bytes) -> None:
    sys.stdout.flush()
    sys.stdout.buffer.write(data)
    if not data.endswith(b"\n"):
        sys.stdout.buffer.write(b"\n")
    sys.stdout.buffer.flush()


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> None:
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for r in cells:
        _out("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


def _fmt_rate(v: float) -> str:
    return f"{v:,.0f}"


# --- core commands -------------------------------------------------------------------


def _hdrs(pairs: list[tuple[str, str]]) -> Headers | None:
    if not pairs:
        return None
    h = Headers()
    for k, v in pairs:
        h.add(k, v)
    return h


def cmd_pub(nc: Client, args: argparse.Namespace) -> int:
    """``natsync pub SUBJECT [DATA]``."""
    hdrs = _hdrs(args.header)
    templ = "{{Count}}" in args.data or "{{.Count}}" in args.data
    total = 0
    for i in range(1, args.count + 1):
        data = args.data.replace("{{Count}}", str(i)).replace("{{.Count}}", str(i)) if templ else args.data
        nc.publish(args.subject, data, reply=args.reply, headers=hdrs)
        total += len(data.encode())
    nc.flush(timeout=10.0)
    if args.json:
        _out(_dumps({"subject": args.subject, "count": args.count, "bytes": total}))
    else:
        _out(f"Published {args.count} message{'s' if args.count != 1 else ''} to {args.subject!r}")
    return 0


def _print_msg(n: int, msg: Msg, args: argparse.Namespace, with_headers: bool) -> None:
    if args.json:
        _out(_dumps(_msg_doc(msg, with_headers)))
        return
    head = f"[#{n}] Received on {msg.subject!r}"
    if msg.reply:
        head += f" with reply {msg.reply!r}"
    _out(head)
    if with_headers and msg.headers is not None:
        for k in msg.headers:
            for v in msg.headers.get_all(k):
                _out(f"{k}: {v}")
    _write_data(msg.data)
    _out()


def cmd_sub(nc: Client, args: argparse.Namespace) -> int:
    """``natsync sub SUBJECT``."""
    _interrupt.polling = True
    sub = nc.subscribe(args.subject, queue=args.queue)
    nc.flush(timeout=5.0)
    _status(f"Listening on {args.subject!r}" + (f" in queue group {args.queue!r}" if args.queue else ""))
    n = 0
    while not _interrupt.event.is_set():
        _problems.check()
        try:
            msg = sub.next_msg(timeout=0.25)
        except NatsTimeoutError:
            continue
        n += 1
        _print_msg(n, msg, args, args.headers)
        if args.count is not None and n >= args.count:
            break
    return 0


def cmd_req(nc: Client, args: argparse.Namespace) -> int:
    """``natsync req SUBJECT [DATA]``."""
    t0 = time.perf_counter()
    try:
        msg = nc.request(args.subject, args.data, timeout=args.timeout, headers=_hdrs(args.header))
    except NoRespondersError:
        raise CommandError(f"no responders on {args.subject!r}") from None
    except NatsTimeoutError:
        raise CommandError(f"no reply on {args.subject!r} within {args.timeout:g} s") from None
    rtt = time.perf_counter() - t0
    err = micro.ServiceError.from_msg(msg)
    if err is not None:  # an error reply (ADR-32 headers): exit 1, nothing on stdout
        raise CommandError(f"service error {err.code}: {err.description}")
    if args.json:
        doc = _msg_doc(msg, True)
        doc["rtt_ms"] = round(rtt * 1e3, 3)
        _out(_dumps(doc))
        return 0
    if args.headers and msg.headers is not None:
        for k in msg.headers:
            for v in msg.headers.get_all(k):
                _out(f"{k}: {v}")
    _write_data(msg.data)
    return 0


def cmd_reply(nc: Client, args: argparse.Namespace) -> int:
    """``natsync reply SUBJECT RESPONSE``."""
    _interrupt.polling = True
    done = threading.Event()
    count = 0
    lock = threading.Lock()

    def serve(msg: Msg) -> None:
        nonlocal count
        with lock:
            if args.count is not None and count >= args.count:
                return
            count += 1
            n = count
        if msg.reply:
            msg.respond(args.response)
        if args.json:
            _out(_dumps(_msg_doc(msg)))
        else:
            text = msg.data.decode("utf-8", "replace")
            _out(f"[#{n}] Request on {msg.subject!r}: {text}")
        if args.count is not None and n >= args.count:
            done.set()

    nc.subscribe(args.subject, queue=args.queue, cb=serve)
    nc.flush(timeout=5.0)
    _status(f"Replying on {args.subject!r}" + (f" in queue group {args.queue!r}" if args.queue else ""))
    while not done.is_set() and not _interrupt.event.is_set():
        _problems.check()
        done.wait(0.25)
    return 0


def cmd_rtt(nc: Client, args: argparse.Namespace) -> int:
    """``natsync rtt``."""
    rtts = [nc.rtt(timeout=5.0) for _ in range(args.count)]
    avg = sum(rtts) / len(rtts)
    if args.json:
        _out(_dumps({"server": nc.connected_url, "rtts_us": [round(r * 1e6, 1) for r in rtts],
                     "avg_us": round(avg * 1e6, 1)}))
    else:
        _out(f"{nc.connected_url}: average rtt {avg * 1e6:,.1f} µs over {len(rtts)} round trip(s)")
    return 0


def cmd_server_info(nc: Client, args: argparse.Namespace) -> int:
    """``natsync server info``."""
    info = dict(nc.server_info)
    if args.json:
        _out(_dumps(info))
        return 0
    _out(f"Server: {nc.connected_url}")
    for k in sorted(info):
        v = info[k]
        _out(f"  {k}: {v if isinstance(v, (str, int, float, bool)) else _dumps(v)}")
    return 0


# --- bench ---------------------------------------------------------------------------


def _percentile(sorted_values: list[float], p: float) -> float:
    k = max(0, min(len(sorted_values) - 1, math.ceil(p / 100.0 * len(sorted_values)) - 1))
    return sorted_values[k]


class _Progress:
    """Shows progress on standard error every *interval* s while a run lasts (a thread)."""

    def __init__(self, label: str, total: int, counter: Callable[[], int], enabled: bool, interval: float):
        self.label, self.total, self.counter = label, total, counter
        self.enabled, self.interval = enabled, interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.shown = False

    def __enter__(self) -> _Progress:
        if self.enabled:
            self._thread = threading.Thread(target=self._run, name="natsync-cli-progress", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            n = self.counter()
            pct = 100.0 * n / self.total if self.total else 100.0
            sys.stderr.write(f"\r{self.label}: {n:,}/{self.total:,} ({pct:.0f}%)")
            sys.stderr.flush()
            self.shown = True

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.shown:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _bench_subject(args: argparse.Namespace, nc: Client, default: str | None = None) -> str:
    if args.subject:
        return str(args.subject)
    return default or "natsync.bench." + nc.new_inbox().rsplit(".", 1)[-1]


def cmd_bench(nc: Client, args: argparse.Namespace) -> int:
    """``natsync bench pub|sub|pubsub|req``."""
    _interrupt.polling = True
    mode = args.mode
    count = args.msgs or (5000 if mode == "req" else 100_000)
    size = args.size
    progress = not args.no_progress
    result: dict[str, Any] = {"mode": mode, "msgs": count, "size": size}
    if mode == "pub":
        result.update(_bench_pub(nc, args, count, size, progress))
    elif mode == "sub":
        result.update(_bench_sub(nc, args, count, progress))
    elif mode == "pubsub":
        result.update(_bench_pubsub(args, count, size, progress))
    else:
        result.update(_bench_req(args, count, size, progress))
    interrupted = _interrupt.event.is_set()
    if interrupted:
        result["interrupted"] = True
    failed = not result.get("complete", True) and not interrupted
    if args.json:
        _out(_dumps(result))
        return 1 if failed else 0
    note = " (interrupted: partial figures)" if interrupted else ""
    _out(f"natsync bench {mode}: {result['msgs']:,} msgs of {size} B{note}")
    if "rate" in result:
        mb = result["rate"] * size / 1e6
        _out(f"  {_fmt_rate(result['rate'])} msgs/s, {mb:,.2f} MB/s, {result['seconds']:.3f} s")
    if "latency_us" in result:
        lat = result["latency_us"]
        _out("  latency (µs): " + ", ".join(f"{k} {v:,.1f}" for k, v in lat.items()))
    if failed:
        raise CommandError(f"bench {mode}: only {result.get('received', 0):,} of {count:,} messages arrived")
    return 0


_CHUNK = 65536  # messages published between two looks at Ctrl-C


def _publish_n(publish: Callable[[str, bytes], None], subject: str, payload: bytes, count: int) -> int:
    # The inner loop is bench/bench.py's; Ctrl-C is looked at between chunks only.
    sent = 0
    while sent < count and not _interrupt.event.is_set():
        n = min(_CHUNK, count - sent)
        for _ in range(n):
            publish(subject, payload)
        sent += n
    return sent


def _bench_pub(nc: Client, args: argparse.Namespace, count: int, size: int, progress: bool) -> dict[str, Any]:
    payload = b"x" * size
    subject = _bench_subject(args, nc)
    out = nc.stats.out_msgs
    nc.flush()
    with _Progress("published", count, lambda: nc.stats.out_msgs - out, progress, args.progress_interval):
        t0 = time.perf_counter()
        sent = _publish_n(nc.publish, subject, payload, count)
        nc.flush(timeout=120)
        dt = time.perf_counter() - t0
    return {"msgs": sent, "rate": sent / dt, "seconds": dt}


def _bench_sub(nc: Client, args: argparse.Namespace, count: int, progress: bool) -> dict[str, Any]:
    subject = _bench_subject(args, nc, "natsync.bench")
    received = 0
    first = last = 0.0
    done = threading.Event()

    def cb(msg: Msg) -> None:
        nonlocal received, first, last
        received += 1
        last = time.perf_counter()
        if received == 1:
            first = last
        if received == count:
            done.set()

    nc.subscribe(subject, cb=cb, pending_msgs_limit=None, pending_bytes_limit=None)
    nc.flush()
    _status(f"Waiting for {count:,} messages on {subject!r}")
    with _Progress("received", count, lambda: received, progress, args.progress_interval):
        _wait_for(done, lambda: received, args.timeout)
    n, dt = received, last - first
    return {"received": n, "complete": n == count, "rate": (n - 1) / dt if n > 1 and dt > 0 else 0.0,
            "seconds": dt}


def _wait_for(done: threading.Event, counter: Callable[[], int], stall: float) -> None:
    # Gives up when nothing arrived for *stall* seconds (or on Ctrl-C).
    seen = -1
    deadline = time.monotonic() + stall
    while not done.wait(0.1):
        if _interrupt.event.is_set():
            return
        n = counter()
        if n != seen:
            seen = n
            deadline = time.monotonic() + stall
        elif time.monotonic() >= deadline:
            return


def _bench_pubsub(args: argparse.Namespace, count: int, size: int, progress: bool) -> dict[str, Any]:
    # The method of bench/bench.py's pub+sub scenario: two connections, a callback
    # subscription counting, msgs/s from the first publish until the last arrival.
    payload = b"x" * size
    received = 0
    last = 0.0
    done = threading.Event()

    def cb(msg: Msg) -> None:
        nonlocal received, last
        received += 1
        if received == count:
            last = time.perf_counter()
            done.set()

    sub_nc = connect(args)
    try:
        pub_nc = connect(args)
    except BaseException:
        sub_nc.close()
        raise
    try:
        subject = _bench_subject(args, pub_nc)
        sub_nc.subscribe(subject, cb=cb, pending_msgs_limit=None, pending_bytes_limit=None)
        sub_nc.flush()
        pub_nc.flush()
        with _Progress("received", count, lambda: received, progress, args.progress_interval):
            t0 = time.perf_counter()
            _publish_n(pub_nc.publish, subject, payload, count)
            pub_nc.flush(timeout=120)
            _wait_for(done, lambda: received, args.timeout)
            stopped = time.perf_counter()
    finally:
        pub_nc.close()
        sub_nc.close()
    ok = received == count
    if not ok:  # interrupted or stalled: what arrived until now
        last = stopped
    dt = last - t0
    return {"received": received, "complete": ok, "rate": received / dt if dt > 0 else 0.0, "seconds": dt}


def _bench_req(args: argparse.Namespace, count: int, size: int, progress: bool) -> dict[str, Any]:
    payload = b"x" * size
    rsp_nc = connect(args)
    try:
        req_nc = connect(args)
    except BaseException:
        rsp_nc.close()
        raise
    done = 0
    lat: list[float] = []
    try:
        subject = _bench_subject(args, req_nc)
        rsp_nc.subscribe(subject, cb=lambda m: m.respond(m.data))
        rsp_nc.flush()
        clock = time.perf_counter
        for _ in range(min(200, count)):  # warm-up, as bench/bench.py
            req_nc.request(subject, payload, timeout=args.timeout)
        with _Progress("requests", count, lambda: done, progress, args.progress_interval):
            t_all = clock()
            for done in range(1, count + 1):  # noqa: B007 - read by the progress thread
                t = clock()
                req_nc.request(subject, payload, timeout=args.timeout)
                lat.append(clock() - t)
                if _interrupt.event.is_set():
                    break
            total = clock() - t_all
    finally:
        req_nc.close()
        rsp_nc.close()
    lat.sort()
    us = {p: round(_percentile(lat, q) * 1e6, 1) for p, q in (("p50", 50), ("p90", 90), ("p99", 99),
                                                               ("p99.9", 99.9))}
    us["max"] = round(lat[-1] * 1e6, 1)
    return {"msgs": len(lat), "rate": len(lat) / total, "seconds": total, "latency_us": us}


# --- micro ---------------------------------------------------------------------------


def cmd_micro(nc: Client, args: argparse.Namespace) -> int:
    """``natsync micro ls|info|stats [NAME [ID]]``."""
    verb = args.micro_command
    try:
        fn = {"ls": micro.info, "info": micro.info, "stats": micro.stats}[verb]
        docs = fn(nc, args.name, args.id, timeout=args.timeout)
    except ValueError as e:
        raise CommandError(str(e)) from None
    docs.sort(key=lambda d: (str(d.get("name")), str(d.get("id"))))
    if args.json:
        _out(_dumps(docs))
        return 0
    if not docs:
        what = f" named {args.name!r}" if args.name else ""
        raise CommandError(f"no services{what} answered within {args.timeout:g} s")
    if verb == "ls":
        _table(
            [(d.get("name"), d.get("version"), d.get("id"), d.get("description") or "",
              len(d.get("endpoints") or [])) for d in docs],
            ("NAME", "VERSION", "ID", "DESCRIPTION", "ENDPOINTS"),
        )
        return 0
    for i, d in enumerate(docs):
        if i:
            _out()
        _out(f"Service {d.get('name')} {d.get('version')} (id {d.get('id')})")
        if verb == "info":
            if d.get("description"):
                _out(f"  description: {d['description']}")
            for k, v in sorted((d.get("metadata") or {}).items()):
                _out(f"  metadata {k}: {v}")
            _table([("  " + str(e.get("name")), e.get("subject"), e.get("queue_group") or "-")
                    for e in d.get("endpoints") or []], ("  ENDPOINT", "SUBJECT", "QUEUE GROUP"))
        else:
            _out(f"  started: {d.get('started')}")
            rows = []
            for ep in d.get("endpoints") or []:
                avg = (ep.get("average_processing_time") or 0) / 1e3
                rows.append(("  " + str(ep.get("name")), ep.get("subject"), ep.get("num_requests"),
                             ep.get("num_errors"), f"{avg:,.1f}", ep.get("last_error") or ""))
            _table(rows, ("  ENDPOINT", "SUBJECT", "REQUESTS", "ERRORS", "AVG µs", "LAST ERROR"))
    return 0


# --- JetStream -----------------------------------------------------------------------


def _js(nc: Client) -> Any:
    try:
        importlib.import_module("natsync.js")  # is JetStream part of this installation?
    except ImportError:
        raise CommandError("JetStream is not available in this natsync installation") from None
    return nc.jetstream()  # type: ignore[attr-defined,unused-ignore]


def _get(obj: Any, *names: str, default: Any = None) -> Any:
    for name in names:
        if obj is None:
            return default
        obj = obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)
    return default if obj is None else obj


def cmd_stream_ls(nc: Client, args: argparse.Namespace) -> int:
    """``natsync stream ls``."""
    infos = _js(nc).streams_info()
    if args.json:
        _out(_dumps(infos))
        return 0
    if not infos:
        _out("No streams")
        return 0
    _table([(_get(i, "config", "name"), ",".join(_get(i, "config", "subjects", default=[])),
             _get(i, "state", "messages", default=0), _get(i, "state", "bytes", default=0)) for i in infos],
           ("NAME", "SUBJECTS", "MESSAGES", "BYTES"))
    return 0


def cmd_stream_info(nc: Client, args: argparse.Namespace) -> int:
    """``natsync stream info NAME``."""
    info = _js(nc).stream_info(args.name)
    if args.json:
        _out(_dumps(info))
        return 0
    cfg, state = _get(info, "config"), _get(info, "state")
    _out(f"Stream {_get(cfg, 'name')}")
    _out(f"  subjects: {', '.join(_get(cfg, 'subjects', default=[]))}")
    for label, field in (("storage", "storage"), ("retention", "retention"), ("replicas", "num_replicas"),
                         ("max msgs", "max_msgs"), ("max bytes", "max_bytes"), ("max age", "max_age")):
        v = _get(cfg, field)
        if v is not None:
            _out(f"  {label}: {_jsonable(v) if isinstance(v, enum.Enum) else v}")
    _out(f"  messages: {_get(state, 'messages', default=0)}")
    _out(f"  bytes: {_get(state, 'bytes', default=0)}")
    _out(f"  first seq: {_get(state, 'first_seq', default=0)}")
    _out(f"  last seq: {_get(state, 'last_seq', default=0)}")
    return 0


def cmd_stream_add(nc: Client, args: argparse.Namespace) -> int:
    """``natsync stream add NAME --subjects ...``."""
    js = _js(nc)
    api = importlib.import_module("natsync.js.api")

    subjects = [s for group in args.subjects for s in group.split(",") if s] or [args.name]
    fields: dict[str, Any] = {
        "name": args.name,
        "subjects": subjects,
        "storage": api.StorageType(args.storage),
        "retention": api.RetentionPolicy(args.retention),
        "num_replicas": args.replicas,
    }
    for k in ("max_msgs", "max_bytes", "max_age"):
        if getattr(args, k) is not None:
            fields[k] = getattr(args, k)
    info = js.add_stream(**fields)
    if args.json:
        _out(_dumps(info))
    else:
        _out(f"Created stream {args.name!r} on {', '.join(subjects)}")
    return 0


def cmd_stream_rm(nc: Client, args: argparse.Namespace) -> int:
    """``natsync stream rm NAME``."""
    _js(nc).delete_stream(args.name)
    if args.json:
        _out(_dumps({"deleted": args.name}))
    else:
        _out(f"Deleted stream {args.name!r}")
    return 0


def cmd_kv_add(nc: Client, args: argparse.Namespace) -> int:
    """``natsync kv add BUCKET``."""
    kv = _js(nc).create_key_value(bucket=args.bucket, history=args.history, ttl=args.ttl)
    st = kv.status()
    if args.json:
        _out(_dumps({"bucket": args.bucket, "history": _get(st, "history"), "ttl": _get(st, "ttl")}))
    else:
        _out(f"Created bucket {args.bucket!r}")
    return 0


def _entry_doc(e: Any) -> dict[str, Any]:
    value = _get(e, "value", default=b"")
    text, b64 = _text_or_b64(bytes(value))
    return {
        "bucket": _get(e, "bucket"),
        "key": _get(e, "key"),
        "value_b64" if b64 else "value": text,
        "revision": _get(e, "revision"),
        "created": _get(e, "created"),
        "operation": _get(e, "operation"),
    }


def cmd_kv_get(nc: Client, args: argparse.Namespace) -> int:
    """``natsync kv get BUCKET KEY``."""
    e = _js(nc).key_value(args.bucket).get(args.key)
    if args.json:
        _out(_dumps(_entry_doc(e)))
    else:
        _write_data(bytes(_get(e, "value", default=b"")))
    return 0


def cmd_kv_put(nc: Client, args: argparse.Namespace) -> int:
    """``natsync kv put BUCKET KEY VALUE``."""
    value = sys.stdin.buffer.read() if args.value == "-" else args.value.encode()
    rev = _js(nc).key_value(args.bucket).put(args.key, value)
    if args.json:
        _out(_dumps({"bucket": args.bucket, "key": args.key, "revision": rev}))
    else:
        _out(f"{args.key} = revision {rev}")
    return 0


def cmd_kv_del(nc: Client, args: argparse.Namespace) -> int:
    """``natsync kv del BUCKET KEY``."""
    _js(nc).key_value(args.bucket).delete(args.key)
    if args.json:
        _out(_dumps({"bucket": args.bucket, "key": args.key, "deleted": True}))
    else:
        _out(f"Deleted {args.key!r} from {args.bucket!r}")
    return 0


def cmd_kv_ls(nc: Client, args: argparse.Namespace) -> int:
    """``natsync kv ls [BUCKET]``."""
    js = _js(nc)
    if args.bucket is None:
        names = sorted(str(_get(i, "config", "name"))[3:] for i in js.streams_info()
                       if str(_get(i, "config", "name", default="")).startswith("KV_"))
        if args.json:
            _out(_dumps(names))
        else:
            for n in names:
                _out(n)
        return 0
    kv = js.key_value(args.bucket)
    no_keys = importlib.import_module("natsync.js").NoKeysError
    try:
        keys = sorted(kv.keys())
    except no_keys:
        keys = []
    if args.json:
        _out(_dumps(keys))
    else:
        for k in keys:
            _out(k)
    return 0


def cmd_kv_watch(nc: Client, args: argparse.Namespace) -> int:
    """``natsync kv watch BUCKET [KEYS]``."""
    _interrupt.polling = True
    watcher = _js(nc).key_value(args.bucket).watch(args.keys)
    _status(f"Watching {args.bucket!r} keys {args.keys!r}")
    n = 0
    try:
        while not _interrupt.event.is_set():
            _problems.check()
            try:
                entry = watcher.updates(timeout=0.25)
            except NatsTimeoutError:
                continue
            except StopIteration:  # the watcher ended
                break
            if entry is None:
                if not args.json:
                    _status("(current values delivered; now watching for changes)")
                continue
            n += 1
            if args.json:
                _out(_dumps(_entry_doc(entry)))
            else:
                op = _get(entry, "operation") or "PUT"
                value = bytes(_get(entry, "value", default=b"")).decode("utf-8", "replace")
                _out(f"[{op}] {_get(entry, 'key')} revision {_get(entry, 'revision')}: {value}")
            if args.count is not None and n >= args.count:
                break
    finally:
        watcher.stop()
    return 0


def cmd_obj_add(nc: Client, args: argparse.Namespace) -> int:
    """``natsync obj add BUCKET``."""
    _js(nc).create_object_store(bucket=args.bucket)
    if args.json:
        _out(_dumps({"bucket": args.bucket, "created": True}))
    else:
        _out(f"Created object store {args.bucket!r}")
    return 0


def _obj_doc(info: Any) -> dict[str, Any]:
    return {k: _get(info, k) for k in ("bucket", "name", "size", "chunks", "digest", "mtime", "nuid")}


def cmd_obj_put(nc: Client, args: argparse.Namespace) -> int:
    """``natsync obj put BUCKET FILE``."""
    obs = _js(nc).object_store(args.bucket)
    if args.file == "-":
        if not args.name:
            raise CommandError("obj put -: give the object's name with --name")
        info = obs.put(args.name, sys.stdin.buffer)
    else:
        name = args.name or os.path.basename(args.file)
        try:
            f = open(args.file, "rb")  # noqa: SIM115
        except OSError as e:
            raise CommandError(f"cannot read {args.file!r}: {e.strerror}") from None
        with f:
            info = obs.put(name, f)
    if args.json:
        _out(_dumps(_obj_doc(info)))
    else:
        _out(f"Stored {_get(info, 'name')!r} in {args.bucket!r}: {_get(info, 'size', default=0):,} bytes")
    return 0


def cmd_obj_get(nc: Client, args: argparse.Namespace) -> int:
    """``natsync obj get BUCKET NAME``."""
    obs = _js(nc).object_store(args.bucket)
    if args.output is None:
        result = obs.get(args.name)
        if args.json:
            doc = _obj_doc(_get(result, "info"))
            text, b64 = _text_or_b64(bytes(_get(result, "data", default=b"")))
            doc["data_b64" if b64 else "data"] = text
            _out(_dumps(doc))
        else:
            sys.stdout.flush()
            sys.stdout.buffer.write(bytes(_get(result, "data", default=b"")))
            sys.stdout.buffer.flush()
        return 0
    try:
        f = open(args.output, "wb")  # noqa: SIM115
    except OSError as e:
        raise CommandError(f"cannot write {args.output!r}: {e.strerror}") from None
    with f:
        result = obs.get(args.name, writeinto=f)
    info = _get(result, "info")
    if args.json:
        _out(_dumps(_obj_doc(info)))
    else:
        _out(f"Wrote {_get(info, 'size', default=0):,} bytes to {args.output}")
    return 0


def cmd_obj_ls(nc: Client, args: argparse.Namespace) -> int:
    """``natsync obj ls BUCKET``."""
    infos = _js(nc).object_store(args.bucket).list()
    if args.json:
        _out(_dumps([_obj_doc(i) for i in infos]))
        return 0
    if not infos:
        _out("No objects")
        return 0
    _table([(_get(i, "name"), _get(i, "size", default=0), _get(i, "mtime", default="")) for i in infos],
           ("NAME", "SIZE", "MODIFIED"))
    return 0


def cmd_obj_rm(nc: Client, args: argparse.Namespace) -> int:
    """``natsync obj rm BUCKET NAME``."""
    _js(nc).object_store(args.bucket).delete(args.name)
    if args.json:
        _out(_dumps({"bucket": args.bucket, "name": args.name, "deleted": True}))
    else:
        _out(f"Deleted {args.name!r} from {args.bucket!r}")
    return 0


# --- main ----------------------------------------------------------------------------


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    if isinstance(e, NatsError) and not isinstance(e, (CommandError,)):
        return f"{type(e).__name__}: {text}"
    return text


def _fail(message: str) -> int:
    sys.stderr.write(f"{PROG}: error: {message}\n")
    sys.stderr.flush()
    return 1


@dataclasses.dataclass
class _Run:
    nc: Client | None = None


def _close(run: _Run, drain: bool) -> None:
    nc, run.nc = run.nc, None
    if nc is None:
        return
    try:
        if drain and not nc.is_closed:
            nc.drain(timeout=5.0)
        else:
            nc.close()
    except (NatsError, OSError):
        nc.close()


class _Problems:
    """Errors the server reports asynchronously (``error_cb``) that make a command fail."""

    def __init__(self) -> None:
        self.errors: list[NatsError] = []

    def error_cb(self, err: NatsError) -> None:
        if isinstance(err, PermissionsError):
            self.errors.append(err)

    def check(self) -> None:
        if self.errors:
            raise CommandError(_one_line(self.errors[0]))


_problems = _Problems()


def _streaming(fn: Callable[..., int]) -> bool:
    return fn in (cmd_sub, cmd_reply, cmd_kv_watch, cmd_bench, cmd_obj_get)


def _emit(real: Any, buf: io.TextIOWrapper) -> None:
    buf.flush()
    data = buf.buffer.getvalue()  # type: ignore[attr-defined]
    if not data:
        return
    raw = getattr(real, "buffer", None)
    if raw is not None:
        real.flush()
        raw.write(data)
        raw.flush()
    else:
        real.write(data.decode("utf-8", "replace"))
        real.flush()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``natsync`` command with *argv* (default ``sys.argv[1:]``); return the
    exit status (0 ok, 1 error, 2 usage; argparse exits with 2 itself).

    Commands that do not stream keep their output until the connection is closed, so
    that an error the server reports late (a permissions violation of a publish) still
    leaves standard output empty.
    """
    logging.getLogger("natsync").addHandler(logging.NullHandler())
    parser = build_parser()
    args = parser.parse_args(argv)
    args.json = bool(getattr(args, "json", False))
    fn: Callable[[Client, argparse.Namespace], int] = args.func
    previous = None
    in_main = threading.current_thread() is threading.main_thread()
    if in_main:
        previous = signal.signal(signal.SIGINT, _interrupt.handler)
    _interrupt.event.clear()
    _interrupt.polling = False
    _problems.errors.clear()
    real_stdout = sys.stdout
    buf: io.TextIOWrapper | None = None
    if not _streaming(fn):
        buf = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", newline="\n", write_through=True)
        sys.stdout = buf
    run = _Run()
    try:
        try:
            run.nc = connect(args)
            status = fn(run.nc, args)
            _close(run, drain=True)
            _problems.check()
        except KeyboardInterrupt:
            _close(run, drain=True)
            status = 0
        finally:
            sys.stdout = real_stdout
        if buf is not None:
            _emit(real_stdout, buf)
        return status
    except BrokenPipeError:
        _close(run, drain=False)
        _quiet_stdout()
        return 0
    except Exception as e:  # noqa: BLE001 - one line on stderr, never a traceback
        _close(run, drain=False)
        return _fail(_one_line(e))
    finally:
        _close(run, drain=False)
        if in_main and previous is not None:
            signal.signal(signal.SIGINT, previous)


def _quiet_stdout() -> None:
    # After EPIPE (e.g. `natsync sub x | head -1`) Python would complain when it flushes
    # stdout at exit; point it at /dev/null instead.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass

