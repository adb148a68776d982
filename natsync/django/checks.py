"""``manage.py check`` validation of the ``NATSYNC`` setting and ``NATSYNC_*`` variables.

The check builds the lazy client the settings describe, which validates every option
exactly as :func:`natsync.connect` does, without opening a connection, and closes it.
"""

from __future__ import annotations

from typing import Any

from django.core.checks import CheckMessage, Error, Warning, register

from .. import _web


@register("natsync")
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Report what is wrong with the natsync settings (``natsync.E001``-``E004``, ``W001``).

    E001: ``settings.NATSYNC`` is not a dict or has an unknown key; E002: a ``NATSYNC_*``
    variable does not fit its option; E003: an option value is invalid (the message
    names where it came from: the variable or the setting); E004: ``NATSYNC_OUTBOX``,
    ``NATSYNC_SHUTDOWN_WAIT`` is invalid; W001: a ``NATSYNC_*`` variable configures
    nothing (with a "did you mean").
    """
    from . import settings_options, shutdown_wait, source_of, unknown_env_vars
    from .outbox import outbox_settings

    found: list[CheckMessage] = [
        Warning(
            f"environment variable {var} is not a natsync setting and is ignored; {hint}",
            hint="Fix its name or unset it (or silence natsync.W001).",
            id="natsync.W001",
        )
        for var, hint in unknown_env_vars()
    ]
    try:
        outbox_settings()
        shutdown_wait()
    except (TypeError, ValueError) as e:
        found.append(Error(str(e), hint="See the natsync docs, page 'outbox'.", id="natsync.E004"))
    try:
        servers, options = settings_options()
    except TypeError as e:
        found.append(
            Error(str(e), hint="See the natsync docs, section 'Web apps and workers'.", id="natsync.E001")
        )
        return found
    except ValueError as e:
        found.append(Error(str(e), hint="Fix or unset the environment variable.", id="natsync.E002"))
        return found
    try:
        _web.check_options(servers, options)
    except (TypeError, ValueError) as e:
        where = _blame(servers, options, source_of)
        found.append(
            Error(
                f"{where}: {e}",
                hint="Fix the value where it is set (the environment wins over settings.NATSYNC).",
                id="natsync.E003",
            )
        )
    return found


def _blame(servers: Any, options: dict[str, Any], source_of: Any) -> str:
    """The source of the first value that is invalid on its own."""
    try:
        _web.check_options(servers, {})
    except (TypeError, ValueError):
        return str(source_of("servers"))
    for key, value in options.items():
        try:
            _web.check_options(None, {key: value})
        except (TypeError, ValueError):
            return str(source_of(key))
    return "settings.NATSYNC and NATSYNC_* variables"
