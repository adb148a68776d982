"""The outbox table."""

from typing import Any

import django.utils.timezone
from django.db import migrations, models

from natsync.django._bases import Migration as _Migration


class Migration(_Migration):
    """Create the ``natsync_outbox`` table (:class:`natsync.django.models.OutboxMessage`)."""

    initial: bool | None = True

    dependencies: list[tuple[str, str]] = []

    operations: list[Any] = [
        migrations.CreateModel(
            name="OutboxMessage",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("subject", models.CharField(max_length=512)),
                ("payload", models.BinaryField(default=b"")),
                ("headers", models.JSONField(blank=True, null=True)),
                ("msg_id", models.CharField(max_length=200)),
                ("created", models.DateTimeField(default=django.utils.timezone.now)),
                ("available_at", models.FloatField(default=0.0)),
                ("attempts", models.IntegerField(default=0)),
                ("last_error", models.TextField(blank=True, default="")),
                ("failed", models.BooleanField(default=False)),
            ],
            options={
                "verbose_name": "outbox message",
                "db_table": "natsync_outbox",
                "indexes": [
                    models.Index(fields=["failed", "available_at", "id"], name="natsync_outbox_due"),
                    models.Index(fields=["subject", "id"], name="natsync_outbox_subject"),
                ],
            },
        ),
    ]
