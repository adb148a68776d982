"""Connection and context options: the one shared parent parser, how flags,
environment and the context combine, and connecting.

Precedence, as in the Go ``nats`` CLI: a flag, else its environment variable, else the
context's field, else the default.  The context is ``--context NAME``, else
``NATS_CONTEXT``, else the one selected with ``natsync context select``.
"""

from __future__ import annotations

import argparse
import os
import ssl
import sys
import threading
from dataclasses import dataclass
from typing import Any

from ..client import Client
from . import _context
from ._util import CommandError, duration, status

DEFAULT_URL = "nats://127.0.0.1:4222"
CLIENT_NAME = "natsync-cli"
DEFAULT_TIMEOUT = 5.0

# (dest, flags, env, context field, metavar, help)
_STRING_OPTIONS: tuple[tuple[str, tuple[str, ...], str | None, str | None, str | None, str], ...] = (
    (
        "server",
        ("-s", "--server"),
        "NATS_URL",
        "url",
        "URL",
        "server URL(s), comma separated (default nats://127.0.0.1:4222)",
    ),
    ("user", ("--user",), "NATS_USER", "user", None, "user name"),
    ("password", ("--password",), "NATS_PASSWORD", "password", None, "password"),
    ("token", ("--token",), "NATS_TOKEN", "token", None, "auth token; '-' reads it from standard input"),
    ("creds", ("--creds",), "NATS_CREDS", "creds", "FILE", "JWT credentials file"),
    ("nkey", ("--nkey",), "NATS_NKEY", "nkey", "FILE", "NKEY seed file"),
    ("tls_cert", ("--tlscert", "--tls-cert"), "NATS_CERT", "cert", "FILE", "client certificate for TLS"),
    ("tls_key", ("--tlskey", "--tls-key"), "NATS_KEY", "key", "FILE", "client certificate key"),
    ("tls_ca", ("--tlsca", "--tls-ca"), "NATS_CA", "ca", "FILE", "CA certificates to verify the server"),
    ("inbox_prefix", ("--inbox-prefix",), None, "inbox_prefix", "PREFIX", "prefix of reply subjects"),
    ("js_domain", ("--js-domain",), None, "jetstream_domain", "DOMAIN", "JetStream domain"),
    ("js_api_prefix", ("--js-api-prefix",), None, "jetstream_api_prefix", "PREFIX", "JetStream API prefix"),
)


def conn_parent(hidden: bool) -> argparse.ArgumentParser:
    """The connection options as a parent parser.  The top level shows them; every
    command accepts them too (*hidden*: left out of its ``--help``)."""
    p = argparse.ArgumentParser(add_help=False)
    S = argparse.SUPPRESS
    g: Any = (
        p
        if hidden
        else p.add_argument_group(
            "connection (flag, else environment variable, else context; also accepted after the command)"
        )
    )

    def h(text: str) -> str:
        return S if hidden else text

    g.add_argument("--context", default=S, metavar="NAME", help=h("use this context (env NATS_CONTEXT)"))
    for dest, flags, env, _field, metavar, help_ in _STRING_OPTIONS:
        text = help_ + (f" (env {env})" if env else "")
        g.add_argument(*flags, dest=dest, default=S, metavar=metavar, help=h(text))
    g.add_argument(
        "--tlsfirst",
        action="store_true",
        default=S,
        help=h("start TLS before the server's INFO (server tls handshake_first)"),
    )
    g.add_argument(
        "--timeout",
        type=duration,
        default=S,
        metavar="DURATION",
        help=h(
            "time to wait for answers: seconds or a Go duration such as 2s, 500ms "
            "(env NATS_TIMEOUT; default 5s)"
        ),
    )
    g.add_argument(
        "--connect-timeout",
        type=duration,
        default=S,
        metavar="DURATION",
        help=h("connect timeout per server (default: --timeout)"),
    )
    g.add_argument("--json", action="store_true", default=S, help=h("machine-readable JSON output"))
    return p


def json_parent() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable JSON output"
    )
    return p


@dataclass
class Settings:
    """The resolved connection settings of one run."""

    servers: str
    kwargs: dict[str, Any]
    js_domain: str | None
    js_api_prefix: str | None
    context: str | None


def _context_doc(args: argparse.Namespace) -> tuple[str | None, dict[str, Any]]:
    name = _context.resolve_name(args)
    if name is None:
        return None, {}
    doc = _context.load(name)
    for field in _context.UNSUPPORTED:
        if doc.get(field):
            raise CommandError(
                f"context {name!r} sets {field!r}, which natsync does not support; use a context without it"
            )
    for field in ("creds", "nkey"):
        v = doc.get(field)
        if (
            isinstance(v, str)
            and "://" in v
            and not v.startswith("file://")
            or (isinstance(v, str) and v.startswith("data:"))
        ):
            raise CommandError(
                f"context {name!r}: {field} {v.split(':', 1)[0]}: URIs are not supported by "
                "natsync; give a file path"
            )
    return name, doc


def resolve(args: argparse.Namespace) -> Settings:
    """Combine flags, environment and context into connection settings."""
    ctx_name, doc = _context_doc(args)
    values: dict[str, Any] = {}
    for dest, _flags, env, field, _m, _h in _STRING_OPTIONS:
        v = getattr(args, dest, None)
        if v is None and env is not None:
            v = os.environ.get(env) or None
        if v is None and field is not None:
            cv = doc.get(field)
            v = cv if isinstance(cv, str) and cv else None
            if v is not None and field in _context.PATHS:
                v = _context.expand_path(v)
        values[dest] = v
    kwargs: dict[str, Any] = {"name": CLIENT_NAME}
    token = values["token"]
    if token == "-":
        token = sys.stdin.readline().strip() if sys.stdin is not None else ""
        if not token:
            raise CommandError("--token -: no token on standard input")
        args.token = token  # read once: bench opens more connections with these args
    if token:
        kwargs["token"] = token
    if values["user"] is not None:
        kwargs["user"] = values["user"]
    if values["password"] is not None:
        kwargs["password"] = values["password"]
    if values["creds"]:
        kwargs["user_credentials"] = values["creds"]
    if values["nkey"]:
        kwargs["nkeys_seed"] = values["nkey"]
    if values["inbox_prefix"]:
        kwargs["inbox_prefix"] = values["inbox_prefix"]
    tls_first = bool(getattr(args, "tlsfirst", False) or doc.get("tls_first") is True)
    ca, cert, key = values["tls_ca"], values["tls_cert"], values["tls_key"]
    if ca or cert or key or tls_first:
        if bool(cert) != bool(key):
            raise CommandError("--tlscert and --tlskey go together: give both or neither")
        try:
            ctx = ssl.create_default_context(cafile=ca)
            if cert:
                ctx.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as e:
            raise CommandError(f"cannot load TLS files: {e}") from None
        kwargs["tls"] = ctx
    if tls_first:
        kwargs["tls_handshake_first"] = True
    kwargs["connect_timeout"] = getattr(args, "connect_timeout", None) or timeout(args)
    return Settings(
        values["server"] or DEFAULT_URL, kwargs, values["js_domain"], values["js_api_prefix"], ctx_name
    )


def timeout(args: argparse.Namespace) -> float:
    """The global ``--timeout`` (else ``NATS_TIMEOUT``, else 5 s)."""
    v = getattr(args, "timeout", None)
    if v is None:
        env = os.environ.get("NATS_TIMEOUT")
        if env:
            try:
                v = duration(env)
            except argparse.ArgumentTypeError as e:
                raise CommandError(f"NATS_TIMEOUT: {e}") from None
        else:
            v = DEFAULT_TIMEOUT
        args.timeout = v
    return float(v)


closing = threading.Event()  # set once the command closes its connection: no more notices


def _on_disconnect() -> None:
    if not closing.is_set():
        status("Disconnected from the server; reconnecting")


def _on_reconnect() -> None:
    if not closing.is_set():
        status("Reconnected")


def connect(args: argparse.Namespace, notify: bool = False, **extra: Any) -> Client:
    """Connect as the flags, environment and context of *args* say; with *notify*,
    disconnections and reconnections are told on standard error."""
    from ..client import connect as _connect
    from ._util import problems

    st = getattr(args, "_settings", None)
    if st is None:
        st = args._settings = resolve(args)
    kwargs = dict(st.kwargs, error_cb=problems.error_cb, **extra)
    if notify:
        kwargs.update(disconnected_cb=_on_disconnect, reconnected_cb=_on_reconnect)
    return _connect(st.servers, **kwargs)


def jetstream(nc: Client, args: argparse.Namespace) -> Any:
    """The JetStream context for *nc* with the domain/prefix and timeout of *args*."""
    try:
        import natsync.js  # noqa: F401 - is JetStream part of this installation?
    except ImportError:
        raise CommandError("JetStream is not available in this natsync installation") from None
    st: Settings | None = getattr(args, "_settings", None)
    kw: dict[str, Any] = {"timeout": timeout(args)}
    if st is not None and st.js_domain:
        kw["domain"] = st.js_domain
    elif st is not None and st.js_api_prefix:
        kw["prefix"] = st.js_api_prefix
    return nc.jetstream(**kw)  # type: ignore[attr-defined,unused-ignore]


# Python-API advice in connection errors, said in this command's flags.
_ADVICE = (
    (
        "pass tls=ssl.create_default_context(cafile=...) with the CA that signed it",
        "give the CA that signed it with --tlsca FILE (env NATS_CA)",
    ),
    (
        "load one with ctx.load_cert_chain(certfile, keyfile) and pass tls=ctx",
        "give one with --tlscert FILE --tlskey FILE (env NATS_CERT, NATS_KEY)",
    ),
    ("connect with tls_handshake_first=True", "connect with --tlsfirst"),
    ("connect without tls_handshake_first", "connect without --tlsfirst"),
    (", or set tls_hostname", ""),
    ("connect with a tls:// URL or tls=ssl.SSLContext", "connect with a tls:// URL or --tlsca FILE"),
    ("(tls:// URL or tls= option)", "(tls:// URL, --tlsca, --tlscert or --tlsfirst)"),
    ("given in the URL or options", "given in the URL, flags, environment or context"),
)


def cli_advice(text: str) -> str:
    for old, new in _ADVICE:
        text = text.replace(old, new)
    return text
