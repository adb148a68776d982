"""``manage.py check`` validation of the ``NATSYNC`` setting and ``NATSYNC_*`` variables.

The check builds the lazy client the settings describe, which validates every option
exactly as :func:`natsync.connect` does, without opening a connection, and closes it.
"""

from __future__ import annotations

from typing import Any

from django.core.checks import Error, register

from .. import _web


@register("natsync")
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    """Report what is wrong with ``settings.NATSYNC`` (ids ``natsync.E001``-``E003``)."""
    from . import settings_options

    try:
        servers, options = settings_options()
    except TypeError as e:
        return [
            Error(str(e), hint="See the natsync README, section 'Web apps and workers'.", id="natsync.E001")
        ]
    except ValueError as e:
        return [Error(str(e), hint="Fix or unset the environment variable.", id="natsync.E002")]
    try:
        _web.check_options(servers, options)
    except (TypeError, ValueError) as e:
        return [
            Error(
                f"settings.NATSYNC: {e}",
                hint="Fix the option in NATSYNC (or its NATSYNC_* variable).",
                id="natsync.E003",
            )
        ]
    return []
