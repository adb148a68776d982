"""``pub``, ``sub``, ``req``, ``reply`` and ``rtt``."""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import threading
import time
from typing import Any

from .. import micro
from ..client import Client
from ..errors import NoRespondersError
from ..errors import TimeoutError as NatsTimeoutError
from ..headers import Headers
from ..msg import Msg
from . import _options
from ._template import TemplateError, expand
from ._util import (
    PROG,
    CommandError,
    dumps,
    duration,
    gather,
    header_arg,
    interrupt,
    msg_doc,
    out,
    plural,
    positive_int,
    print_headers,
    problems,
    read_stdin,
    status,
    stdin_is_tty,
    write_data,
)

REPLY_QUEUE = "NATS-RPLY-22"  # the Go CLI's default queue group for `reply`


# --- bodies and headers ------------------------------------------------------------------


def body_arg(args: argparse.Namespace) -> bytes:
    """The body: the argument, else standard input when it is not a terminal, else empty."""
    if args.data is not None:
        return os.fsencode(args.data)
    if getattr(args, "force_stdin", False) or not stdin_is_tty():
        return read_stdin()
    return b""


class Bodies:
    """Template expansion of a body (and subject) as natscli does it: a text that is not
    a valid template is sent as written, with one warning on standard error."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.warned: set[str] = set()

    def text(self, what: str, raw: str, count: int, request: str | None = None) -> str:
        if not self.enabled or "{{" not in raw:
            return raw
        try:
            return expand(raw, count, request)
        except TemplateError as e:
            if what not in self.warned:
                self.warned.add(what)
                status(
                    f"{PROG}: warning: the {what} is not a template natsync can expand ({e}); "
                    "sent as written"
                )
            return raw

    def data(self, raw: bytes, count: int, request: str | None = None) -> bytes:
        if not self.enabled or b"{{" not in raw:
            return raw
        text = raw.decode("utf-8", "surrogateescape")
        return self.text("body", text, count, request).encode("utf-8", "surrogateescape")


def make_headers(
    pairs: list[tuple[str, str]], count: int, templates: bool, request: str | None = None
) -> Headers | None:
    """The ``-H`` headers for message *count*, values expanded as templates (an invalid
    template is an error, as in natscli)."""
    if not pairs:
        return None
    h = Headers()
    for k, v in pairs:
        if templates and "{{" in v:
            try:
                v = expand(v, count, request)
            except TemplateError as e:
                raise CommandError(f"header {k}: {e}") from None
        h.add(k, v)
    return h


def add_templates_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--no-templates",
        dest="templates",
        action="store_false",
        help="send the body and headers as written (no {{ }} expansion)",
    )


# --- pub -------------------------------------------------------------------------------------


def cmd_pub(nc: Client, args: argparse.Namespace) -> int:
    """``natsync pub SUBJECT [BODY]``."""
    raw = body_arg(args)
    bodies = Bodies(args.templates)
    make_headers(args.header, 1, args.templates)  # a bad header template fails before anything is sent
    js = _options.jetstream(nc, args) if args.jetstream else None
    total = 0
    acks: list[dict[str, Any]] = []
    for i in range(1, args.count + 1):
        if i > 1 and args.sleep:
            time.sleep(args.sleep)
        subject = bodies.text("subject", args.subject, i)
        data = bodies.data(raw, i)
        hdrs = make_headers(args.header, i, args.templates)
        if js is not None:
            ack = js.publish(subject, data, headers=hdrs, timeout=_options.timeout(args))
            doc = {"stream": ack.stream, "seq": ack.seq, "duplicate": bool(ack.duplicate)}
            if ack.domain:
                doc["domain"] = ack.domain
            acks.append(doc)
            if not args.json:
                out(
                    f"Stored in stream {ack.stream!r} sequence {ack.seq}"
                    + (" (duplicate)" if ack.duplicate else "")
                )
        else:
            nc.publish(subject, data, reply=args.reply, headers=hdrs)
        total += len(data)
    if js is None:
        nc.flush(timeout=max(10.0, _options.timeout(args)))
    if args.json:
        doc = {"subject": args.subject, "count": args.count, "bytes": total}
        if js is not None:
            doc["acks"] = acks
        out(dumps(doc))
    elif js is None:
        out(f"Published {plural(args.count, 'message')} to {args.subject!r}")
    return 0


# --- sub -------------------------------------------------------------------------------------


def print_msg(n: int, msg: Msg, args: argparse.Namespace) -> None:
    if args.json:
        doc = msg_doc(msg, True)
        md = _js_meta(msg)
        if md is not None:
            doc["stream_seq"], doc["stream"] = md
        out(dumps(doc))
        return
    if getattr(args, "raw", False):
        write_data(msg.data)
        return
    head = f"[#{n}] Received on {msg.subject!r}"
    if msg.reply and not msg.reply.startswith("$JS.ACK."):
        head += f" with reply {msg.reply!r}"
    md = _js_meta(msg)
    if md is not None:
        head += f" (stream {md[1]!r} sequence {md[0]})"
    out(head)
    print_headers(msg.headers)
    write_data(msg.data)
    out()


def _js_meta(msg: Msg) -> tuple[int, str] | None:
    if not msg.reply or not msg.reply.startswith("$JS.ACK."):
        return None
    try:
        md = msg.metadata
        return int(md.sequence.stream), str(md.stream)
    except Exception:  # noqa: BLE001 - not a JetStream message after all
        return None


def cmd_sub(nc: Client, args: argparse.Namespace) -> int:
    """``natsync sub SUBJECT``."""
    interrupt.polling = True
    policy = "last" if args.last else "all" if args.all else "new" if args.new else None
    if policy is not None:
        if args.queue:
            raise CommandError(
                "--queue cannot be used with --all/--last/--new (an ordered JetStream consumer)"
            )
        api = __import__("natsync.js.api", fromlist=["DeliverPolicy"])
        js = _options.jetstream(nc, args)
        sub: Any = js.subscribe(args.subject, ordered_consumer=True, deliver_policy=api.DeliverPolicy(policy))
    else:
        sub = nc.subscribe(args.subject, queue=args.queue)
    nc.flush(timeout=_options.timeout(args))
    status(
        f"Listening on {args.subject!r}"
        + (f" in queue group {args.queue!r}" if args.queue else "")
        + (f" (JetStream, deliver {policy})" if policy else "")
    )
    n = 0
    while not interrupt.event.is_set():
        problems.check()
        try:
            msg = sub.next_msg(timeout=0.25)
        except NatsTimeoutError:
            continue
        n += 1
        print_msg(n, msg, args)
        if args.count is not None and n >= args.count:
            break
    if policy is not None:
        sub.unsubscribe()
    return 0


# --- req -------------------------------------------------------------------------------------


def cmd_req(nc: Client, args: argparse.Namespace) -> int:
    """``natsync req SUBJECT [BODY]``."""
    timeout = _options.timeout(args)
    bodies = Bodies(args.templates)
    data = bodies.data(body_arg(args), 1)
    subject = bodies.text("subject", args.subject, 1)
    hdrs = make_headers(args.header, 1, args.templates)
    if args.replies == 1:
        t0 = time.perf_counter()
        try:
            msg = nc.request(subject, data, timeout=timeout, headers=hdrs)
        except NoRespondersError:
            raise CommandError(f"no responders on {subject!r}") from None
        except NatsTimeoutError:
            raise CommandError(f"no reply on {subject!r} within {timeout:g} s") from None
        answers = [(msg, time.perf_counter() - t0)]
        err = micro.ServiceError.from_msg(msg)
        if err is not None:  # an error reply (ADR-32 headers): exit 1, nothing on stdout
            raise CommandError(f"service error {err.code}: {err.description}")
    else:
        answers = gather(
            nc,
            subject,
            data,
            timeout,
            headers=hdrs,
            max_answers=args.replies or None,
            stall=None if args.replies == 0 else 0.3,
        )
        if not answers:
            raise CommandError(f"no reply on {subject!r} within {timeout:g} s")
    for msg, rtt in answers:
        if args.json:
            doc = msg_doc(msg, True)
            doc["rtt_ms"] = round(rtt * 1e3, 3)
            out(dumps(doc))
            continue
        if args.headers:
            print_headers(msg.headers)
        elif not args.raw and msg.headers is not None:
            for k in msg.headers:
                for v in msg.headers.get_all(k):
                    status(f"{k}: {v}")
        write_data(msg.data)
    return 0


# --- reply -----------------------------------------------------------------------------------


def _run_command(template: str, msg: Msg, n: int, timeout: float) -> bytes:
    cmd = template
    for i, tok in enumerate(msg.subject.split(".")):
        cmd = cmd.replace(f"{{{{{i}}}}}", tok)
    request = msg.data.decode("utf-8", "surrogateescape")
    try:
        cmd = expand(cmd, n, request or None)
    except TemplateError as e:
        status(f"{PROG}: warning: --command is not a template natsync can expand ({e}); run as written")
    try:
        argv = shlex.split(cmd)
    except ValueError as e:
        return f"natsync reply: cannot parse --command: {e}".encode()
    if not argv:
        return b""
    env = dict(os.environ, NATS_REQUEST_SUBJECT=msg.subject, NATS_REQUEST_BODY=request)
    try:
        done = subprocess.run(
            argv,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        status(f"command {cmd!r} did not finish within {timeout:g} s")
        return bytes(e.output or b"")
    except OSError as e:
        status(f"command {cmd!r} failed to run: {e.strerror}")
        return b""
    if done.returncode != 0:
        status(f"command {cmd!r} exited with status {done.returncode}")
    return done.stdout


def cmd_reply(nc: Client, args: argparse.Namespace) -> int:
    """``natsync reply SUBJECT [BODY]``."""
    interrupt.polling = True
    echo = args.echo
    if args.body is None and args.command is None and not echo:
        status("No body or --command given: echo mode (requests are sent back)")
        echo = True
    make_headers(args.header, 1, args.templates, "x")  # a bad header template fails now
    bodies = Bodies(args.templates)
    done = threading.Event()
    lock = threading.Lock()  # guards count
    count = 0
    timeout = _options.timeout(args)

    def serve(msg: Msg) -> None:
        nonlocal count
        with lock:
            if args.count is not None and count >= args.count:
                return
            count += 1
            n = count
        request = msg.data.decode("utf-8", "surrogateescape")
        hdrs = make_headers(args.header, n, args.templates, request or None) or Headers()
        if echo:
            if msg.headers is not None:
                for k in msg.headers:
                    for v in msg.headers.get_all(k):
                        hdrs.add(k, v)
            hdrs.add("NATS-Reply-Counter", str(n))
            data = msg.data
        elif args.command is not None:
            data = _run_command(args.command, msg, n, timeout)
        else:
            data = bodies.data(os.fsencode(args.body), n, request or None)
        if msg.reply:
            msg.respond(data, headers=hdrs or None)
        if args.json:
            out(dumps(msg_doc(msg)))
        else:
            out(f"[#{n}] Request on {msg.subject!r}: {msg.data.decode('utf-8', 'replace')}")
            print_headers(msg.headers)
        if args.count is not None and n >= args.count:
            done.set()

    queue = args.queue if args.queue is not None else REPLY_QUEUE
    nc.subscribe(args.subject, queue=queue or None, cb=serve)
    nc.flush(timeout=timeout)
    status(f"Replying on {args.subject!r}" + (f" in queue group {queue!r}" if queue else ""))
    while not done.is_set() and not interrupt.event.is_set():
        problems.check()
        done.wait(0.25)
    return 0


# --- rtt -------------------------------------------------------------------------------------


def cmd_rtt(nc: Client, args: argparse.Namespace) -> int:
    """``natsync rtt``."""
    rtts = [nc.rtt(timeout=_options.timeout(args)) for _ in range(args.count)]
    avg = sum(rtts) / len(rtts)
    if args.json:
        out(
            dumps(
                {
                    "server": nc.connected_url,
                    "rtts_us": [round(r * 1e6, 1) for r in rtts],
                    "avg_us": round(avg * 1e6, 1),
                }
            )
        )
    else:
        out(f"{nc.connected_url}: average rtt {avg * 1e6:,.1f} µs over {len(rtts)} round trip(s)")
    return 0


def register(sub: Any, cmd: Any) -> None:
    """Add ``pub``, ``sub``, ``req``, ``reply`` and ``rtt``."""
    tmpl = "; Go templates such as {{Count}}, {{ID}}, {{TimeStamp}}, {{Random 5 10}} are expanded"
    p = cmd(sub, "pub", "publish a message", cmd_pub, streaming=False)
    p.add_argument("subject")
    p.add_argument(
        "data",
        nargs="?",
        default=None,
        metavar="BODY",
        help="the body (default: standard input when it is not a terminal)" + tmpl,
    )
    p.add_argument("--count", type=positive_int, default=1, help="publish this many messages (default 1)")
    p.add_argument(
        "--sleep", type=duration, default=None, metavar="DURATION", help="pause between messages (e.g. 100ms)"
    )
    p.add_argument(
        "--header",
        "-H",
        type=header_arg,
        action="append",
        default=[],
        metavar="K:V",
        help="add a header; the value may be a template (repeatable)",
    )
    p.add_argument("--reply", default=None, help="reply subject")
    p.add_argument(
        "--jetstream", "-J", action="store_true", help="publish to JetStream and wait for each PubAck"
    )
    p.add_argument(
        "--force-stdin", action="store_true", help="read the body from standard input even on a terminal"
    )
    add_templates_flag(p)

    p = cmd(sub, "sub", "print messages until Ctrl-C/SIGTERM (or --count)", cmd_sub, streaming=True)
    p.add_argument("subject")
    p.add_argument("--queue", default=None, help="join this queue group")
    p.add_argument("--count", type=positive_int, default=None, help="exit after this many messages")
    p.add_argument("--raw", "-r", action="store_true", help="print only the bodies")
    p.add_argument("--headers", action="store_true", help=argparse.SUPPRESS)  # shown by default now
    p.add_argument("--last", action="store_true", help="JetStream: the last stored message, then new ones")
    p.add_argument("--all", action="store_true", help="JetStream: every stored message, then new ones")
    p.add_argument("--new", action="store_true", help="JetStream: only messages stored from now on")

    p = cmd(sub, "req", "send a request and print the reply", cmd_req, streaming=False)
    p.add_argument("subject")
    p.add_argument(
        "data",
        nargs="?",
        default=None,
        metavar="BODY",
        help="the body (default: standard input when it is not a terminal)" + tmpl,
    )
    p.add_argument("--header", "-H", type=header_arg, action="append", default=[], metavar="K:V")
    p.add_argument(
        "--replies",
        type=int,
        default=1,
        metavar="N",
        help="wait for N replies (0: every reply until --timeout); default 1",
    )
    p.add_argument("--raw", "-r", action="store_true", help="print only the reply bodies")
    p.add_argument("--headers", action="store_true", help="print reply headers on standard output")
    p.add_argument("--force-stdin", action="store_true", help=argparse.SUPPRESS)
    add_templates_flag(p)

    p = cmd(
        sub,
        "reply",
        "answer requests on SUBJECT until Ctrl-C/SIGTERM (or --count)",
        cmd_reply,
        streaming=True,
    )
    p.add_argument("subject")
    p.add_argument(
        "body",
        nargs="?",
        default=None,
        metavar="BODY",
        help="the answer" + tmpl + ", and {{Request}} (the request's body)",
    )
    p.add_argument("--echo", action="store_true", help="send back each request's body and headers")
    p.add_argument(
        "--command",
        default=None,
        metavar="CMD",
        help="answer with the output of CMD ({{0}}, {{1}}... are the subject's tokens; "
        "NATS_REQUEST_SUBJECT and NATS_REQUEST_BODY are in its environment)",
    )
    p.add_argument("--queue", default=None, help=f"queue group (default {REPLY_QUEUE}; '' for none)")
    p.add_argument("--count", type=positive_int, default=None, help="exit after this many requests")
    p.add_argument("--header", "-H", type=header_arg, action="append", default=[], metavar="K:V")
    add_templates_flag(p)

    p = cmd(sub, "rtt", "measure the round trip time to the server", cmd_rtt, streaming=False)
    p.add_argument("--count", type=positive_int, default=5, help="round trips (default 5)")
