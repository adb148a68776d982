"""The natsync Django app (``"natsync.django"`` in ``INSTALLED_APPS``)."""

from __future__ import annotations

from typing import Any

from django.core.signals import setting_changed

from ._bases import AppConfig


class NatsyncConfig(AppConfig):
    """Registers the system check and follows changes of the ``NATSYNC`` setting.

    ``ready()`` opens no connection: every management command works with NATS down.
    """

    name = "natsync.django"
    label = "natsync"
    verbose_name = "NATS (natsync)"
    default_auto_field = "django.db.models.AutoField"

    def ready(self) -> None:
        """Register the ``NATSYNC`` system check; nothing connects here."""
        from . import checks  # noqa: F401 - registers the check

        setting_changed.connect(_on_setting_changed, dispatch_uid="natsync.django.setting_changed")


def _on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting == "NATSYNC":
        from . import reset_client

        reset_client()
