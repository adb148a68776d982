"""``kv add|put|get|del|rm|history|status|watch|ls``."""

from __future__ import annotations

import argparse
from typing import Any

from ..client import Client
from . import _options
from ._bucket import delete_bucket, follow, list_buckets, report
from ._util import (
    CommandError,
    add_force,
    confirm,
    dumps,
    duration,
    get,
    interrupt,
    jsonable,
    out,
    positive_int,
    read_stdin,
    status,
    stdin_is_tty,
    table,
    text_or_b64,
    write_data,
)


def entry_doc(e: Any) -> dict[str, Any]:
    value = get(e, "value", default=b"")
    text, b64 = text_or_b64(bytes(value))
    return {
        "bucket": get(e, "bucket"),
        "key": get(e, "key"),
        "value_b64" if b64 else "value": text,
        "revision": get(e, "revision"),
        "created": get(e, "created"),
        "operation": get(e, "operation"),
    }


def _status_doc(st: Any) -> dict[str, Any]:
    return {
        "bucket": get(st, "bucket"),
        "values": get(st, "values"),
        "history": get(st, "history"),
        "ttl": get(st, "ttl"),
        "bytes": get(st, "bytes"),
        "storage": jsonable(get(st, "storage")),
        "replicas": get(st, "replicas"),
    }


def cmd_kv_add(nc: Client, args: argparse.Namespace) -> int:
    """``natsync kv add BUCKET``."""
    kw: dict[str, Any] = {"bucket": args.bucket, "history": args.history, "ttl": args.ttl}
    if args.description:
        kw["description"] = args.description
    if args.max_bytes is not None:
        kw["max_bytes"] = args.max_bytes
    kv = _options.jetstream(nc, args).create_key_value(**kw)
    report(args, _status_doc(kv.status()), f"Created bucket {args.bucket!r}")
    return 0


def cmd_kv_get(nc: Client, args: argparse.Namespace) -> int:
    """``natsync kv get BUCKET KEY [--revision N]``."""
    e = _options.jetstream(nc, args).key_value(args.bucket).get(args.key, revision=args.revision)
    if args.json:
        out(dumps(entry_doc(e)))
    else:
        write_data(bytes(get(e, "value", default=b"")))
    return 0


def cmd_kv_put(nc: Client, args: argparse.Namespace) -> int:
    """``natsync kv put BUCKET KEY [VALUE]`` (VALUE absent or ``-``: standard input)."""
    if args.value == "-" or (args.value is None and not stdin_is_tty()):
        value = read_stdin()
    elif args.value is None:
        raise CommandError("kv put: give a VALUE, or pipe it on standard input")
    else:
        value = args.value.encode()
    rev = _options.jetstream(nc, args).key_value(args.bucket).put(args.key, value)
    report(args, {"bucket": args.bucket, "key": args.key, "revision": rev}, f"{args.key} = revision {rev}")
    return 0


def cmd_kv_del(nc: Client, args: argparse.Namespace) -> int:
    """``natsync kv del|rm BUCKET [KEY] [-f]``: a key, or without KEY the whole bucket."""
    js = _options.jetstream(nc, args)
    kv = js.key_value(args.bucket)  # a missing bucket is an error before asking
    if args.key is None:
        return delete_bucket(args, js.delete_key_value, "bucket", "keys")
    confirm(args, f"Delete key {args.key!r} from bucket {args.bucket!r}?")
    kv.delete(args.key)
    report(
        args,
        {"bucket": args.bucket, "key": args.key, "deleted": True},
        f"Deleted {args.key!r} from {args.bucket!r}",
    )
    return 0


def cmd_kv_history(nc: Client, args: argparse.Namespace) -> int:
    """``natsync kv history BUCKET KEY``."""
    entries = _options.jetstream(nc, args).key_value(args.bucket).history(args.key)
    if args.json:
        out(dumps([entry_doc(e) for e in entries]))
        return 0
    table(
        [
            (
                get(e, "revision"),
                get(e, "operation") or "PUT",
                jsonable(get(e, "created")) or "",
                text_or_b64(bytes(get(e, "value", default=b"")))[0],
            )
            for e in entries
        ],
        ("REVISION", "OPERATION", "CREATED", "VALUE"),
    )
    return 0


def cmd_kv_status(nc: Client, args: argparse.Namespace) -> int:
    """``natsync kv status BUCKET``."""
    doc = _status_doc(_options.jetstream(nc, args).key_value(args.bucket).status())
    if args.json:
        out(dumps(doc))
        return 0
    out(f"Bucket {args.bucket}")
    for k in ("values", "history", "ttl", "bytes", "storage", "replicas"):
        v = doc[k]
        out(f"  {k}: {'unlimited' if k == 'ttl' and not v else v}")
    return 0


def cmd_kv_ls(nc: Client, args: argparse.Namespace) -> int:
    """``natsync kv ls [BUCKET]``."""
    js = _options.jetstream(nc, args)
    if args.bucket is None:
        return list_buckets(js, args, "KV_", "No Key/Value buckets")
    kv = js.key_value(args.bucket)
    from natsync.js import NoKeysError

    try:
        keys = sorted(kv.keys())
    except NoKeysError:
        keys = []
    if args.json:
        out(dumps(keys))
    else:
        for k in keys:
            out(k)
    return 0


def cmd_kv_watch(nc: Client, args: argparse.Namespace) -> int:
    """``natsync kv watch BUCKET [KEYS]``."""
    interrupt.polling = True
    watcher = _options.jetstream(nc, args).key_value(args.bucket).watch(args.keys)
    status(f"Watching {args.bucket!r} keys {args.keys!r}")

    def show(entry: Any) -> None:
        if args.json:
            out(dumps(entry_doc(entry)))
        else:
            op = get(entry, "operation") or "PUT"
            value = bytes(get(entry, "value", default=b"")).decode("utf-8", "replace")
            out(f"[{op}] {get(entry, 'key')} revision {get(entry, 'revision')}: {value}")

    def on_current() -> None:
        if not args.json:
            status("(current values delivered; now watching for changes)")

    return follow(args, watcher, show, on_current)


def register(kvsub: Any, cmd: Any) -> None:
    """Add ``kv ...``."""
    p = cmd(kvsub, "add", "create a bucket", cmd_kv_add)
    p.add_argument("bucket")
    p.add_argument("--history", type=positive_int, default=1)
    p.add_argument("--ttl", type=duration, default=None, metavar="DURATION")
    p.add_argument("--description", default=None)
    p.add_argument("--max-bytes", type=int, default=None)
    p = cmd(kvsub, "get", "print a key's value", cmd_kv_get)
    p.add_argument("bucket")
    p.add_argument("key")
    p.add_argument("--revision", type=positive_int, default=None)
    p = cmd(kvsub, "put", "set a key", cmd_kv_put)
    p.add_argument("bucket")
    p.add_argument("key")
    p.add_argument("value", nargs="?", default=None, help="the value; absent or '-': standard input")
    for name in ("del", "rm"):
        p = cmd(kvsub, name, "delete a key, or without KEY the whole bucket", cmd_kv_del)
        p.add_argument("bucket")
        p.add_argument("key", nargs="?", default=None)
        add_force(p)
    p = cmd(kvsub, "history", "print every revision of a key", cmd_kv_history)
    p.add_argument("bucket")
    p.add_argument("key")
    p = cmd(kvsub, "status", "describe a bucket", cmd_kv_status)
    p.add_argument("bucket")
    p = cmd(kvsub, "ls", "list buckets, or the keys of BUCKET", cmd_kv_ls)
    p.add_argument("bucket", nargs="?", default=None)
    p = cmd(
        kvsub,
        "watch",
        "print changes of a bucket until Ctrl-C/SIGTERM (or --count)",
        cmd_kv_watch,
        streaming=True,
    )
    p.add_argument("bucket")
    p.add_argument("keys", nargs="?", default=">", help="key pattern (default '>')")
    p.add_argument("--count", type=positive_int, default=None, help="exit after this many updates")
