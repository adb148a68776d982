"""``python manage.py natsync_outbox``: run the outbox relay, show the outbox, retry failed rows."""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from typing import Any

from django.core.management.base import CommandError, CommandParser
from django.db import DEFAULT_DB_ALIAS

from .... import _web
from ... import get_client
from ..._bases import BaseCommand
from ...outbox import DjangoOutboxStorage, make_relay, outbox_settings, table_exists


class Command(BaseCommand):
    """``relay [--once]``, ``status [--json]``, ``retry [--all | ID ...]``."""

    help = (
        "The natsync outbox: 'relay' publishes committed outbox rows to JetStream until "
        "SIGTERM/SIGINT (--once: until the outbox is empty); 'status' prints its depth, the "
        "age of the oldest row and the failed rows; 'retry' puts failed rows back in the queue."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        """The sub-commands and their options."""
        parser.add_argument("action", choices=["relay", "status", "retry"])
        parser.add_argument("ids", nargs="*", type=int, metavar="ID", help="retry: the failed rows to retry.")
        parser.add_argument("--once", action="store_true", help="relay: publish what is there, then exit.")
        parser.add_argument("--json", action="store_true", help="status: print JSON.")
        parser.add_argument("--all", action="store_true", help="retry: every failed row.")
        parser.add_argument(
            "--database", default=DEFAULT_DB_ALIAS, help="The database alias (default: default)."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        """Run the chosen action."""
        using = options["database"]
        try:
            settings = outbox_settings()
        except (TypeError, ValueError) as e:
            raise CommandError(str(e)) from None
        if not table_exists(using):
            raise CommandError(
                f"the outbox table does not exist on database {using!r}: run 'manage.py migrate natsync'"
            )
        action = options["action"]
        storage = DjangoOutboxStorage(using)
        if action == "status":
            st = storage.status(time.time())
            if options["json"]:
                self.stdout.write(json.dumps(st.as_dict()))
                return
            age = "-" if st.oldest_age is None else f"{st.oldest_age:.1f} s"
            self.stdout.write(f"depth: {st.depth}\noldest: {age}\nfailed: {st.failed}")
            for row in st.failed_rows:
                self.stdout.write(
                    f"  #{row['id']} {row['subject']} ({row['attempts']} attempts): {row['last_error']}"
                )
            return
        if action == "retry":
            if not options["all"] and not options["ids"]:
                raise CommandError("name the failed rows to retry (IDs), or --all")
            n = storage.retry_failed(None if options["all"] else options["ids"])
            self.stdout.write(f"{n} row(s) queued again")
            return
        if not logging.getLogger().handlers and not logging.getLogger("natsync").handlers:
            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        relay = make_relay(using, settings)
        client = get_client()
        if options["once"]:
            try:
                n = relay.run_until_empty(timeout=max(30.0, settings.lease * 2))
            finally:
                _web.close_quietly(client, 5.0)
            st = storage.status(time.time())
            self.stdout.write(f"published {n}; depth {st.depth}, failed {st.failed}")
            if st.depth:
                raise CommandError(f"{st.depth} row(s) could not be published yet (see the log)")
            return
        stop = threading.Event()
        previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}
        self.stdout.write("natsync outbox relay: ready")
        self.stdout.flush()
        try:
            relay.run(stop)
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
            _web.close_quietly(client, 5.0)
        self.stdout.write(f"natsync outbox relay: stopped after {relay.published} message(s)")
