"""Django integration: a per-process NATS client, handlers, a worker command, a health view.

Add ``"natsync.django"`` to ``INSTALLED_APPS`` and configure it in settings::

    NATSYNC = {
        "servers": ["nats://nats-1:4222", "nats://nats-2:4222"],
        "token": os.environ.get("NATS_TOKEN"),
        "name": "shop-web",
        # ... any other natsync.connect() option
    }

Every option may be overridden by an environment variable ``NATSYNC_<OPTION>`` in upper
case (``NATSYNC_SERVERS``, ``NATSYNC_TOKEN``, ``NATSYNC_USER``, ``NATSYNC_PASSWORD``,
``NATSYNC_NAME``, ``NATSYNC_CONNECT_TIMEOUT``, ...): the environment wins over settings.
Values are converted to the option's type (``true``/``false`` for flags, numbers for
numeric options; ``NATSYNC_SERVERS`` may hold several URLs separated by commas).

:func:`get_client` returns the process's lazy client: nothing connects at import, in
``AppConfig.ready()`` or in any management command that does not use NATS, so
``migrate`` and friends work while NATS is down.  The first call that needs the
connection connects, in the process that makes it (a forked gunicorn or Celery worker
opens its own).  Unless configured it retries the first connect in the background and
reconnects forever.

Handlers live in each app's ``nats_handlers.py`` and run only in ``python manage.py
natsync_worker``::

    from natsync.django import subscribe, consume, PermanentError

    @subscribe("orders.created", queue="billing")
    def bill(msg): ...

    @consume(stream="ORDERS", durable="shipping", subject="orders.paid")
    def ship(msg): ...     # ack on return, nak with backoff on raise, term on PermanentError

This package imports Django; :mod:`natsync` itself never does.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from .. import _outbox, _web
from .._options import _ALL_CALLBACKS
from ..client import Client
from ..headers import Headers, HeadersInput

__all__ = [
    "ENV_PREFIX",
    "PermanentError",
    "consume",
    "get_client",
    "handlers",
    "publish_on_commit",
    "reset_client",
    "settings_options",
    "show_server",
    "shutdown_wait",
    "source_of",
    "unknown_env_vars",
    "subscribe",
]

ENV_PREFIX = "NATSYNC_"
PermanentError = _web.PermanentError

#: The handlers declared with :func:`subscribe` and :func:`consume` in this process.
handlers: _web.HandlerRegistry = _web.HandlerRegistry()


def subscribe(
    subject: str, queue: str | None = None, *, name: str | None = None
) -> Callable[[_web.HandlerFunc], _web.HandlerFunc]:
    """Decorator: run the function for each message on *subject* (in a worker).

    A message with a reply subject is answered with the function's return value when it
    is not None (bytes, bytearray, memoryview or str).  Use a *queue* group to share the
    messages among several workers.  Same as ``handlers.subscribe``.

    Raises:
        natsync.BadSubjectError: for an invalid subject or queue name.
        ValueError: when another handler already has this name.
    """
    return handlers.subscribe(subject, queue, name=name)


def consume(
    *,
    stream: str,
    durable: str,
    subject: str | None = None,
    permanent: type[BaseException] | Iterable[type[BaseException]] = (),
    backoff: Sequence[float] = _web._DEFAULT_BACKOFF,
    batch: int = 10,
    name: str | None = None,
) -> Callable[[_web.HandlerFunc], _web.HandlerFunc]:
    """Decorator: run the function for each message of a JetStream pull consumer.

    The worker binds to the durable consumer *durable* of *stream* (created with
    *subject* as its filter when a subject is given), fetches up to *batch* messages at
    a time and, per message: ``ack`` when the function returns, ``term`` when it raises
    :class:`PermanentError` or one of *permanent*, and ``nak`` with the delay
    ``backoff[n-1]`` (n = the delivery count; the last value repeats) when it raises
    anything else.  Same as ``handlers.consume``.

    Raises:
        ValueError: for an empty stream or durable name, a bad batch or backoff, or a
            name already taken.
        natsync.BadSubjectError: for an invalid subject.
        TypeError: when *permanent* holds something that is not an exception type.
    """
    return handlers.consume(
        stream=stream,
        durable=durable,
        subject=subject,
        permanent=permanent,
        backoff=backoff,
        batch=batch,
        name=name,
    )


_lock = threading.Lock()
_clients: _web.ProcessClient | None = None

# Options whose type the default of connect() does not show.
_FLOAT_OPTIONS = {"flush_timeout"}
_INT_OPTIONS = {"pending_msgs_limit", "pending_bytes_limit"}
_NONE_ALLOWED = {"flush_timeout", "pending_msgs_limit", "pending_bytes_limit"}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
# Options that cannot come from a string (callables, SSL contexts).
_NOT_FROM_ENV = {"tls", *_ALL_CALLBACKS}


def settings_options(
    settings_value: Any = None, environ: Mapping[str, str] | None = None
) -> tuple[Any, dict[str, Any]]:
    """Return ``(servers, options)`` from the ``NATSYNC`` setting and ``NATSYNC_*`` variables.

    Args:
        settings_value: the ``NATSYNC`` dict (default: ``django.conf.settings.NATSYNC``,
            or ``{}`` when it is not set).
        environ: the environment (default :data:`os.environ`).

    Raises:
        TypeError: when ``NATSYNC`` is not a dict, or holds an unknown option.
        ValueError: when an environment variable's value does not fit its option.
    """
    if settings_value is None:
        from django.conf import settings

        settings_value = getattr(settings, "NATSYNC", None) or {}
    if not isinstance(settings_value, Mapping):
        raise TypeError(
            "settings.NATSYNC must be a dict of natsync.connect() options, "
            f"not {type(settings_value).__name__}"
        )
    known = _web.connect_option_names()
    options = dict(settings_value)
    for key in options:
        if key != "servers" and key not in known:
            raise TypeError(
                f"settings.NATSYNC has an unknown option {key!r}"
                + _outbox.did_you_mean(str(key), {"servers", *known})
            )
    if "lazy" in options:
        raise TypeError(
            "settings.NATSYNC['lazy'] is not an option here: natsync.django's client is always lazy"
        )
    env = os.environ if environ is None else environ
    for var, raw in env.items():
        if not var.startswith(ENV_PREFIX):
            continue
        key = var[len(ENV_PREFIX) :].lower()
        if key == "servers":
            options["servers"] = [u.strip() for u in raw.split(",") if u.strip()]
            continue
        param = known.get(key)
        if param is None or key in _NOT_FROM_ENV:
            continue  # not an option (unknown_env_vars() finds the misspelt ones)
        options[key] = _from_env(var, raw, key, param.default)
    servers = options.pop("servers", None)
    return servers, options


#: ``NATSYNC_*`` names that are settings of their own, not connect() options.
OTHER_SETTINGS = ("NATSYNC_OUTBOX", "NATSYNC_SHUTDOWN_WAIT", "NATSYNC_SHOW_SERVER")


def unknown_env_vars(environ: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """``NATSYNC_*`` environment variables that configure nothing: ``(name, hint)`` pairs.

    The hint is a "did you mean" for the closest known variable.  ``manage.py check``
    reports each as warning ``natsync.W001``.
    """
    env = os.environ if environ is None else environ
    known = {ENV_PREFIX + k.upper() for k in _web.connect_option_names() if k not in _NOT_FROM_ENV}
    known |= {ENV_PREFIX + "SERVERS", *OTHER_SETTINGS}
    return [
        (var, _outbox.did_you_mean(var, known).lstrip("; "))
        for var in sorted(env)
        if var.startswith(ENV_PREFIX) and var not in known
    ]


def source_of(key: str, environ: Mapping[str, str] | None = None) -> str:
    """Where the value of option *key* comes from: its environment variable, or settings."""
    env = os.environ if environ is None else environ
    var = ENV_PREFIX + key.upper()
    if var in env:
        return f"environment variable {var}"
    return f"settings.NATSYNC[{key!r}]"


def shutdown_wait() -> float:
    """Seconds a web process waits at exit for a reconnect to send what it buffered.

    ``NATSYNC_SHUTDOWN_WAIT`` (environment, then settings); default
    :data:`natsync._web.SHUTDOWN_WAIT`.

    Raises:
        ValueError: for a value that is not a number >= 0.
    """
    from django.conf import settings

    raw: Any = os.environ.get("NATSYNC_SHUTDOWN_WAIT")
    where = "environment variable NATSYNC_SHUTDOWN_WAIT"
    if raw is None:
        raw = getattr(settings, "NATSYNC_SHUTDOWN_WAIT", _web.SHUTDOWN_WAIT)
        where = "settings.NATSYNC_SHUTDOWN_WAIT"
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise ValueError(f"{where} must be a number of seconds >= 0, not {raw!r}") from None
    if isinstance(raw, bool) or not value >= 0:
        raise ValueError(f"{where} must be a number of seconds >= 0, not {raw!r}")
    return value


def show_server() -> bool:
    """True when health answers and 503 bodies may name servers (``NATSYNC_SHOW_SERVER``)."""
    from django.conf import settings

    raw = os.environ.get("NATSYNC_SHOW_SERVER")
    if raw is not None:
        return raw.strip().lower() in _TRUE
    return bool(getattr(settings, "NATSYNC_SHOW_SERVER", False))


def _from_env(var: str, raw: str, key: str, default: Any) -> Any:
    text = raw.strip()
    if isinstance(default, bool):
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ValueError(f"environment variable {var} must be true or false, not {raw!r}")
    if key in _NONE_ALLOWED and text.lower() in ("", "none"):
        return None
    if isinstance(default, int) or key in _INT_OPTIONS:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"environment variable {var} must be an integer, not {raw!r}") from None
    if isinstance(default, float) or key in _FLOAT_OPTIONS:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"environment variable {var} must be a number, not {raw!r}") from None
    return raw


def get_client() -> Client:
    """Return the process's lazy client, built from settings on first call in the process.

    No I/O happens here: the first call on the client that needs the connection
    connects.  Each process (a forked gunicorn or Celery worker) gets its own, made in
    that process.  The client is drained when the process exits.

    Raises:
        TypeError, ValueError: for invalid settings (``manage.py check`` reports them too).
    """
    global _clients
    clients = _clients
    if clients is None:
        with _lock:
            if _clients is None:
                servers, options = settings_options()
                _clients = _web.ProcessClient(servers, options, shutdown_wait=shutdown_wait())
                for var, hint in unknown_env_vars():  # gunicorn runs no system checks
                    _web.log.warning(
                        "natsync: environment variable %s is not a natsync setting; %s", var, hint
                    )
            clients = _clients
    return clients.get()


def reset_client() -> None:
    """Close and forget the process's client; the next :func:`get_client` builds a new one.

    Called when the ``NATSYNC`` setting changes (``override_settings`` in tests).
    """
    global _clients
    with _lock:
        clients, _clients = _clients, None
    if clients is not None:
        clients.close()


def publish_on_commit(
    subject: str,
    payload: bytes | bytearray | memoryview | str = b"",
    headers: HeadersInput | None = None,
    *,
    durable: bool = False,
    msg_id: str | None = None,
    using: str | None = None,
) -> None:
    """Publish *payload* on *subject* once the current database transaction commits.

    Everything is checked now, inside the transaction: the subject, the headers and the
    size (against the server's last known ``max_payload``); a bad call raises here and
    nothing is scheduled or written.

    With ``durable=True`` the event is written to the outbox table
    (:class:`natsync.django.models.OutboxMessage`) in the current transaction: rolled
    back with it, committed with it (at once outside a transaction).  A relay then
    publishes it to JetStream with ``Nats-Msg-Id`` = *msg_id* (or an id made for the
    row), and deletes the row only once the stream acknowledged it: nothing committed is
    lost, whatever crashes when, and the stream's duplicate window drops re-publishes.
    The subject must be captured by a stream.  Needs ``"natsync.django"`` migrated.

    Without it the event is published with core NATS after the commit (at most once:
    buffered while reconnecting, lost if the process ends first); the callback is
    registered with ``robust=True``, so a failure is logged and the transaction's other
    on-commit callbacks still run.  Nothing is published when the transaction rolls
    back.

    Args:
        subject: the subject to publish on.
        payload: the message body (str is sent as UTF-8).
        headers: message headers, as for :meth:`natsync.Client.publish`; stored with a
            durable event and sent unchanged.
        durable: write the event to the outbox (see above).
        msg_id: the ``Nats-Msg-Id`` to publish with (a durable event gets one anyway).
        using: the database alias (default: "default").

    Raises:
        natsync.BadSubjectError: for an invalid subject.
        natsync.BadHeaderError: for an invalid header name or value.
        natsync.MaxPayloadError: when the message would be over ``max_payload``.
        TypeError: for a payload that is not bytes-like or str.
        ValueError: for a bad *msg_id*.
    """
    from django.db import DEFAULT_DB_ALIAS, transaction

    client = get_client()  # no I/O: the last known max_payload (1 MiB before a connect)
    data, pairs, mid = _outbox.check_event(
        subject, payload, headers, msg_id, client.max_payload, durable=durable
    )
    db = using or DEFAULT_DB_ALIAS
    if durable:
        from .models import OutboxMessage
        from .outbox import outbox_settings, wake_web_relay

        assert mid is not None
        OutboxMessage.objects.using(db).create(subject=subject, payload=data, headers=pairs, msg_id=mid)
        if outbox_settings().relay_in_web:
            transaction.on_commit(lambda: wake_web_relay(db), using=db, robust=True)
        return
    hdrs: Headers | None = None
    if pairs or mid is not None:
        hdrs = Headers([(k, v) for k, v in pairs or ()])
        if mid is not None:
            hdrs["Nats-Msg-Id"] = mid

    def send() -> None:
        get_client().publish(subject, data, headers=hdrs)

    transaction.on_commit(send, using=db, robust=True)
