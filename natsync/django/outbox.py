"""The Django storage of the outbox, its settings and the per-process relay of web processes.

See :mod:`natsync._outbox` for how the relay works; this module holds the SQL (through
the ORM) for :class:`natsync.django.models.OutboxMessage`.
"""

from __future__ import annotations

import atexit
import os
import threading
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from django.db import connections, transaction
from django.db.models import F, Min
from django.utils import timezone

from .. import _outbox
from .._outbox import OutboxRow, OutboxSettings, OutboxStatus, Relay

__all__ = ["DjangoOutboxStorage", "outbox_settings", "make_relay", "table_exists", "wake_web_relay"]

_FIELDS = ("id", "subject", "payload", "headers", "msg_id", "attempts")


def outbox_settings() -> OutboxSettings:
    """The relay settings from ``settings.NATSYNC_OUTBOX`` (a dict; every key optional).

    Raises:
        TypeError, ValueError: for an unknown key or a bad value.
    """
    from django.conf import settings

    return OutboxSettings.from_mapping(getattr(settings, "NATSYNC_OUTBOX", None), "settings.NATSYNC_OUTBOX")


class DjangoOutboxStorage:
    """The outbox table through the Django ORM, on the database alias *using*."""

    def __init__(self, using: str = "default") -> None:
        self.using = using

    def _rows(self) -> Any:
        from .models import OutboxMessage

        return OutboxMessage.objects.using(self.using)

    def claim(self, limit: int, lease: float, now: float) -> list[OutboxRow]:
        """See :meth:`natsync._outbox.OutboxStorage.claim`."""
        conn = connections[self.using]
        with transaction.atomic(using=self.using):
            base = self._rows()
            if conn.features.has_select_for_update_skip_locked:
                qs = base.select_for_update(skip_locked=True)
            else:
                # No row locks (SQLite): a write first takes the database's write lock for
                # this short transaction, so relays claim one after the other.
                base.filter(pk=-1).update(attempts=0)
                qs = base
            raw = list(
                qs.filter(failed=False, available_at__lte=now).order_by("id").values_list(*_FIELDS)[:limit]
            )
            if not raw:
                return []
            rows = [OutboxRow(r[0], r[1], bytes(r[2]), r[3], r[4], r[5] + 1) for r in raw]
            ids = [r.id for r in rows]
            earliest = dict(
                base.filter(failed=False, subject__in={r.subject for r in rows})
                .exclude(id__in=ids)
                .order_by()
                .values("subject")
                .annotate(first=Min("id"))
                .values_list("subject", "first")
            )
            ok = _outbox.earliest_per_subject(rows, earliest)
            if ok:
                base.filter(id__in=[r.id for r in ok]).update(
                    available_at=now + lease, attempts=F("attempts") + 1
                )
            return ok

    def settle(
        self,
        done: Sequence[int],
        retry: Sequence[tuple[int, str, float]],
        failed: Sequence[tuple[int, str]],
    ) -> None:
        """See :meth:`natsync._outbox.OutboxStorage.settle`."""
        import time

        now = time.time()
        with transaction.atomic(using=self.using):
            base = self._rows()
            if done:
                base.filter(id__in=list(done)).delete()
            for row_id, error, delay in retry:
                base.filter(id=row_id).update(last_error=error[:2000], available_at=now + delay)
            for row_id, error in failed:
                base.filter(id=row_id).update(last_error=error[:2000], failed=True)

    def status(self, now: float) -> OutboxStatus:
        """See :meth:`natsync._outbox.OutboxStorage.status`."""
        base = self._rows()
        waiting = base.filter(failed=False)
        depth = waiting.count()
        oldest = waiting.aggregate(oldest=Min("created"))["oldest"]
        age = None if oldest is None else max(0.0, (timezone.now() - oldest) / timedelta(seconds=1))
        failed_qs = base.filter(failed=True)
        rows = [
            {"id": i, "subject": s, "attempts": a, "last_error": e, "created": c.isoformat()}
            for i, s, a, e, c in failed_qs.order_by("id").values_list(
                "id", "subject", "attempts", "last_error", "created"
            )[:20]
        ]
        return OutboxStatus(depth, age, failed_qs.count(), rows)

    def retry_failed(self, ids: Sequence[int] | None = None) -> int:
        """Put failed rows (all, or those in *ids*) back in the queue; return how many."""
        qs = self._rows().filter(failed=True)
        if ids:
            qs = qs.filter(id__in=list(ids))
        return int(qs.update(failed=False, available_at=0.0, attempts=0))

    def release(self) -> None:
        """Close this thread's connection when it is broken or past ``CONN_MAX_AGE``."""
        conn = connections[self.using]
        if not conn.in_atomic_block:
            conn.close_if_unusable_or_obsolete()


def table_exists(using: str = "default") -> bool:
    """True when the outbox table was migrated on *using*."""
    conn = connections[using]
    with conn.cursor() as cursor:
        return "natsync_outbox" in conn.introspection.table_names(cursor)


def make_relay(using: str = "default", settings: OutboxSettings | None = None) -> Relay:
    """A relay on the database alias *using*, publishing with the process's client."""
    from . import get_client

    return Relay(
        DjangoOutboxStorage(using), get_client, settings or outbox_settings(), name=f"natsync-outbox-{using}"
    )


# --- the relay of a web process (NATSYNC_OUTBOX["relay_in_web"]) ------------------------

_web_lock = threading.Lock()  # guards _web_relays and _web_pid
_web_relays: dict[str, Relay] = {}
_web_pid = 0
_exit_registered = False


def wake_web_relay(using: str) -> None:
    """Start (once per process and database) and wake this process's relay thread."""
    global _web_pid, _exit_registered
    with _web_lock:
        if _web_pid != os.getpid():  # a forked child: the parent's threads are not here
            _web_relays.clear()
            _web_pid = os.getpid()
        relay = _web_relays.get(using)
        if relay is None:
            relay = _web_relays[using] = make_relay(using)
            relay.start()
            if not _exit_registered:
                atexit.register(stop_web_relays)
                _exit_registered = True
    relay.wake()


def stop_web_relays(timeout: float = 5.0) -> None:
    """Stop this process's relay threads (at exit, and when settings change)."""
    with _web_lock:
        relays = list(_web_relays.values()) if _web_pid == os.getpid() else []
        _web_relays.clear()
    for relay in relays:
        relay.stop(timeout)
