"""Flask extension: a per-process NATS client, message handlers and a worker command.

::

    from flask import Flask
    from natsync.flask import NATS

    nats = NATS()

    def create_app() -> Flask:
        app = Flask(__name__)
        app.config["NATS_URL"] = "nats://127.0.0.1:4222"
        nats.init_app(app)
        app.add_url_rule("/health/nats", view_func=nats.health_view)
        return app

    @nats.subscribe("orders.created", queue="billing")
    def bill(msg):
        ...                                      # runs in `flask natsync worker` only

    # in a view:
    nats.client.publish("orders.created", b"...")

Configuration keys: ``NATS_URL`` (a URL, a comma-separated str or a list), ``NATS_TOKEN``,
``NATS_OPTIONS`` (a dict of any other :func:`natsync.connect` option),
``NATS_ERROR_RESPONSES`` (default True: an error meaning NATS cannot serve the request
now -- not connected, no responders, a timeout -- escaping a view becomes a 503 JSON
response ``{"error": "NATS unavailable", "detail": ...}`` instead of a 500 page),
``NATS_SHOW_SERVER`` (default False: 503 bodies and the health view name no server),
``NATS_SHUTDOWN_WAIT`` (seconds a process that exits while reconnecting waits for the
connection to send what it buffered; default 5) and ``NATS_OUTBOX`` (the outbox relay's
settings, see :mod:`natsync._outbox`).  Other ``NATS_*`` keys get a warning.

``ext.client`` is the app's lazy client (``natsync.connect(..., lazy=True)``): created by
:meth:`NATS.init_app` without any I/O, connected by the first call that needs it, in the
process that makes the call, so it is safe under gunicorn's ``--preload`` and any fork.
Unless configured, it retries the first connect in the background and reconnects
forever (``retry_on_failed_connect=True``, ``max_reconnect_attempts=-1``). It is drained
when the process exits.

This module imports Flask; :mod:`natsync` itself never does.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import click
from flask import Flask, current_app, jsonify
from flask.cli import AppGroup
from flask.typing import ResponseReturnValue

from . import _outbox, _web
from .client import Client
from .errors import NatsError
from .headers import HeadersInput
from .msg import Msg

__all__ = ["EXTENSION_KEY", "NATS", "PermanentError"]

EXTENSION_KEY = "natsync"
log: logging.Logger = logging.getLogger("natsync")
PermanentError = _web.PermanentError


@dataclass
class _AppState:
    """What one app holds in ``app.extensions["natsync"]``: the extension and the app's
    per-process client (``.client``, created on first use in each process)."""

    ext: NATS
    clients: _web.ProcessClient

    @property
    def client(self) -> Client:
        """This process's lazy client for the app (created, without I/O, on first use)."""
        return self.clients.get()


class NATS:
    """The natsync Flask extension.

    ``NATS(app)`` binds to one app at once; ``NATS()`` then :meth:`init_app` for app
    factories.  One extension object may be initialised on several apps: each app has
    its own client, built from its own config; :attr:`client` is the one of the current
    app (or of the app given to the constructor).
    """

    def __init__(self, app: Flask | None = None) -> None:
        self._app = app
        self._registry = _web.HandlerRegistry()
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Configure *app*: build its lazy client and add the ``natsync`` CLI group.

        Raises:
            TypeError: for an unknown option in ``NATS_OPTIONS`` or a config value of the
                wrong type.
            ValueError: for an invalid option value or URL (no connection is attempted).
        """
        servers, options = _options_from_config(app.config)
        options.setdefault("name", app.import_name)
        wait = app.config.get("NATS_SHUTDOWN_WAIT", _web.SHUTDOWN_WAIT)
        if isinstance(wait, bool) or not isinstance(wait, (int, float)) or wait < 0:
            raise ValueError(f"NATS_SHUTDOWN_WAIT must be a number of seconds >= 0, not {wait!r}")
        clients = _web.ProcessClient(servers, options, shutdown_wait=wait)  # checks the options now
        _outbox.OutboxSettings.from_mapping(app.config.get("NATS_OUTBOX"), "NATS_OUTBOX")
        for key, hint in _unknown_config_keys(app.config):
            log.warning("natsync: config key %s is not a natsync setting and is ignored; %s", key, hint)
        app.extensions[EXTENSION_KEY] = _AppState(self, clients)
        if app.config.get("NATS_ERROR_RESPONSES", True):
            for exc in _web.UNAVAILABLE_ERRORS:
                app.register_error_handler(exc, _nats_error_response)
        app.cli.add_command(_make_cli(self))

    # --- the client ---

    def _state(self) -> _AppState:
        app = self._app if self._app is not None else current_app
        state = app.extensions.get(EXTENSION_KEY)
        if not isinstance(state, _AppState):
            raise RuntimeError(
                f"natsync is not initialised on app {app.name!r}: call NATS(app) or nats.init_app(app)"
            )
        return state

    @property
    def client(self) -> Client:
        """The current app's lazy client (the app given to ``NATS(app)``, else ``current_app``).

        Raises:
            RuntimeError: outside an app context (for an extension made without an app),
                or when the app was not initialised with this extension.
        """
        return self._state().client

    # --- handlers ---

    def subscribe(
        self, subject: str, queue: str | None = None, *, name: str | None = None
    ) -> Callable[[Callable[[Msg], Any]], Callable[[Msg], Any]]:
        """Decorator: handle messages on *subject* in ``flask natsync worker``.

        Handlers never run in web processes.  A handler runs inside an app context; for
        a request (a message with a reply subject) its return value, when not None, is
        the reply.  See :meth:`natsync._web.HandlerRegistry.subscribe`.
        """
        return self._registry.subscribe(subject, queue, name=name)

    def consume(
        self,
        *,
        stream: str,
        durable: str,
        subject: str | None = None,
        permanent: type[BaseException] | Iterable[type[BaseException]] = (),
        backoff: Sequence[float] = _web._DEFAULT_BACKOFF,
        batch: int = 10,
        name: str | None = None,
    ) -> Callable[[Callable[[Msg], Any]], Callable[[Msg], Any]]:
        """Decorator: handle a JetStream pull consumer's messages in the worker.

        ``ack`` on return, ``nak`` with *backoff* on an exception, ``term`` on
        :class:`PermanentError` or one of *permanent*.  See
        :meth:`natsync._web.HandlerRegistry.consume`.
        """
        return self._registry.consume(
            stream=stream,
            durable=durable,
            subject=subject,
            permanent=permanent,
            backoff=backoff,
            batch=batch,
            name=name,
        )

    @property
    def handlers(self) -> list[_web.Handler]:
        """The handlers declared on this extension."""
        return list(self._registry)

    def make_worker(
        self,
        app: Flask,
        names: Sequence[str] = (),
        *,
        threads: int = 1,
        drain_timeout: float = 30.0,
        services: Sequence[_web.Service] = (),
    ) -> _web.Worker:
        """A :class:`natsync._web.Worker` running the handlers *names* (all by default) for *app*.

        Raises:
            LookupError: for an unknown handler name.
            ValueError: when there is no handler, or for a bad *threads*.
        """
        handlers = self._registry.select(names) if len(self._registry) or names else []
        state = app.extensions.get(EXTENSION_KEY)
        if not isinstance(state, _AppState):
            raise RuntimeError(f"natsync is not initialised on app {app.name!r}")

        def invoke(handler: _web.Handler, msg: Msg) -> Any:
            with app.app_context():
                return handler.func(msg)

        return _web.Worker(
            state.client,
            handlers,
            threads=threads,
            drain_timeout=drain_timeout,
            invoke=invoke,
            services=services,
        )

    # --- the outbox (Flask-SQLAlchemy) ---

    def publish_on_commit(
        self,
        subject: str,
        payload: bytes | bytearray | memoryview | str = b"",
        headers: HeadersInput | None = None,
        *,
        msg_id: str | None = None,
    ) -> None:
        """Write an event to the outbox in the transaction of Flask-SQLAlchemy's ``db.session``.

        It is committed (or rolled back) with the session; ``flask natsync worker``
        (or ``flask natsync outbox relay``) publishes it to JetStream exactly once.  The
        table is created by ``natsync.sqlalchemy.create_outbox_table(db.engine)``.  See
        :func:`natsync.sqlalchemy.publish_on_commit` (the size is checked against this
        app's client's last known ``max_payload``).

        Raises:
            RuntimeError: when Flask-SQLAlchemy is not initialised on the app.
            natsync.BadSubjectError, natsync.BadHeaderError, natsync.MaxPayloadError,
            TypeError, ValueError: for a bad event; nothing is written.
        """
        from .sqlalchemy import publish_on_commit

        publish_on_commit(
            _flask_sqlalchemy(current_app).session,
            subject,
            payload,
            headers,
            msg_id=msg_id,
            max_payload=self.client.max_payload,
        )

    def make_relay(self, app: Flask) -> _outbox.Relay:
        """The outbox relay of *app* (its Flask-SQLAlchemy engine, its client, ``NATS_OUTBOX``).

        Raises:
            RuntimeError: when Flask-SQLAlchemy is not initialised on the app.
            TypeError, ValueError: for a bad ``NATS_OUTBOX``.
        """
        from .sqlalchemy import make_relay

        state = app.extensions.get(EXTENSION_KEY)
        if not isinstance(state, _AppState):
            raise RuntimeError(f"natsync is not initialised on app {app.name!r}")
        with app.app_context():
            engine = _flask_sqlalchemy(app).engine
        settings = _outbox.OutboxSettings.from_mapping(app.config.get("NATS_OUTBOX"), "NATS_OUTBOX")
        return make_relay(engine, state.clients.get, settings)

    # --- health ---

    def health_view(self) -> ResponseReturnValue:
        """A view: the client's health as JSON (``status``, ``rtt_ms``, ``server``,
        ``last_error``, ``outbox``).

        200 when connected, 503 otherwise.  Route it with
        ``app.add_url_rule("/health/nats", view_func=nats.health_view)``.  ``server`` is
        None unless ``NATS_SHOW_SERVER`` is true; ``outbox`` holds the outbox's
        ``depth``, ``oldest_age`` and ``failed`` when Flask-SQLAlchemy and the outbox table
        are there, else None.
        """
        app = current_app._get_current_object()  # type: ignore[attr-defined]
        body, code = _web.health(self.client, show_server=bool(app.config.get("NATS_SHOW_SERVER", False)))
        body["outbox"] = None
        try:
            if _outbox_table_exists(app):
                body["outbox"] = self.make_relay(app).storage.status(time.time()).as_dict(rows=False)
        except Exception:  # noqa: BLE001 - a database problem must not turn the NATS probe into a 500
            current_app.logger.warning("natsync: outbox numbers unavailable", exc_info=True)
        return jsonify(body), code


#: The config keys of the extension.
CONFIG_KEYS = (
    "NATS_URL",
    "NATS_TOKEN",
    "NATS_OPTIONS",
    "NATS_ERROR_RESPONSES",
    "NATS_OUTBOX",
    "NATS_SHUTDOWN_WAIT",
    "NATS_SHOW_SERVER",
)


def _unknown_config_keys(config: Any) -> list[tuple[str, str]]:
    return [
        (key, _outbox.did_you_mean(key, set(CONFIG_KEYS)).lstrip("; "))
        for key in sorted(config)
        if isinstance(key, str) and key.startswith("NATS_") and key not in CONFIG_KEYS
    ]


def _flask_sqlalchemy(app: Flask) -> Any:
    db = app.extensions.get("sqlalchemy")
    if db is None:
        raise RuntimeError(
            f"the outbox needs Flask-SQLAlchemy initialised on app {app.name!r} (db = SQLAlchemy(app)); "
            "other SQLAlchemy apps use natsync.sqlalchemy.publish_on_commit(session, ...)"
        )
    return db


def _outbox_table_exists(app: Flask) -> bool:
    if app.extensions.get("sqlalchemy") is None:
        return False
    from sqlalchemy import inspect as sa_inspect

    with app.app_context():
        return bool(sa_inspect(_flask_sqlalchemy(app).engine).has_table("natsync_outbox"))


def _nats_error_response(e: NatsError) -> ResponseReturnValue:
    current_app.logger.warning("NATS unavailable while handling a request: %s", _web._describe(e))
    return jsonify(_web.unavailable_body(e, bool(current_app.config.get("NATS_SHOW_SERVER", False)))), 503


def _options_from_config(config: Any) -> tuple[str | list[str] | None, dict[str, Any]]:
    servers = config.get("NATS_URL")
    if servers is not None and not isinstance(servers, (str, list, tuple)):
        raise TypeError(f"NATS_URL must be a str or a list of str, not {type(servers).__name__}")
    if isinstance(servers, tuple):
        servers = list(servers)
    raw = config.get("NATS_OPTIONS") or {}
    if not isinstance(raw, dict):
        raise TypeError(f"NATS_OPTIONS must be a dict of natsync.connect() options, not {type(raw).__name__}")
    options = dict(raw)
    if "servers" in options:
        if servers is not None:
            raise ValueError("set the servers in NATS_URL or in NATS_OPTIONS['servers'], not both")
        servers = options.pop("servers")
    token = config.get("NATS_TOKEN")
    if token is not None:
        if "token" in options:
            raise ValueError("set the token in NATS_TOKEN or in NATS_OPTIONS['token'], not both")
        options["token"] = token
    if "lazy" in options:
        raise ValueError("NATS_OPTIONS['lazy'] is not an option here: the extension's client is always lazy")
    return servers, options


def _make_cli(ext: NATS) -> click.Group:
    group = AppGroup("natsync", help="NATS (natsync) commands.")

    @group.command("worker")
    @click.option(
        "--handler", "names", multiple=True, metavar="NAME", help="Run only this handler (repeatable)."
    )
    @click.option(
        "--threads",
        type=click.IntRange(min=1),
        default=1,
        show_default=True,
        help="Messages handled at once.",
    )
    @click.option(
        "--drain-timeout",
        type=click.FloatRange(min=0, min_open=True),
        default=30.0,
        show_default=True,
        help="Seconds to finish in-flight messages on SIGTERM/SIGINT.",
    )
    def worker(names: tuple[str, ...], threads: int, drain_timeout: float) -> None:
        """Run the app's NATS handlers until SIGTERM or SIGINT, then drain and exit 0."""
        app = current_app._get_current_object()  # type: ignore[attr-defined]
        if not logging.getLogger().handlers:
            # `flask` configures no logging; a worker's handler failures must be seen.
            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        services: list[_web.Service] = []
        if not names and _outbox_table_exists(app):
            try:
                relay = ext.make_relay(app)
            except (TypeError, ValueError) as e:
                raise click.ClickException(str(e)) from None
            if relay.settings.relay_in_worker:
                services.append(relay)
                click.echo("natsync worker: outbox relay on")
        if not ext.handlers and not services:
            raise click.ClickException(
                "no NATS handlers are declared: decorate functions with @nats.subscribe(...)"
            )
        try:
            w = ext.make_worker(app, names, threads=threads, drain_timeout=drain_timeout, services=services)
        except LookupError as e:
            raise click.UsageError(str(e.args[0])) from None
        described = ", ".join(h.describe() for h in w.handlers)
        click.echo(f"natsync worker: {len(w.handlers)} handler(s): {described}")
        try:
            status = w.run(ready=lambda: click.echo("natsync worker: ready", err=False))
        except NatsError as e:
            raise click.ClickException(f"natsync worker: cannot start: {_web._describe(e)}") from None
        if status:
            raise SystemExit(status)
        click.echo("natsync worker: stopped")

    @group.group("outbox")
    def outbox() -> None:
        """The outbox (Flask-SQLAlchemy): relay, status, retry."""

    @outbox.command("relay")
    @click.option("--once", is_flag=True, help="Publish what is there, then exit.")
    def outbox_relay(once: bool) -> None:
        """Publish committed outbox rows to JetStream until SIGTERM/SIGINT (or once)."""
        app = current_app._get_current_object()  # type: ignore[attr-defined]
        relay = _relay_or_fail(ext, app)
        client = ext.client
        try:
            if once:
                n = relay.run_until_empty(timeout=max(30.0, relay.settings.lease * 2))
                st = relay.storage.status(time.time())
                click.echo(f"published {n}; depth {st.depth}, failed {st.failed}")
                if st.depth:
                    raise click.ClickException(f"{st.depth} row(s) could not be published yet (see the log)")
                return
            stop = threading.Event()
            previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}
            click.echo("natsync outbox relay: ready")
            try:
                relay.run(stop)
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
            click.echo(f"natsync outbox relay: stopped after {relay.published} message(s)")
        finally:
            _web.close_quietly(client, 5.0)

    @outbox.command("status")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    def outbox_status(as_json: bool) -> None:
        """Print the outbox's depth, the age of its oldest row and its failed rows."""
        app = current_app._get_current_object()  # type: ignore[attr-defined]
        st = _relay_or_fail(ext, app).storage.status(time.time())
        if as_json:
            click.echo(json.dumps(st.as_dict()))
            return
        age = "-" if st.oldest_age is None else f"{st.oldest_age:.1f} s"
        click.echo(f"depth: {st.depth}\noldest: {age}\nfailed: {st.failed}")
        for row in st.failed_rows:
            click.echo(f"  #{row['id']} {row['subject']} ({row['attempts']} attempts): {row['last_error']}")

    @outbox.command("retry")
    @click.argument("ids", nargs=-1, type=int)
    @click.option("--all", "all_", is_flag=True, help="Every failed row.")
    def outbox_retry(ids: tuple[int, ...], all_: bool) -> None:
        """Put failed outbox rows back in the queue."""
        if not ids and not all_:
            raise click.UsageError("name the failed rows to retry (IDS), or --all")
        app = current_app._get_current_object()  # type: ignore[attr-defined]
        storage = _relay_or_fail(ext, app).storage
        n = storage.retry_failed(None if all_ else list(ids))  # type: ignore[attr-defined]
        click.echo(f"{n} row(s) queued again")

    return group


def _relay_or_fail(ext: NATS, app: Flask) -> _outbox.Relay:
    try:
        relay = ext.make_relay(app)
    except (RuntimeError, TypeError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    if not _outbox_table_exists(app):
        raise click.ClickException(
            "the outbox table does not exist: call natsync.sqlalchemy.create_outbox_table(db.engine)"
        )
    return relay
