"""Django's base classes as natsync.django uses them, with types a checker can see.

Django ships no type information (and natsync does not depend on django-stubs), so a
checker sees ``AppConfig``, ``BaseCommand``, ``models.Model`` and
``migrations.Migration`` as unknown, and every class of natsync.django deriving from them
as partially unknown.  Under ``TYPE_CHECKING`` this module declares small stand-ins with
the attributes and methods natsync uses (``Any`` where Django's own types would be
needed); at run time its names *are* Django's classes, so behaviour is Django's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, TextIO

__all__ = ["AppConfig", "BaseCommand", "Migration", "Model"]

if TYPE_CHECKING:

    class AppConfig:
        """Typed stand-in for :class:`django.apps.AppConfig`."""

        name: str
        label: str
        verbose_name: str
        default_auto_field: str

        def __init__(self, app_name: str, app_module: Any) -> None: ...

        def ready(self) -> None:
            """Called once the app registry is ready."""

    class BaseCommand:
        """Typed stand-in for :class:`django.core.management.base.BaseCommand`."""

        help: str
        stdout: Any
        stderr: Any
        style: Any

        def __init__(
            self,
            stdout: TextIO | None = None,
            stderr: TextIO | None = None,
            no_color: bool = False,
            force_color: bool = False,
        ) -> None: ...

        def add_arguments(self, parser: Any) -> None:
            """Add the command's arguments to *parser* (an argparse parser)."""

        def handle(self, *args: Any, **options: Any) -> Any:
            """Run the command."""

    class Model:
        """Typed stand-in for :class:`django.db.models.Model`."""

        objects: ClassVar[Any]
        pk: Any

        def __init__(self, *args: Any, **kwargs: Any) -> None: ...

        def save(self, *args: Any, **kwargs: Any) -> None:
            """Save the row."""

        def delete(self, *args: Any, **kwargs: Any) -> Any:
            """Delete the row."""

    class Migration:
        """Typed stand-in for :class:`django.db.migrations.Migration`."""

        initial: bool | None
        dependencies: list[tuple[str, str]]
        operations: list[Any]

        def __init__(self, name: str, app_label: str) -> None: ...

else:
    from django.apps import AppConfig
    from django.core.management.base import BaseCommand
    from django.db.migrations import Migration
    from django.db.models import Model
