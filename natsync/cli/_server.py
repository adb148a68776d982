"""``server list|ping|info`` (through the system account, as the Go CLI) and
``account info``."""

from __future__ import annotations

import argparse
import datetime
import json
import re
from typing import Any

from ..client import Client
from ..errors import NatsError, NoRespondersError
from ..errors import TimeoutError as NatsTimeoutError
from . import _options
from ._util import CommandError, dumps, fmt_bytes, gather, get, out, table

PING = "$SYS.REQ.SERVER.PING"


def _needs_system(subject: str) -> CommandError:
    return CommandError(
        f"no server answered {subject}: this needs a user of the system account "
        "(system_account in the server configuration)"
    )


def _ping(
    nc: Client, args: argparse.Namespace, subject: str = PING, expect: int | None = None, body: bytes = b""
) -> list[tuple[dict[str, Any], float]]:
    answers = []
    for msg, rtt in gather(nc, subject, body, _options.timeout(args), max_answers=expect):
        try:
            doc = json.loads(msg.data)
        except ValueError:
            continue
        if isinstance(doc, dict):
            answers.append((doc, rtt))
    if not answers:
        raise _needs_system(subject)
    answers.sort(key=lambda a: str(get(a[0], "server", "name")))
    return answers


def _uptime(start: str | None) -> str:
    if not start:
        return ""
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.\d+)?(Z|[+-]\d\d:\d\d)$", start)
    if m is None:
        return start
    t = datetime.datetime.fromisoformat(m.group(1) + ("+00:00" if m.group(2) == "Z" else m.group(2)))
    secs = int((datetime.datetime.now(datetime.timezone.utc) - t).total_seconds())
    d, rem = divmod(max(secs, 0), 86400)
    h, rem = divmod(rem, 3600)
    mi, s = divmod(rem, 60)
    return (f"{d}d" if d else "") + (f"{h}h" if h or d else "") + f"{mi}m{s}s"


def cmd_server_list(nc: Client, args: argparse.Namespace) -> int:
    """``natsync server list [EXPECTED]``."""
    answers = _ping(nc, args, expect=args.expected)
    if args.json:
        out(dumps([dict(doc, rtt_ms=round(rtt * 1e3, 3)) for doc, rtt in answers]))
        return 0
    rows = []
    for doc, rtt in answers:
        srv, st = doc.get("server") or {}, doc.get("statsz") or {}
        rows.append(
            (
                srv.get("name"),
                srv.get("cluster") or "",
                srv.get("host"),
                srv.get("ver"),
                "yes" if srv.get("jetstream") else "no",
                st.get("connections", 0),
                st.get("subscriptions", 0),
                _uptime(st.get("start")),
                f"{rtt * 1e3:.2f}ms",
            )
        )
    table(rows, ("NAME", "CLUSTER", "HOST", "VERSION", "JS", "CONNS", "SUBS", "UPTIME", "RTT"))
    out()
    out(f"{len(rows)} server(s) answered" + (f" (expected {args.expected})" if args.expected else ""))
    if args.expected is not None and len(rows) != args.expected:
        raise CommandError(f"{len(rows)} server(s) answered, expected {args.expected}")
    return 0


def cmd_server_ping(nc: Client, args: argparse.Namespace) -> int:
    """``natsync server ping [EXPECTED]``."""
    answers = _ping(nc, args, expect=args.expected)
    if args.json:
        out(
            dumps(
                [
                    {
                        "name": get(doc, "server", "name"),
                        "id": get(doc, "server", "id"),
                        "rtt_ms": round(rtt * 1e3, 3),
                    }
                    for doc, rtt in answers
                ]
            )
        )
        return 0
    for doc, rtt in answers:
        out(f"{get(doc, 'server', 'name')}  rtt={rtt * 1e3:.2f}ms")
    out()
    out(f"{len(answers)} server(s) answered")
    if args.expected is not None and len(answers) != args.expected:
        raise CommandError(f"{len(answers)} server(s) answered, expected {args.expected}")
    return 0


def cmd_server_info(nc: Client, args: argparse.Namespace) -> int:
    """``natsync server info [SERVER]``: the server's VARZ, as the Go CLI shows it."""
    if args.server_name is None:
        sid = str(nc.server_info.get("server_id") or "")
        answers = _ping(nc, args, subject=f"$SYS.REQ.SERVER.{sid}.VARZ", expect=1, body=b"{}")
    else:
        found = [
            a
            for a in _ping(nc, args, subject=f"{PING}.VARZ", body=b"{}")
            if args.server_name in (get(a[0], "server", "name"), get(a[0], "server", "id"))
        ]
        if not found:
            raise CommandError(f"no server named {args.server_name!r} answered (see natsync server list)")
        answers = found[:1]
    doc = answers[0][0]
    if doc.get("error"):
        raise CommandError(f"server error: {get(doc, 'error', 'description', default=doc['error'])}")
    varz = doc.get("data") or {}
    if args.json:
        out(dumps(varz))
        return 0
    out(f"Server information for {varz.get('server_name')} ({varz.get('server_id')})")
    out()
    rows = (
        ("Version", varz.get("version")),
        ("Go Version", varz.get("go")),
        ("Host", f"{varz.get('host')}:{varz.get('port')}"),
        ("Cluster", get(varz, "cluster", "name", default="")),
        ("JetStream", "yes" if varz.get("jetstream", {}).get("config") else "no"),
        ("Max Payload", fmt_bytes(varz.get("max_payload") or 0)),
        ("Max Connections", varz.get("max_connections")),
        ("Connections", varz.get("connections")),
        ("Subscriptions", varz.get("subscriptions")),
        ("Messages In", varz.get("in_msgs")),
        ("Messages Out", varz.get("out_msgs")),
        ("Bytes In", fmt_bytes(varz.get("in_bytes") or 0)),
        ("Bytes Out", fmt_bytes(varz.get("out_bytes") or 0)),
        ("Uptime", varz.get("uptime")),
        ("Memory", fmt_bytes(varz.get("mem") or 0)),
        ("CPU", varz.get("cpu")),
        ("Cores", varz.get("cores")),
    )
    width = max(len(k) for k, _v in rows)
    for k, v in rows:
        out(f"  {k.rjust(width)}: {'' if v is None else v}")
    return 0


def cmd_account_info(nc: Client, args: argparse.Namespace) -> int:
    """``natsync account info``: who this connection is, and its JetStream usage."""
    timeout = _options.timeout(args)
    user: dict[str, Any] = {}
    try:
        doc = json.loads(nc.request("$SYS.REQ.USER.INFO", b"", timeout=timeout).data)
        user = doc.get("data") or {}
    except (NoRespondersError, NatsTimeoutError, ValueError):
        user = {}
    js: Any = None
    js_error = None
    try:
        js = _options.jetstream(nc, args).account_info()
    except CommandError:
        raise
    except NatsError as e:
        js_error = str(e)
    info = nc.server_info
    doc = {
        "server": info.get("server_name"),
        "server_id": info.get("server_id"),
        "url": nc.connected_url,
        "client_id": info.get("client_id"),
        "client_ip": info.get("client_ip"),
        "user": user.get("user"),
        "account": user.get("account"),
        "permissions": user.get("permissions"),
        "jetstream": js,
    }
    if args.json:
        out(dumps(doc))
        return 0
    out("Connection information:")
    out()
    out(f"  Client ID: {doc['client_id']}")
    out(f"  Client IP: {doc['client_ip']}")
    out(f"  Server: {doc['server']} ({doc['url']})")
    if user:
        out(f"  User: {user.get('user')}")
        out(f"  Account: {user.get('account')}")
    out()
    if js is None:
        out(f"JetStream: not available for this account ({js_error})")
        return 0
    out("JetStream account information:")
    out()
    out(f"  Memory: {fmt_bytes(get(js, 'memory', default=0))}")
    out(f"  Storage: {fmt_bytes(get(js, 'storage', default=0))}")
    out(f"  Streams: {get(js, 'streams', default=0)}")
    out(f"  Consumers: {get(js, 'consumers', default=0)}")
    limits = get(js, "limits")
    if limits is not None:
        out(f"  Max Streams: {get(limits, 'max_streams', default=-1)}")
        out(f"  Max Consumers: {get(limits, 'max_consumers', default=-1)}")
    return 0


def register(sub: Any, cmd: Any, group: Any) -> None:
    """Add ``server`` and ``account``."""
    ssub = group("server", "server commands (list, ping, info use the system account)")
    p = cmd(ssub, "list", "list the servers that answer $SYS.REQ.SERVER.PING", cmd_server_list)
    p.add_argument(
        "expected", nargs="?", type=int, default=None, help="stop after this many answers (and check it)"
    )
    p = cmd(ssub, "ping", "ping every server and show its round trip time", cmd_server_ping)
    p.add_argument(
        "expected", nargs="?", type=int, default=None, help="stop after this many answers (and check it)"
    )
    p = cmd(ssub, "info", "show a server's details (VARZ; default: the connected server)", cmd_server_info)
    p.add_argument("server_name", nargs="?", default=None, metavar="SERVER", help="server name or id")
    asub = group("account", "account commands")
    cmd(asub, "info", "this connection's user, account and JetStream usage", cmd_account_info)
