"""Contexts compatible with the Go ``nats`` CLI (ADR-21; jsm.go ``natscontext``).

A context is ``$XDG_CONFIG_HOME/nats/context/<name>.json`` (default
``~/.config/nats/context/``) with the Go CLI's field names; the selected one is named in
``$XDG_CONFIG_HOME/nats/context.txt``.  Files are written the way the Go CLI writes them
(every known field present, two-space indented JSON, mode 0600), and fields this
program does not know are kept when it rewrites a file, so a context saved by one tool
works in the other.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from ._util import CommandError, add_force, confirm, dumps, out, table

# The Go CLI's fields, in the order it writes them (jsm.go natscontext settings).
FIELDS: tuple[str, ...] = (
    "description",
    "url",
    "socks_proxy",
    "token",
    "user",
    "password",
    "creds",
    "nkey",
    "cert",
    "key",
    "ca",
    "nsc",
    "jetstream_domain",
    "jetstream_api_prefix",
    "jetstream_event_prefix",
    "inbox_prefix",
    "user_jwt",
    "color_scheme",
    "tls_first",
)
SECRETS = ("token", "password", "user_jwt")
PATHS = ("creds", "nkey", "cert", "key", "ca")
# Fields natsync cannot honour: a context that sets one is refused, not half-used.
UNSUPPORTED = (
    "socks_proxy",
    "nsc",
    "user_jwt",
    "windows_cert_store",
    "windows_cert_match_by",
    "windows_cert_match",
    "windows_ca_certs_match",
)


def config_dir() -> Path:
    """``$XDG_CONFIG_HOME/nats`` (default ``~/.config/nats``)."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "nats"


def context_dir() -> Path:
    return config_dir() / "context"


def check_name(name: str) -> str:
    if not name or ".." in name or "/" in name or os.sep in name or name.startswith("."):
        raise CommandError(f"invalid context name {name!r}: use letters, digits, '-', '_' (no '/', '..')")
    return name


def context_path(name: str) -> Path:
    return context_dir() / f"{check_name(name)}.json"


def selected() -> str | None:
    """The selected context's name (``context.txt``), or None."""
    try:
        name = (config_dir() / "context.txt").read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise CommandError(f"cannot read {config_dir() / 'context.txt'}: {e.strerror}") from None
    return name or None


def names() -> list[str]:
    try:
        return sorted(p.stem for p in context_dir().glob("*.json") if p.is_file())
    except OSError:
        return []


def exists(name: str) -> bool:
    return context_path(name).is_file()


def load(name: str) -> dict[str, Any]:
    """The fields of context *name*; CommandError when it is missing or not valid."""
    path = context_path(name)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        known = ", ".join(names()) or "none"
        raise CommandError(
            f"no context named {name!r} in {context_dir()} (known: {known}); "
            "create it with: natsync context add"
        ) from None
    except OSError as e:
        raise CommandError(f"cannot read context {name!r} ({path}): {e.strerror}") from None
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise CommandError(f"context {name!r} ({path}) is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise CommandError(f"context {name!r} ({path}) is not a JSON object")
    return doc


def save(name: str, doc: dict[str, Any]) -> Path:
    """Write context *name* as the Go CLI does (every known field, then any others);
    atomically (temporary file and rename), mode 0600."""
    path = context_path(name)
    full: dict[str, Any] = {k: doc.get(k, False if k == "tls_first" else "") for k in FIELDS}
    full.update({k: v for k, v in doc.items() if k not in full})
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(full, indent=2, ensure_ascii=False))
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def select(name: str | None) -> None:
    path = config_dir() / "context.txt"
    if name is None:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(name, encoding="utf-8")


def resolve_name(args: argparse.Namespace) -> str | None:
    """The context to use: ``--context``, else ``NATS_CONTEXT``, else the selected one."""
    name = getattr(args, "context", None) or os.environ.get("NATS_CONTEXT") or None
    if name is not None:
        return check_name(name)
    sel = selected()
    if sel is not None and not exists(sel):
        return None  # a stale selection is not an error for commands that do not need it
    return sel


def expand_path(value: str) -> str:
    """``~`` is the home directory; ``file://`` URIs are paths (ADR-21)."""
    if value.startswith("file://"):
        value = value[len("file://") :]
    return os.path.expanduser(value)


def masked(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: ("*" * 9 if k in SECRETS and v else v) for k, v in doc.items()}


# --- commands ----------------------------------------------------------------------------


def cmd_ls(args: argparse.Namespace) -> int:
    """``natsync context ls``."""
    sel = selected()
    rows = []
    for n in names():
        try:
            d = load(n)
        except CommandError:
            d = {"description": "(unreadable)"}
        rows.append(
            {
                "name": n,
                "selected": n == sel,
                "description": d.get("description", ""),
                "url": d.get("url", ""),
            }
        )
    if args.json:
        out(dumps(rows))
        return 0
    if not rows:
        out(f"No contexts in {context_dir()}")
        return 0
    table(
        [(r["name"] + ("*" if r["selected"] else ""), r["url"], r["description"]) for r in rows],
        ("NAME", "URL", "DESCRIPTION"),
    )
    return 0


_ADD_FIELDS = (
    ("server", "url"),
    ("description", "description"),
    ("user", "user"),
    ("password", "password"),
    ("token", "token"),
    ("creds", "creds"),
    ("nkey", "nkey"),
    ("tlscert", "cert"),
    ("tlskey", "key"),
    ("tlsca", "ca"),
    ("js_domain", "jetstream_domain"),
    ("js_api_prefix", "jetstream_api_prefix"),
    ("inbox_prefix", "inbox_prefix"),
)


def cmd_add(args: argparse.Namespace) -> int:
    """``natsync context add NAME [--server URL ...] [--select]``: create or update."""
    name = check_name(args.name)
    doc = load(name) if exists(name) else {}
    created = not doc
    for opt, field in _ADD_FIELDS:
        v = getattr(args, f"ctx_{opt}", None)
        if v is not None:
            doc[field] = v
    if getattr(args, "ctx_tlsfirst", None) is not None:
        doc["tls_first"] = bool(args.ctx_tlsfirst)
    path = save(name, doc)
    if args.select:
        select(name)
    if args.json:
        out(
            dumps(
                {
                    "name": name,
                    "path": str(path),
                    "created": created,
                    "selected": bool(args.select),
                    "context": masked(load(name)),
                }
            )
        )
    else:
        out(
            f"{'Created' if created else 'Updated'} context {name!r} ({path})"
            + ("; selected" if args.select else "")
        )
    return 0


def cmd_select(args: argparse.Namespace) -> int:
    """``natsync context select [NAME]``."""
    if args.name is None:
        sel = selected()
        if args.json:
            out(dumps({"selected": sel}))
        else:
            out(sel or "No context selected")
        return 0
    if not exists(args.name):
        load(args.name)  # raises the explanatory error
    select(args.name)
    if args.json:
        out(dumps({"selected": args.name}))
    else:
        out(f"Selected context {args.name!r}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    """``natsync context info [NAME]`` (secrets masked)."""
    name = args.name or resolve_name(args)
    if name is None:
        raise CommandError(
            "no context selected: give a name, or select one with: natsync context select NAME"
        )
    doc = masked(load(name))
    if args.json:
        out(dumps({"name": name, "path": str(context_path(name)), "selected": name == selected(), **doc}))
        return 0
    out(f"NATS Configuration Context {name!r}" + (" (selected)" if name == selected() else ""))
    out()
    for k in FIELDS + tuple(k for k in doc if k not in FIELDS):
        v = doc.get(k)
        if v in (None, "", False):
            continue
        if k in PATHS and isinstance(v, str):
            shown = expand_path(v)
            v = v if shown == v else f"{v} ({shown})"
            if not os.path.exists(expand_path(str(doc[k]))):
                v = f"{v} (missing)"
        out(f"  {k}: {v}")
    out()
    out(f"  path: {context_path(name)}")
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    """``natsync context rm NAME [-f]``."""
    name = check_name(args.name)
    path = context_path(name)
    if not path.is_file():
        load(name)  # raises the explanatory error
    confirm(args, f"Delete context {name!r} ({path})?")
    path.unlink()
    if selected() == name:
        select(None)
    if args.json:
        out(dumps({"deleted": name}))
    else:
        out(f"Deleted context {name!r}")
    return 0


def register(sub: Any, cmd: Any) -> None:
    """Add ``context`` and its subcommands to the parser."""
    grp = sub.add_parser(
        "context",
        help="manage contexts (saved connection settings, as the Go nats CLI)",
        description="Contexts are files in $XDG_CONFIG_HOME/nats/context "
        "(default ~/.config/nats/context), shared with the Go nats CLI.",
    )
    gsub = grp.add_subparsers(dest="context_command", metavar="SUBCOMMAND", required=True)
    cmd(gsub, "ls", "list contexts (* marks the selected one)", cmd_ls, conn=False)
    p = cmd(gsub, "add", "create or update a context", cmd_add, conn=False)
    p.add_argument("name")
    p.add_argument("--server", "-s", dest="ctx_server", metavar="URL", help="server URL(s), comma separated")
    p.add_argument("--description", dest="ctx_description")
    p.add_argument("--user", dest="ctx_user")
    p.add_argument("--password", dest="ctx_password")
    p.add_argument("--token", dest="ctx_token")
    p.add_argument("--creds", dest="ctx_creds", metavar="FILE")
    p.add_argument("--nkey", dest="ctx_nkey", metavar="FILE")
    p.add_argument("--tlscert", dest="ctx_tlscert", metavar="FILE")
    p.add_argument("--tlskey", dest="ctx_tlskey", metavar="FILE")
    p.add_argument("--tlsca", dest="ctx_tlsca", metavar="FILE")
    p.add_argument("--tlsfirst", dest="ctx_tlsfirst", action="store_true", default=None)
    p.add_argument("--js-domain", dest="ctx_js_domain", metavar="DOMAIN")
    p.add_argument("--js-api-prefix", dest="ctx_js_api_prefix", metavar="PREFIX")
    p.add_argument("--inbox-prefix", dest="ctx_inbox_prefix", metavar="PREFIX")
    p.add_argument("--select", action="store_true", help="select it")
    p = cmd(gsub, "select", "select the default context (no NAME: show it)", cmd_select, conn=False)
    p.add_argument("name", nargs="?", default=None)
    p = cmd(gsub, "info", "show a context (secrets masked)", cmd_info, conn=False)
    p.add_argument("name", nargs="?", default=None)
    p = cmd(gsub, "rm", "delete a context", cmd_rm, conn=False)
    p.add_argument("name")
    add_force(p)
