"""``stream ls|info|add|edit|rm|purge|view|get`` and
``consumer ls|info|add|edit|rm|next|sub``."""

from __future__ import annotations

import argparse
import enum
from typing import Any

from ..client import Client
from ..errors import TimeoutError as NatsTimeoutError
from ..msg import Msg
from . import _options
from ._core import print_msg
from ._util import (
    CommandError,
    add_force,
    confirm,
    dumps,
    duration,
    get,
    headers_dict,
    interrupt,
    jsonable,
    out,
    plural,
    positive_int,
    print_headers,
    problems,
    status,
    table,
    text_or_b64,
    write_data,
)


def _api() -> Any:
    import natsync.js.api as api

    return api


def _not_found() -> type[Exception]:
    from natsync.js import NotFoundError

    return NotFoundError


def _show(v: Any) -> Any:
    return jsonable(v) if isinstance(v, enum.Enum) else v


# --- streams ---------------------------------------------------------------------------------


def cmd_stream_ls(nc: Client, args: argparse.Namespace) -> int:
    """``natsync stream ls``."""
    infos = _options.jetstream(nc, args).streams_info()
    if args.json:
        out(dumps(infos))
        return 0
    if not infos:
        out("No streams")
        return 0
    table(
        [
            (
                get(i, "config", "name"),
                ",".join(get(i, "config", "subjects", default=[])),
                get(i, "state", "messages", default=0),
                get(i, "state", "bytes", default=0),
            )
            for i in infos
        ],
        ("NAME", "SUBJECTS", "MESSAGES", "BYTES"),
    )
    return 0


def _print_stream(info: Any) -> None:
    cfg, state = get(info, "config"), get(info, "state")
    out(f"Stream {get(cfg, 'name')}")
    if get(cfg, "description"):
        out(f"  description: {get(cfg, 'description')}")
    out(f"  subjects: {', '.join(get(cfg, 'subjects', default=[]))}")
    for label, field in (
        ("storage", "storage"),
        ("retention", "retention"),
        ("replicas", "num_replicas"),
        ("max msgs", "max_msgs"),
        ("max bytes", "max_bytes"),
        ("max age", "max_age"),
        ("max msgs per subject", "max_msgs_per_subject"),
    ):
        v = get(cfg, field)
        if v is not None:
            out(f"  {label}: {_show(v)}")
    out(f"  messages: {get(state, 'messages', default=0)}")
    out(f"  bytes: {get(state, 'bytes', default=0)}")
    out(f"  first seq: {get(state, 'first_seq', default=0)}")
    out(f"  last seq: {get(state, 'last_seq', default=0)}")
    out(f"  consumers: {get(state, 'consumer_count', default=0)}")


def cmd_stream_info(nc: Client, args: argparse.Namespace) -> int:
    """``natsync stream info NAME``."""
    info = _options.jetstream(nc, args).stream_info(args.name)
    if args.json:
        out(dumps(info))
    else:
        _print_stream(info)
    return 0


def _stream_fields(args: argparse.Namespace) -> dict[str, Any]:
    api = _api()
    fields: dict[str, Any] = {}
    subjects = [s for group in (args.subjects or []) for s in group.split(",") if s]
    if subjects:
        fields["subjects"] = subjects
    if getattr(args, "storage", None):
        fields["storage"] = api.StorageType(args.storage)
    if getattr(args, "retention", None):
        fields["retention"] = api.RetentionPolicy(args.retention)
    if getattr(args, "replicas", None) is not None:
        fields["num_replicas"] = args.replicas
    for k in ("max_msgs", "max_bytes", "max_age", "max_msgs_per_subject", "description"):
        if getattr(args, k, None) is not None:
            fields[k] = getattr(args, k)
    return fields


def cmd_stream_add(nc: Client, args: argparse.Namespace) -> int:
    """``natsync stream add NAME --subjects ...``."""
    js = _options.jetstream(nc, args)
    fields = _stream_fields(args)
    fields.setdefault("subjects", [args.name])
    fields.setdefault("storage", _api().StorageType.FILE)
    fields.setdefault("retention", _api().RetentionPolicy.LIMITS)
    fields.setdefault("num_replicas", 1)
    try:
        js.stream_info(args.name)
        existed = True
    except _not_found():
        existed = False
    # The server answers an identical create with success, and a different one with an error.
    info = js.add_stream(name=args.name, **fields)
    if args.json:
        out(dumps(info))
    elif existed:
        out(f"Stream {args.name!r} already exists with this configuration: nothing changed")
    else:
        out(f"Created stream {args.name!r} on {', '.join(fields['subjects'])}")
    return 0


def cmd_stream_edit(nc: Client, args: argparse.Namespace) -> int:
    """``natsync stream edit NAME [--subjects ...] [--max-msgs N] ...``."""
    js = _options.jetstream(nc, args)
    fields = _stream_fields(args)
    if not fields:
        raise CommandError("stream edit: nothing to change; give at least one option (see --help)")
    cfg = get(js.stream_info(args.name), "config")
    info = js.update_stream(cfg.evolve(**fields))
    if args.json:
        out(dumps(info))
    else:
        out(f"Updated stream {args.name!r}: {', '.join(sorted(fields))}")
        _print_stream(info)
    return 0


def cmd_stream_rm(nc: Client, args: argparse.Namespace) -> int:
    """``natsync stream rm NAME [-f]``."""
    js = _options.jetstream(nc, args)
    js.stream_info(args.name)  # a missing stream is an error before asking
    confirm(args, f"Delete stream {args.name!r} with all its messages and consumers?")
    js.delete_stream(args.name)
    if args.json:
        out(dumps({"deleted": args.name}))
    else:
        out(f"Deleted stream {args.name!r}")
    return 0


def cmd_stream_purge(nc: Client, args: argparse.Namespace) -> int:
    """``natsync stream purge NAME [-f] [--subject S] [--seq N | --keep N]``."""
    js = _options.jetstream(nc, args)
    if args.seq is not None and args.keep is not None:
        raise CommandError("stream purge: give --seq or --keep, not both")
    before = get(js.stream_info(args.name), "state", "messages", default=0)
    what = f" on {args.subject!r}" if args.subject else ""
    confirm(args, f"Purge messages{what} of stream {args.name!r} ({before} stored)?")
    js.purge_stream(args.name, subject=args.subject, seq=args.seq, keep=args.keep)
    after = get(js.stream_info(args.name), "state", "messages", default=0)
    if args.json:
        out(dumps({"stream": args.name, "purged": before - after, "messages": after}))
    else:
        out(f"Purged {plural(before - after, 'message')} from stream {args.name!r}; {after} left")
    return 0


def _raw_doc(m: Any) -> dict[str, Any]:
    text, b64 = text_or_b64(bytes(get(m, "data", default=b"")))
    doc: dict[str, Any] = {
        "stream": get(m, "stream"),
        "seq": get(m, "seq"),
        "subject": get(m, "subject"),
        "time": get(m, "time"),
    }
    h = get(m, "headers")
    if h is not None:
        doc["headers"] = headers_dict(h)
    doc["data_b64" if b64 else "data"] = text
    return doc


def _print_raw(m: Any, raw: bool = False) -> None:
    if raw:
        write_data(bytes(get(m, "data", default=b"")))
        return
    t = get(m, "time")
    out(f"[{get(m, 'seq')}] Subject: {get(m, 'subject')} Received: {jsonable(t) if t else ''}")
    print_headers(get(m, "headers"))
    write_data(bytes(get(m, "data", default=b"")))
    out()


def cmd_stream_view(nc: Client, args: argparse.Namespace) -> int:
    """``natsync stream view NAME [--subject S] [--id SEQ] [--count N]``."""
    js = _options.jetstream(nc, args)
    state = get(js.stream_info(args.name), "state")
    seq = max(args.id or 0, get(state, "first_seq", default=1) or 1)
    shown = 0
    limit = args.count
    while limit is None or shown < limit:
        try:
            m = js.get_msg(args.name, seq=seq, subject=args.subject or ">")
        except _not_found():
            break
        shown += 1
        out(dumps(_raw_doc(m))) if args.json else _print_raw(m, args.raw)
        seq = int(get(m, "seq", default=seq)) + 1
    if not shown and not args.json:
        status(f"No messages in stream {args.name!r}" + (f" on {args.subject!r}" if args.subject else ""))
    return 0


def cmd_stream_get(nc: Client, args: argparse.Namespace) -> int:
    """``natsync stream get NAME [SEQ] [--last-for SUBJECT]``."""
    js = _options.jetstream(nc, args)
    if (args.seq is None) == (args.last_for is None):
        raise CommandError("stream get: give a sequence number or --last-for SUBJECT (one of them)")
    try:
        m = (
            js.get_msg(args.name, seq=args.seq)
            if args.seq is not None
            else js.get_last_msg(args.name, args.last_for)
        )
    except _not_found():
        what = f"sequence {args.seq}" if args.seq is not None else f"message on {args.last_for!r}"
        raise CommandError(f"stream {args.name!r} has no {what}") from None
    if args.json:
        out(dumps(_raw_doc(m)))
    else:
        _print_raw(m, args.raw)
    return 0


# --- consumers -------------------------------------------------------------------------------


def cmd_consumer_ls(nc: Client, args: argparse.Namespace) -> int:
    """``natsync consumer ls STREAM``."""
    infos = _options.jetstream(nc, args).consumers_info(args.stream)
    if args.json:
        out(dumps(infos))
        return 0
    if not infos:
        out(f"No consumers on stream {args.stream!r}")
        return 0
    table(
        [
            (
                get(i, "name"),
                "push" if get(i, "config", "deliver_subject") else "pull",
                get(i, "config", "filter_subject", default=""),
                get(i, "num_pending", default=0),
                get(i, "num_ack_pending", default=0),
                get(i, "delivered", "stream_seq", default=0),
            )
            for i in infos
        ],
        ("NAME", "TYPE", "FILTER", "PENDING", "ACK PENDING", "LAST DELIVERED"),
    )
    return 0


def _print_consumer(info: Any) -> None:
    cfg = get(info, "config")
    out(f"Consumer {get(info, 'name')} on stream {get(info, 'stream_name')}")
    if get(cfg, "description"):
        out(f"  description: {get(cfg, 'description')}")
    target = get(cfg, "deliver_subject")
    out(f"  type: {f'push (deliver to {target})' if target else 'pull'}")
    for label, field in (
        ("filter subject", "filter_subject"),
        ("deliver policy", "deliver_policy"),
        ("ack policy", "ack_policy"),
        ("ack wait", "ack_wait"),
        ("max deliver", "max_deliver"),
        ("max ack pending", "max_ack_pending"),
        ("replay policy", "replay_policy"),
    ):
        v = get(cfg, field)
        if v is not None:
            out(f"  {label}: {_show(v)}")
    out(f"  pending: {get(info, 'num_pending', default=0)}")
    out(f"  ack pending: {get(info, 'num_ack_pending', default=0)}")
    out(f"  redelivered: {get(info, 'num_redelivered', default=0)}")
    out(
        f"  last delivered: stream seq {get(info, 'delivered', 'stream_seq', default=0)}, "
        f"consumer seq {get(info, 'delivered', 'consumer_seq', default=0)}"
    )


def cmd_consumer_info(nc: Client, args: argparse.Namespace) -> int:
    """``natsync consumer info STREAM NAME``."""
    info = _options.jetstream(nc, args).consumer_info(args.stream, args.name)
    if args.json:
        out(dumps(info))
    else:
        _print_consumer(info)
    return 0


def _consumer_fields(args: argparse.Namespace) -> dict[str, Any]:
    api = _api()
    f: dict[str, Any] = {}
    if args.filter:
        subjects = [s for g in args.filter for s in g.split(",") if s]
        if len(subjects) == 1:
            f["filter_subject"] = subjects[0]
        else:
            f["filter_subjects"] = subjects
    if getattr(args, "deliver", None):
        f["deliver_policy"] = api.DeliverPolicy(args.deliver.replace("-", "_"))
    if getattr(args, "ack", None):
        f["ack_policy"] = api.AckPolicy(args.ack)
    for k in ("ack_wait", "max_deliver", "max_ack_pending", "description", "inactive_threshold"):
        if getattr(args, k, None) is not None:
            f[k] = getattr(args, k)
    if getattr(args, "target", None):
        f["deliver_subject"] = args.target
    return f


def cmd_consumer_add(nc: Client, args: argparse.Namespace) -> int:
    """``natsync consumer add STREAM NAME [options]``: a durable pull consumer by default
    (deliver all, explicit acks)."""
    js = _options.jetstream(nc, args)
    fields = _consumer_fields(args)
    try:
        js.consumer_info(args.stream, args.name)
        raise CommandError(
            f"consumer {args.name!r} already exists on stream {args.stream!r}; "
            "change it with: natsync consumer edit"
        )
    except _not_found():
        pass
    info = js.add_consumer(args.stream, durable_name=args.name, **fields)
    if args.json:
        out(dumps(info))
    else:
        out(f"Created consumer {args.name!r} on stream {args.stream!r}")
        _print_consumer(info)
    return 0


def cmd_consumer_edit(nc: Client, args: argparse.Namespace) -> int:
    """``natsync consumer edit STREAM NAME [options]``."""
    js = _options.jetstream(nc, args)
    fields = _consumer_fields(args)
    if not fields:
        raise CommandError("consumer edit: nothing to change; give at least one option (see --help)")
    cfg = get(js.consumer_info(args.stream, args.name), "config")
    info = js.add_consumer(args.stream, cfg.evolve(**fields))
    if args.json:
        out(dumps(info))
    else:
        out(f"Updated consumer {args.name!r}: {', '.join(sorted(fields))}")
        _print_consumer(info)
    return 0


def cmd_consumer_rm(nc: Client, args: argparse.Namespace) -> int:
    """``natsync consumer rm STREAM NAME [-f]``."""
    js = _options.jetstream(nc, args)
    js.consumer_info(args.stream, args.name)  # a missing consumer is an error before asking
    confirm(args, f"Delete consumer {args.name!r} of stream {args.stream!r}?")
    js.delete_consumer(args.stream, args.name)
    if args.json:
        out(dumps({"stream": args.stream, "deleted": args.name}))
    else:
        out(f"Deleted consumer {args.name!r} of stream {args.stream!r}")
    return 0


def _ack(msg: Msg, args: argparse.Namespace) -> None:
    if not args.no_ack:
        msg.ack_sync(timeout=_options.timeout(args))


def cmd_consumer_next(nc: Client, args: argparse.Namespace) -> int:
    """``natsync consumer next STREAM NAME [--count N] [--no-ack]``: pull and ack."""
    js = _options.jetstream(nc, args)
    info = js.consumer_info(args.stream, args.name)
    if get(info, "config", "deliver_subject"):
        raise CommandError(f"consumer {args.name!r} is a push consumer; use: natsync consumer sub")
    psub = js.pull_subscribe_bind(args.name, args.stream)
    got = 0
    try:
        while got < args.count:
            try:
                msgs = psub.fetch(1, timeout=_options.timeout(args))
            except NatsTimeoutError:
                if got == 0:
                    raise CommandError(
                        f"no message from consumer {args.name!r} within {_options.timeout(args):g} s"
                    ) from None
                break
            for m in msgs:
                got += 1
                print_msg(got, m, args)
                _ack(m, args)
    finally:
        psub.unsubscribe()
    return 0


def cmd_consumer_sub(nc: Client, args: argparse.Namespace) -> int:
    """``natsync consumer sub STREAM NAME``: print (and ack) messages until Ctrl-C or --count."""
    interrupt.polling = True
    js = _options.jetstream(nc, args)
    info = js.consumer_info(args.stream, args.name)
    deliver = get(info, "config", "deliver_subject")
    n = 0
    if deliver:
        sub: Any = nc.subscribe(deliver, queue=get(info, "config", "deliver_group"))
        nc.flush(timeout=_options.timeout(args))

        def take() -> list[Msg]:
            m = sub.next_msg(timeout=0.25)
            if m.headers is not None and m.headers.status == 100:  # heartbeat / flow control
                if m.reply:
                    m.respond(b"")
                return []
            return [m]
    else:
        sub = js.pull_subscribe_bind(args.name, args.stream)

        def take() -> list[Msg]:
            return list(sub.fetch(10 if args.count is None else min(10, args.count - n), timeout=0.5))

    status(f"Consuming from {args.name!r} of stream {args.stream!r}")
    try:
        while not interrupt.event.is_set() and (args.count is None or n < args.count):
            problems.check()
            try:
                msgs = take()
            except NatsTimeoutError:
                continue
            for m in msgs:
                n += 1
                print_msg(n, m, args)
                _ack(m, args)
    finally:
        sub.unsubscribe()
    return 0


def register(stsub: Any, csub: Any, cmd: Any) -> None:
    """Add ``stream ...`` and ``consumer ...``."""
    cmd(stsub, "ls", "list streams", cmd_stream_ls)
    p = cmd(stsub, "info", "describe a stream", cmd_stream_info)
    p.add_argument("name")

    def stream_options(p: argparse.ArgumentParser, add: bool) -> None:
        p.add_argument(
            "--subjects",
            action="append",
            default=[],
            metavar="SUBJECT",
            help="subject(s), comma separated or repeated" + (" (default: the stream name)" if add else ""),
        )
        p.add_argument("--description", default=None)
        if add:
            p.add_argument("--storage", choices=("file", "memory"), default=None, help="default file")
            p.add_argument(
                "--retention",
                choices=("limits", "interest", "workqueue"),
                default=None,
                help="default limits",
            )
        p.add_argument("--max-msgs", type=int, default=None)
        p.add_argument("--max-bytes", type=int, default=None)
        p.add_argument("--max-age", type=duration, default=None, metavar="DURATION", help="e.g. 1h, 30s")
        p.add_argument("--max-msgs-per-subject", type=int, default=None)
        p.add_argument("--replicas", type=positive_int, default=None)

    p = cmd(stsub, "add", "create a stream", cmd_stream_add)
    p.add_argument("name")
    stream_options(p, True)
    p = cmd(stsub, "edit", "change a stream's configuration", cmd_stream_edit)
    p.add_argument("name")
    stream_options(p, False)
    add_force(p)
    p = cmd(stsub, "rm", "delete a stream", cmd_stream_rm)
    p.add_argument("name")
    add_force(p)
    p = cmd(stsub, "purge", "remove messages from a stream", cmd_stream_purge)
    p.add_argument("name")
    p.add_argument("--subject", default=None, help="only messages on this subject")
    p.add_argument("--seq", type=positive_int, default=None, help="only messages below this sequence")
    p.add_argument("--keep", type=int, default=None, help="keep the last N messages")
    add_force(p)
    p = cmd(stsub, "view", "print the messages stored in a stream", cmd_stream_view)
    p.add_argument("name")
    p.add_argument("--subject", default=None, help="only messages on this subject (wildcards allowed)")
    p.add_argument("--id", type=positive_int, default=None, metavar="SEQ", help="start at this sequence")
    p.add_argument("--count", type=positive_int, default=None, help="at most this many messages")
    p.add_argument("--raw", action="store_true", help="print only the bodies")
    p = cmd(stsub, "get", "print one message of a stream", cmd_stream_get)
    p.add_argument("name")
    p.add_argument("seq", nargs="?", type=positive_int, default=None)
    p.add_argument("--last-for", default=None, metavar="SUBJECT", help="the last message on SUBJECT")
    p.add_argument("--raw", action="store_true", help="print only the body")

    p = cmd(csub, "ls", "list the consumers of a stream", cmd_consumer_ls)
    p.add_argument("stream")
    p = cmd(csub, "info", "describe a consumer", cmd_consumer_info)
    p.add_argument("stream")
    p.add_argument("name")

    def consumer_options(p: argparse.ArgumentParser, add: bool) -> None:
        p.add_argument(
            "--filter",
            action="append",
            default=[],
            metavar="SUBJECT",
            help="only messages on these subjects (comma separated or repeated)",
        )
        p.add_argument("--description", default=None)
        if add:
            p.add_argument(
                "--deliver",
                default=None,
                choices=("all", "last", "new", "last-per-subject"),
                help="where to start (default all)",
            )
            p.add_argument(
                "--ack",
                default=None,
                choices=("explicit", "all", "none"),
                help="acknowledgement policy (default explicit)",
            )
            p.add_argument(
                "--target",
                default=None,
                metavar="SUBJECT",
                help="make a push consumer delivering to SUBJECT (default: pull)",
            )
        p.add_argument("--ack-wait", type=duration, default=None, metavar="DURATION")
        p.add_argument("--max-deliver", type=int, default=None)
        p.add_argument("--max-ack-pending", type=int, default=None)
        p.add_argument("--inactive-threshold", type=duration, default=None, metavar="DURATION")

    p = cmd(
        csub,
        "add",
        "create a durable consumer (no options: pull, deliver all, explicit ack)",
        cmd_consumer_add,
    )
    p.add_argument("stream")
    p.add_argument("name")
    consumer_options(p, True)
    p = cmd(csub, "edit", "change a consumer's configuration", cmd_consumer_edit)
    p.add_argument("stream")
    p.add_argument("name")
    consumer_options(p, False)
    add_force(p)
    p = cmd(csub, "rm", "delete a consumer", cmd_consumer_rm)
    p.add_argument("stream")
    p.add_argument("name")
    add_force(p)
    p = cmd(csub, "next", "pull the next message(s) from a pull consumer and ack them", cmd_consumer_next)
    p.add_argument("stream")
    p.add_argument("name")
    p.add_argument("--count", type=positive_int, default=1)
    p.add_argument("--no-ack", action="store_true", help="do not acknowledge")
    p.add_argument("--raw", action="store_true", help="print only the bodies")
    p = cmd(
        csub,
        "sub",
        "print (and ack) a consumer's messages until Ctrl-C/SIGTERM (or --count)",
        cmd_consumer_sub,
        streaming=True,
    )
    p.add_argument("stream")
    p.add_argument("name")
    p.add_argument("--count", type=positive_int, default=None)
    p.add_argument("--no-ack", action="store_true", help="do not acknowledge")
    p.add_argument("--raw", action="store_true", help="print only the bodies")
