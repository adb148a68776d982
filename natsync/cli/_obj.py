"""``obj add|put|get|info|ls|rm|seal|watch``."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from typing import Any

from ..client import Client
from . import _options
from ._bucket import delete_bucket, follow, list_buckets, report
from ._util import (
    CommandError,
    add_force,
    confirm,
    dumps,
    get,
    interrupt,
    jsonable,
    out,
    positive_int,
    status,
    table,
    text_or_b64,
)


def obj_doc(info: Any) -> dict[str, Any]:
    doc = {k: get(info, k) for k in ("bucket", "name", "size", "chunks", "digest", "mtime", "nuid")}
    if get(info, "deleted"):
        doc["deleted"] = True
    return doc


def cmd_obj_add(nc: Client, args: argparse.Namespace) -> int:
    """``natsync obj add BUCKET``."""
    kw: dict[str, Any] = {"bucket": args.bucket}
    if args.description:
        kw["description"] = args.description
    _options.jetstream(nc, args).create_object_store(**kw)
    report(args, {"bucket": args.bucket, "created": True}, f"Created object store {args.bucket!r}")
    return 0


def cmd_obj_put(nc: Client, args: argparse.Namespace) -> int:
    """``natsync obj put BUCKET [FILE]`` (FILE absent or ``-``: standard input, with --name)."""
    obs = _options.jetstream(nc, args).object_store(args.bucket)
    if args.file in (None, "-"):
        if not args.name:
            raise CommandError("obj put from standard input: give the object's name with --name")
        if args.file is None and sys.stdin is not None and sys.stdin.isatty():
            raise CommandError("obj put: give a FILE, or pipe the data on standard input with --name")
        info = obs.put(args.name, sys.stdin.buffer)
    else:
        name = args.name or os.path.basename(args.file)
        try:
            f = open(args.file, "rb")  # noqa: SIM115
        except OSError as e:
            raise CommandError(f"cannot read {args.file!r}: {e.strerror}") from None
        with f:
            info = obs.put(name, f)
    size = get(info, "size", default=0)
    report(args, obj_doc(info), f"Stored {get(info, 'name')!r} in {args.bucket!r}: {size:,} bytes")
    return 0


def cmd_obj_get(nc: Client, args: argparse.Namespace) -> int:
    """``natsync obj get BUCKET NAME [-o FILE]``: the file is written beside FILE under a
    temporary name and renamed over FILE only once the object arrived whole."""
    obs = _options.jetstream(nc, args).object_store(args.bucket)
    if args.output is None:
        result = obs.get(args.name)
        if args.json:
            doc = obj_doc(get(result, "info"))
            text, b64 = text_or_b64(bytes(get(result, "data", default=b"")))
            doc["data_b64" if b64 else "data"] = text
            out(dumps(doc))
        else:
            sys.stdout.flush()
            sys.stdout.buffer.write(bytes(get(result, "data", default=b"")))
            sys.stdout.buffer.flush()
        return 0
    target = os.path.abspath(args.output)
    folder = os.path.dirname(target)
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(target)}.", suffix=".part")
    except OSError as e:
        raise CommandError(f"cannot write {args.output!r}: {e.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            result = obs.get(args.name, writeinto=f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    info = get(result, "info")
    report(args, obj_doc(info), f"Wrote {get(info, 'size', default=0):,} bytes to {args.output}")
    return 0


def cmd_obj_info(nc: Client, args: argparse.Namespace) -> int:
    """``natsync obj info BUCKET [NAME]``: an object, or without NAME the bucket."""
    obs = _options.jetstream(nc, args).object_store(args.bucket)
    if args.name is None:
        st = obs.status()
        doc = {
            "bucket": args.bucket,
            "description": get(st, "description"),
            "ttl": get(st, "ttl"),
            "storage": jsonable(get(st, "storage")),
            "replicas": get(st, "replicas"),
            "sealed": get(st, "sealed"),
            "size": get(st, "size"),
        }
        if args.json:
            out(dumps(doc))
            return 0
        out(f"Object store {args.bucket}")
        for k, v in doc.items():
            if k != "bucket" and v not in (None, ""):
                out(f"  {k}: {v}")
        return 0
    doc = obj_doc(obs.get_info(args.name))
    if args.json:
        out(dumps(doc))
        return 0
    out(f"Object {args.name} in {args.bucket}")
    for k in ("size", "chunks", "digest", "mtime", "nuid"):
        out(f"  {k}: {doc[k]}")
    return 0


def cmd_obj_ls(nc: Client, args: argparse.Namespace) -> int:
    """``natsync obj ls [BUCKET]``: objects, or without BUCKET the buckets."""
    js = _options.jetstream(nc, args)
    if args.bucket is None:
        return list_buckets(js, args, "OBJ_", "No object stores")
    infos = js.object_store(args.bucket).list()
    if args.json:
        out(dumps([obj_doc(i) for i in infos]))
        return 0
    if not infos:
        out("No objects")
        return 0
    table(
        [(get(i, "name"), get(i, "size", default=0), get(i, "mtime", default="")) for i in infos],
        ("NAME", "SIZE", "MODIFIED"),
    )
    return 0


def cmd_obj_rm(nc: Client, args: argparse.Namespace) -> int:
    """``natsync obj rm BUCKET [NAME] [-f]``: an object, or without NAME the bucket."""
    js = _options.jetstream(nc, args)
    obs = js.object_store(args.bucket)  # a missing bucket is an error before asking
    if args.name is None:
        return delete_bucket(args, js.delete_object_store, "object store", "objects")
    obs.get_info(args.name)  # a missing object is an error before asking
    confirm(args, f"Delete object {args.name!r} from {args.bucket!r}?")
    obs.delete(args.name)
    report(
        args,
        {"bucket": args.bucket, "name": args.name, "deleted": True},
        f"Deleted {args.name!r} from {args.bucket!r}",
    )
    return 0


def cmd_obj_seal(nc: Client, args: argparse.Namespace) -> int:
    """``natsync obj seal BUCKET [-f]``: make the bucket read-only, for good."""
    obs = _options.jetstream(nc, args).object_store(args.bucket)
    confirm(args, f"Seal object store {args.bucket!r} (read-only, cannot be undone)?")
    obs.seal()
    report(args, {"bucket": args.bucket, "sealed": True}, f"Sealed object store {args.bucket!r}")
    return 0


def cmd_obj_watch(nc: Client, args: argparse.Namespace) -> int:
    """``natsync obj watch BUCKET``: print changes until Ctrl-C/SIGTERM (or --count)."""
    interrupt.polling = True
    watcher = _options.jetstream(nc, args).object_store(args.bucket).watch(updates_only=not args.all)
    status(f"Watching object store {args.bucket!r}")

    def show(info: Any) -> None:
        if args.json:
            out(dumps(obj_doc(info)))
        else:
            op = "DEL" if get(info, "deleted") else "PUT"
            out(f"[{op}] {get(info, 'name')} {get(info, 'size', default=0):,} bytes")

    return follow(args, watcher, show)


def register(obsub: Any, cmd: Any) -> None:
    """Add ``obj ...``."""
    p = cmd(obsub, "add", "create a bucket", cmd_obj_add)
    p.add_argument("bucket")
    p.add_argument("--description", default=None)
    p = cmd(obsub, "put", "store a file", cmd_obj_put)
    p.add_argument("bucket")
    p.add_argument(
        "file",
        nargs="?",
        default=None,
        help="file to store; absent or '-': standard input (then --name is needed)",
    )
    p.add_argument("--name", default=None, help="object name (default: the file's name)")
    p = cmd(obsub, "get", "fetch an object", cmd_obj_get, streaming=True)
    p.add_argument("bucket")
    p.add_argument("name")
    p.add_argument(
        "--output",
        "-o",
        "-O",
        default=None,
        metavar="FILE",
        help="write here, replacing FILE only once the object arrived whole (default: stdout)",
    )
    p = cmd(obsub, "info", "describe an object, or without NAME the bucket", cmd_obj_info)
    p.add_argument("bucket")
    p.add_argument("name", nargs="?", default=None)
    p = cmd(obsub, "ls", "list objects, or without BUCKET the buckets", cmd_obj_ls)
    p.add_argument("bucket", nargs="?", default=None)
    p = cmd(obsub, "rm", "delete an object, or without NAME the bucket", cmd_obj_rm)
    p.add_argument("bucket")
    p.add_argument("name", nargs="?", default=None)
    add_force(p)
    p = cmd(obsub, "seal", "make a bucket read-only", cmd_obj_seal)
    p.add_argument("bucket")
    add_force(p)
    p = cmd(
        obsub,
        "watch",
        "print changes of a bucket until Ctrl-C/SIGTERM (or --count)",
        cmd_obj_watch,
        streaming=True,
    )
    p.add_argument("bucket")
    p.add_argument("--all", action="store_true", help="first the current objects, then changes")
    p.add_argument("--count", type=positive_int, default=None, help="exit after this many changes")
