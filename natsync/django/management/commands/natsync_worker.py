"""``python manage.py natsync_worker``: run the NATS handlers of every installed app."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError, CommandParser
from django.db import DEFAULT_DB_ALIAS, close_old_connections
from django.utils.module_loading import autodiscover_modules

from .... import _web
from ....errors import NatsError
from ....msg import Msg
from ... import get_client, handlers
from ..._bases import BaseCommand
from ...outbox import make_relay, outbox_settings, table_exists


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


class Command(BaseCommand):
    """Run the handlers declared in each app's ``nats_handlers.py`` until SIGTERM/SIGINT."""

    help = (
        "Run the NATS handlers declared with @subscribe/@consume in each installed app's "
        "nats_handlers.py. On SIGTERM or SIGINT it stops taking messages, lets the handlers "
        "finish what they have, sends what they published and exits 0."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        """``--handler NAME`` (repeatable), ``--threads N``, ``--drain-timeout S``, ``--list``."""
        parser.add_argument(
            "--handler",
            dest="names",
            action="append",
            default=[],
            metavar="NAME",
            help="Run only this handler (full name or its function name); repeatable.",
        )
        parser.add_argument(
            "--threads",
            type=_positive_int,
            default=1,
            metavar="N",
            help="Messages handled at once (default 1: one at a time, in order).",
        )
        parser.add_argument(
            "--drain-timeout",
            type=float,
            default=30.0,
            metavar="SECONDS",
            help="Seconds to finish in-flight messages on SIGTERM/SIGINT (default 30).",
        )
        parser.add_argument("--list", action="store_true", help="List the handlers and exit.")

    def _outbox_relay(self, names: list[str]) -> list[_web.Service]:
        """The outbox relay, when the outbox table exists and NATSYNC_OUTBOX allows it."""
        if names:
            return []  # --handler NAME runs only what it names
        try:
            settings = outbox_settings()
        except (TypeError, ValueError) as e:
            raise CommandError(str(e)) from None
        if not settings.relay_in_worker:
            return []
        try:
            exists = table_exists(DEFAULT_DB_ALIAS)
        except Exception as e:  # noqa: BLE001 - no database: no relay, and say why
            self.stderr.write(f"natsync worker: no outbox relay (database: {e})")
            return []
        if not exists:
            return []
        self.stdout.write("natsync worker: outbox relay on (database 'default')")
        return [make_relay(DEFAULT_DB_ALIAS, settings)]

    def handle(self, *args: Any, **options: Any) -> None:
        """Discover the handlers, run them, drain on a signal."""
        autodiscover_modules("nats_handlers")
        if options["list"]:
            for h in handlers:
                self.stdout.write(h.describe())
            return
        services = self._outbox_relay(options["names"])
        if not len(handlers) and not services:
            raise CommandError(
                "no NATS handlers found: declare them with @natsync.django.subscribe "
                "in an app's nats_handlers.py"
            )
        try:
            chosen = handlers.select(options["names"]) if len(handlers) else []
        except LookupError as e:
            raise CommandError(str(e.args[0])) from None
        if options["drain_timeout"] <= 0:
            raise CommandError("--drain-timeout must be > 0")

        def invoke(handler: _web.Handler, msg: Msg) -> Any:
            # As Django does around a request: a long-running worker must not keep a
            # database connection that the server has dropped or that is too old.
            close_old_connections()
            try:
                return handler.func(msg)
            finally:
                close_old_connections()

        worker = _web.Worker(
            get_client(),
            chosen,
            threads=options["threads"],
            drain_timeout=options["drain_timeout"],
            invoke=invoke,
            services=services,
        )
        for h in worker.handlers:
            self.stdout.write(f"natsync worker: handler {h.describe()}")
        self.stdout.flush()

        def ready() -> None:
            self.stdout.write("natsync worker: ready")
            self.stdout.flush()

        try:
            status = worker.run(ready=ready)
        except NatsError as e:
            raise CommandError(f"natsync worker: cannot start: {_web._describe(e)}", returncode=1) from None
        if status:
            raise CommandError("the NATS connection closed; see the log", returncode=status)
        self.stdout.write("natsync worker: stopped")
