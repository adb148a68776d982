"""Views of the natsync Django app."""

from __future__ import annotations

import time
from typing import Any

from django.db import DatabaseError
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_safe

from .. import _web
from . import get_client, show_server
from .outbox import DjangoOutboxStorage, table_exists


@require_safe
def health(request: HttpRequest) -> JsonResponse:
    """The client's health as JSON: ``status``, ``rtt_ms``, ``server``, ``last_error``, ``outbox``.

    200 when connected (a round trip to the server succeeded), 503 otherwise.  Route it
    with ``path("health/nats", natsync.django.views.health)``.  ``server`` is None unless
    ``NATSYNC_SHOW_SERVER`` is true.  ``outbox`` holds the outbox's ``depth``,
    ``oldest_age`` (seconds) and ``failed`` count when its table exists, else None.
    """
    body, code = _web.health(get_client(), show_server=show_server())
    body["outbox"] = _outbox_numbers()
    return JsonResponse(body, status=code)


def _outbox_numbers() -> dict[str, Any] | None:
    try:
        if not table_exists():
            return None
        return DjangoOutboxStorage().status(time.time()).as_dict(rows=False)
    except DatabaseError:
        return None
