"""Views of the natsync Django app."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_safe

from .. import _web
from . import get_client


@require_safe
def health(request: HttpRequest) -> JsonResponse:
    """The client's health as JSON: ``status``, ``rtt_ms``, ``server``, ``last_error``.

    200 when connected (a round trip to the server succeeded), 503 otherwise.  Route it
    with ``path("health/nats", natsync.django.views.health)``.
    """
    body, code = _web.health(get_client())
    return JsonResponse(body, status=code)
