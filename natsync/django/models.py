"""The outbox table of ``natsync.django`` (``python manage.py migrate natsync`` creates it)."""

from __future__ import annotations

import datetime
from typing import Any, ClassVar

from django.db import models
from django.utils import timezone

from .._outbox import MAX_MSG_ID, MAX_SUBJECT
from ._bases import Model


class OutboxMessage(Model):
    """One event waiting to be published to JetStream (``publish_on_commit(..., durable=True)``).

    A row is written in the transaction of the change it announces and deleted by a
    relay once JetStream acknowledged it.  Fields: ``subject``, ``payload``,
    ``headers`` (``[name, value]`` pairs), ``msg_id`` (its ``Nats-Msg-Id``),
    ``created``, ``available_at`` (epoch seconds: when a relay may take it next),
    ``attempts``, ``last_error`` and ``failed`` (refused for good; not retried until an
    operator says so with ``natsync_outbox retry``).
    """

    id: int = models.BigAutoField(primary_key=True)
    subject: str = models.CharField(max_length=MAX_SUBJECT)
    payload: bytes = models.BinaryField(default=b"")
    headers: list[list[str]] | None = models.JSONField(null=True, blank=True)
    msg_id: str = models.CharField(max_length=MAX_MSG_ID)
    created: datetime.datetime = models.DateTimeField(default=timezone.now)
    available_at: float = models.FloatField(default=0.0)
    attempts: int = models.IntegerField(default=0)
    last_error: str = models.TextField(blank=True, default="")
    failed: bool = models.BooleanField(default=False)

    class Meta:
        """The table's name and indexes."""

        app_label: ClassVar[str] = "natsync"
        db_table: ClassVar[str] = "natsync_outbox"
        verbose_name: ClassVar[str] = "outbox message"
        indexes: ClassVar[list[Any]] = [
            models.Index(fields=["failed", "available_at", "id"], name="natsync_outbox_due"),
            models.Index(fields=["subject", "id"], name="natsync_outbox_subject"),
        ]

    def __str__(self) -> str:
        return f"outbox #{self.id} on {self.subject}"
