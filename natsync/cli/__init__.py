"""The ``natsync`` command: everyday NATS operations from a shell, on the blocking client,
at home for users of the Go ``nats`` CLI.

Run ``natsync --help`` (or ``python -m natsync --help``) for the commands, and
``docs/cli.rst`` for the guide.  Connection options (``-s``, ``--user``/``--password``,
``--token``, ``--creds``, ``--nkey``, ``--tlsca``/``--tlscert``/``--tlskey``,
``--tlsfirst``, ``--timeout``, ``--context``) and ``--json`` go before or after the
command.  A flag wins over its environment variable (``NATS_URL``, ``NATS_USER``, ...),
which wins over the context (``--context NAME``, ``NATS_CONTEXT``, or the selected one;
files compatible with the Go CLI).

Output is for humans by default; ``--json`` prints one JSON document (JSON Lines for
streams such as ``sub`` and ``kv watch``).  Exit status: 0 success, 1 error (one line on
standard error, no traceback), 2 usage error.  Ctrl-C or SIGTERM ends streaming commands
after draining the connection, with status 0.

The package has one module per command group: ``_options`` (connection and context
options, one shared parent parser), ``_context``, ``_core`` (pub/sub/req/reply/rtt),
``_bench``, ``_stream`` (streams and consumers), ``_kv``, ``_obj``, ``_micro``,
``_server`` (server and account); ``_util`` and ``_template`` are shared.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

from ..client import Client, __version__
from ..errors import NatsError
from . import _bench, _context, _core, _kv, _micro, _obj, _options, _server, _stream
from ._util import PROG, CommandError, interrupt, one_line, problems

__all__ = ["main", "build_parser", "CommandError"]


def build_parser() -> argparse.ArgumentParser:
    """The ``natsync`` argument parser (exposed for documentation and tests)."""
    visible = _options.conn_parent(hidden=False)
    hidden = _options.conn_parent(hidden=True)
    json_only = _options.json_parent()
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="natsync: the NATS command line of the natsync Python client.",
        parents=[visible],
        epilog="Connection options and --json may also follow the command. "
        "Exit status: 0 ok, 1 error, 2 usage.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def cmd(
        parent: Any,
        name: str,
        help_: str,
        fn: Callable[..., int],
        *,
        conn: bool = True,
        streaming: bool = False,
    ) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = parent.add_parser(
            name,
            help=help_,
            description=help_,
            parents=[hidden if conn else json_only],
            epilog="Connection options: see natsync --help." if conn else None,
        )
        p.set_defaults(func=fn, needs_conn=conn, streaming=streaming)
        return p

    def group(name: str, help_: str) -> Any:
        g = sub.add_parser(name, help=help_, description=help_, parents=[hidden])
        return g.add_subparsers(dest=f"{name}_command", metavar="SUBCOMMAND", required=True)

    _core.register(sub, cmd)
    _bench.register(sub, cmd)
    _context.register(sub, cmd)
    _server.register(sub, cmd, group)
    _micro.register(group("micro", "discover NATS services (ADR-32)"), cmd)
    _stream.register(group("stream", "JetStream streams"), group("consumer", "JetStream consumers"), cmd)
    _kv.register(group("kv", "Key/Value store"), cmd)
    _obj.register(group("obj", "Object Store"), cmd)
    return parser


def _check_argv(parser: argparse.ArgumentParser, argv: list[str]) -> str | None:
    """A usage problem argparse would report confusingly, or None."""
    for a in argv:
        try:
            a.encode("utf-8")
        except UnicodeEncodeError:
            shown = os.fsencode(a).decode("ascii", "backslashreplace")
            return (
                f"argument {shown!r} is not valid UTF-8: subjects and names must be UTF-8 "
                "(binary bodies can come from standard input)"
            )
    # An unknown option before the command makes argparse take its value for the
    # command ("invalid choice: '/path/ca.pem'"): name the option instead.
    actions = parser._option_string_actions
    i = 0
    while i < len(argv):
        a = argv[i]
        if not a.startswith("-") or a == "-":
            return None
        if a == "--":
            return None
        name = a.split("=", 1)[0]
        act = actions.get(name)
        if act is None:
            return f"unknown option {name!r} (see natsync --help)"
        i += 1 if (act.nargs == 0 or "=" in a) else 2
    return None


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


def _fail(message: str) -> int:
    sys.stderr.write(f"{PROG}: error: {message}\n")
    sys.stderr.flush()
    return 1


class _Run:
    """The connection of one run (main thread only)."""

    def __init__(self) -> None:
        self.nc: Client | None = None

    def close(self, drain: bool) -> None:
        nc, self.nc = self.nc, None
        if nc is None:
            return
        _options.closing.set()
        try:
            if drain and not nc.is_closed:
                nc.drain(timeout=5.0)
            else:
                nc.close()
        except (NatsError, OSError):
            nc.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``natsync`` command with *argv* (default ``sys.argv[1:]``); return the
    exit status (0 ok, 1 error, 2 usage; argparse exits with 2 itself).

    Commands that do not stream keep their output until the connection is closed, so
    that an error the server reports late (a permissions violation of a publish) still
    leaves standard output empty.
    """
    logging.getLogger("natsync").addHandler(logging.NullHandler())
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    problem = _check_argv(parser, args_list)
    if problem is not None:
        parser.print_usage(sys.stderr)
        sys.stderr.write(f"{PROG}: error: {problem}\n")
        return 2
    args = parser.parse_args(args_list)
    args.json = bool(getattr(args, "json", False))
    fn: Callable[..., int] = args.func
    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, interrupt.handler)
    interrupt.event.clear()
    _options.closing.clear()
    interrupt.polling = False
    problems.clear()
    real_stdout = sys.stdout
    buf: io.TextIOWrapper | None = None
    if not args.streaming:
        buf = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", newline="\n", write_through=True)
        sys.stdout = buf
    run = _Run()
    try:
        try:
            if args.needs_conn:
                run.nc = _options.connect(args, notify=args.streaming)
                status = fn(run.nc, args)
                run.close(drain=True)
                problems.check()
            else:
                status = fn(args)
        except KeyboardInterrupt:
            run.close(drain=True)
            status = 0
        finally:
            sys.stdout = real_stdout
        if buf is not None:
            _emit(real_stdout, buf)
        return status
    except BrokenPipeError:
        run.close(drain=False)
        _quiet_stdout()
        return 0
    except Exception as e:  # noqa: BLE001 - one line on stderr, never a traceback
        run.close(drain=False)
        return _fail(_options.cli_advice(one_line(e)))
    finally:
        run.close(drain=False)
        for signum, handler in previous.items():
            if handler is not None:
                signal.signal(signum, handler)


def _quiet_stdout() -> None:
    # After EPIPE (e.g. `natsync sub x | head -1`) Python would complain when it flushes
    # stdout at exit; point it at /dev/null instead.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
