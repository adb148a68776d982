"""``micro ls|info|stats [NAME [ID]]``: discover ADR-32 services."""

from __future__ import annotations

import argparse
import json
from typing import Any

from .. import micro
from ..client import Client
from . import _options
from ._util import CommandError, dumps, gather, out, table


def discover(
    nc: Client, verb: str, name: str | None, id_: str | None, timeout: float
) -> list[dict[str, Any]]:
    """Every answer to ``$SRV.<verb>[.name[.id]]``: the first within *timeout*, the
    others until answers stop coming (as the Go CLI waits)."""
    try:
        subject = micro.control_subject(verb, name, id_)
    except ValueError as e:
        raise CommandError(str(e)) from None
    docs = []
    for msg, _rtt in gather(nc, subject, b"", timeout, max_answers=1 if id_ else None):
        try:
            doc = json.loads(msg.data)
        except ValueError:
            continue
        if isinstance(doc, dict):
            docs.append(doc)
    return docs


def cmd_micro(nc: Client, args: argparse.Namespace) -> int:
    """``natsync micro ls|info|stats [NAME [ID]]``."""
    verb = args.micro_command
    timeout = _options.timeout(args)
    docs = discover(nc, {"ls": "INFO", "info": "INFO", "stats": "STATS"}[verb], args.name, args.id, timeout)
    docs.sort(key=lambda d: (str(d.get("name")), str(d.get("id"))))
    if args.json:
        out(dumps(docs))
        return 0
    if not docs:
        what = f" named {args.name!r}" if args.name else ""
        raise CommandError(f"no services{what} answered within {timeout:g} s")
    if verb == "ls":
        table(
            [
                (
                    d.get("name"),
                    d.get("version"),
                    d.get("id"),
                    d.get("description") or "",
                    len(d.get("endpoints") or []),
                )
                for d in docs
            ],
            ("NAME", "VERSION", "ID", "DESCRIPTION", "ENDPOINTS"),
        )
        return 0
    for i, d in enumerate(docs):
        if i:
            out()
        out(f"Service {d.get('name')} {d.get('version')} (id {d.get('id')})")
        if verb == "info":
            if d.get("description"):
                out(f"  description: {d['description']}")
            for k, v in sorted((d.get("metadata") or {}).items()):
                out(f"  metadata {k}: {v}")
            table(
                [
                    ("  " + str(e.get("name")), e.get("subject"), e.get("queue_group") or "-")
                    for e in d.get("endpoints") or []
                ],
                ("  ENDPOINT", "SUBJECT", "QUEUE GROUP"),
            )
        else:
            out(f"  started: {d.get('started')}")
            rows = []
            for ep in d.get("endpoints") or []:
                avg = (ep.get("average_processing_time") or 0) / 1e3
                rows.append(
                    (
                        "  " + str(ep.get("name")),
                        ep.get("subject"),
                        ep.get("num_requests"),
                        ep.get("num_errors"),
                        f"{avg:,.1f}",
                        ep.get("last_error") or "",
                    )
                )
            table(rows, ("  ENDPOINT", "SUBJECT", "REQUESTS", "ERRORS", "AVG µs", "LAST ERROR"))
    return 0


def register(msub: Any, cmd: Any) -> None:
    """Add ``micro ls|info|stats``."""
    for name, help_ in (
        ("ls", "list services"),
        ("info", "describe services"),
        ("stats", "service statistics"),
    ):
        p = cmd(
            msub, name, help_ + " (answers gathered until --timeout or until they stop coming)", cmd_micro
        )
        p.add_argument("name", nargs="?", default=None, help="service name")
        p.add_argument("id", nargs="?", default=None, help="instance id")
