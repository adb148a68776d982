"""Validated ``connect()`` options (checked before any socket is opened).

Pure functions and a plain record: no threads, no locks, no I/O except reading NKEY /
credentials files named by the options.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Sequence
from typing import Any, Final

from . import _protocol as protocol
from ._auth import Credentials, check_credentials
from ._servers import Server, parse_servers
from .errors import BadSubjectError, NatsError

__all__ = ["Options", "build_options", "check_number", "DEFAULT"]


class Options:
    """Validated connect() options."""

    name: str | None
    creds: Credentials
    tls: ssl.SSLContext | None
    tls_hostname: str | None
    tls_handshake_first: bool
    connect_timeout: float
    allow_reconnect: bool
    max_reconnect_attempts: int
    reconnect_time_wait: float
    reconnect_jitter: float
    reconnect_jitter_tls: float
    reconnect_buffer_size: int
    retry_on_failed_connect: bool
    dont_randomize: bool
    ping_interval: float
    max_outstanding_pings: int
    no_echo: bool
    verbose: bool
    pedantic: bool
    inbox_prefix: str
    pending_msgs_limit: int | None
    pending_bytes_limit: int | None
    drain_timeout: float
    flush_timeout: float | None
    flusher_timeout: float
    flush_on_exit: bool
    error_cb: Callable[[NatsError], Any] | None
    disconnected_cb: Callable[[], Any] | None
    reconnected_cb: Callable[[], Any] | None
    closed_cb: Callable[[], Any] | None
    discovered_server_cb: Callable[[], Any] | None
    lame_duck_mode_cb: Callable[[], Any] | None


def check_number(
    name: str,
    value: Any,
    *,
    gt: float | None = None,
    ge: float | None = None,
    allow_none: bool = False,
    integer: bool = False,
) -> None:
    """Raise TypeError / ValueError naming option *name* unless *value* fits."""
    if value is None and allow_none:
        return
    ok_type = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok_type):
        kind = "an int" if integer else "a number"
        raise TypeError(f"option {name!r} must be {kind}{' or None' if allow_none else ''}, not {value!r}")
    if gt is not None and not value > gt:
        raise ValueError(f"option {name!r} must be > {gt:g}, not {value!r}")
    if ge is not None and not value >= ge:
        raise ValueError(f"option {name!r} must be >= {ge:g}, not {value!r}")


def _check_callable(name: str, value: Any) -> None:
    if value is not None and not callable(value):
        raise TypeError(f"option {name!r} must be callable or None, not {type(value).__name__}")


class _Default:
    """Marks an argument left at its default (the client's option applies)."""

    def __repr__(self) -> str:
        return "<default>"


DEFAULT: Final = _Default()

_NUMBERS: Final[dict[str, dict[str, Any]]] = {
    "connect_timeout": {"gt": 0},
    "drain_timeout": {"gt": 0},
    "flush_timeout": {"gt": 0, "allow_none": True},
    "flusher_timeout": {"gt": 0},
    "reconnect_time_wait": {"ge": 0},
    "reconnect_jitter": {"ge": 0},
    "reconnect_jitter_tls": {"ge": 0},
    "ping_interval": {"ge": 0},
    "max_outstanding_pings": {"ge": 1, "integer": True},
    "max_reconnect_attempts": {"ge": -1, "integer": True},
    "reconnect_buffer_size": {"ge": 0, "integer": True},
    "pending_msgs_limit": {"gt": 0, "allow_none": True, "integer": True},
    "pending_bytes_limit": {"gt": 0, "allow_none": True, "integer": True},
}
_FLOATS: Final = (
    "connect_timeout",
    "reconnect_time_wait",
    "reconnect_jitter",
    "reconnect_jitter_tls",
    "ping_interval",
    "drain_timeout",
    "flusher_timeout",
)
_BOOLS: Final = (
    "tls_handshake_first",
    "allow_reconnect",
    "retry_on_failed_connect",
    "dont_randomize",
    "no_echo",
    "verbose",
    "pedantic",
    "flush_on_exit",
)
_CALLBACKS: Final = (
    "error_cb",
    "disconnected_cb",
    "reconnected_cb",
    "closed_cb",
    "discovered_server_cb",
    "lame_duck_mode_cb",
)


_ALL_CALLBACKS: Final = (*_CALLBACKS, "signature_cb", "user_jwt_cb")
_UNSET: Final = object()


def build_options(
    servers: str | Sequence[str] | None, kw: dict[str, Any], defaults: dict[str, Any] | None = None
) -> tuple[Options, list[Server]]:
    """Check every option of ``connect()`` (given as *kw*) and the server URLs.

    *defaults* are ``connect()``'s own keyword defaults: an option that is the very
    default object is valid, so it is not checked again (connecting stays cheap).
    """
    o = Options()
    name = kw["name"]
    if name is not None and not isinstance(name, str):
        raise TypeError(f"option 'name' must be str or None, not {type(name).__name__}")
    o.name = name
    dflt = defaults or {}
    for opt, rule in _NUMBERS.items():
        value = kw[opt]
        if value is not dflt.get(opt, _UNSET):
            check_number(opt, value, **rule)
    for cb_name in _ALL_CALLBACKS:
        value = kw[cb_name]
        if value is not None:
            _check_callable(cb_name, value)
    tls = kw["tls"]
    if tls is not None and not isinstance(tls, ssl.SSLContext):
        raise TypeError(f"option 'tls' must be an ssl.SSLContext or None, not {type(tls).__name__}")
    if kw["tls_hostname"] is not None and not isinstance(kw["tls_hostname"], str):
        raise TypeError("option 'tls_hostname' must be str or None")
    inbox_prefix = kw["inbox_prefix"]
    if inbox_prefix is not dflt.get("inbox_prefix", _UNSET):
        if not isinstance(inbox_prefix, str):
            raise TypeError("option 'inbox_prefix' must be str")
        try:
            protocol.validate_subject(inbox_prefix, "inbox_prefix")
        except BadSubjectError as e:
            raise ValueError(f"option 'inbox_prefix' is invalid: {e}") from None
        if any(t in ("*", ">") for t in inbox_prefix.split(".")):
            raise ValueError("option 'inbox_prefix' must not contain wildcards")
    o.tls = tls
    o.tls_hostname = kw["tls_hostname"]
    d = o.__dict__
    for opt in _FLOATS:
        d[opt] = float(kw[opt])
    for opt in _BOOLS:
        d[opt] = bool(kw[opt])
    for opt in _CALLBACKS:
        d[opt] = kw[opt]
    o.max_reconnect_attempts = kw["max_reconnect_attempts"]
    o.reconnect_buffer_size = kw["reconnect_buffer_size"]
    o.max_outstanding_pings = kw["max_outstanding_pings"]
    o.inbox_prefix = inbox_prefix
    o.pending_msgs_limit = kw["pending_msgs_limit"]
    o.pending_bytes_limit = kw["pending_bytes_limit"]
    ft = kw["flush_timeout"]
    o.flush_timeout = None if ft is None else float(ft)

    if isinstance(servers, str) and not servers.strip():
        raise ValueError(
            "servers is an empty string: give a URL such as nats://127.0.0.1:4222 (or leave it out "
            "for the default)"
        )
    server_list = parse_servers(servers)
    extra = None
    nkey_options = ("nkeys_seed", "nkeys_seed_str", "user_credentials", "signature_cb", "user_jwt_cb")
    if any(kw[k] is not None for k in nkey_options):
        from ._nkeys import make_signer

        extra = make_signer(**{k: kw[k] for k in nkey_options})
    creds = Credentials(token=kw["token"], user=kw["user"], password=kw["password"], extra=extra)
    check_credentials(creds, server_list)
    o.creds = creds
    return o, server_list
